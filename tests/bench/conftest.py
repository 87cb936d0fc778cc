"""Small real ONNX models and feeds for the benchmark tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper


def matmul_model(path: Path, weight: np.ndarray, batch: int | str = "N", input_name: str = "x") -> Path:
    """``y = Relu(x @ weight)`` with x [batch, rows of weight]."""
    rows, cols = weight.shape
    graph = helper.make_graph(
        [helper.make_node("MatMul", [input_name, "w"], ["h"]), helper.make_node("Relu", ["h"], ["y"])], "g",
        [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, [batch, rows])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, cols])],
        [numpy_helper.from_array(weight.astype(np.float32), "w")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


@pytest.fixture
def weights() -> tuple[np.ndarray, np.ndarray]:
    """A weight and a perturbed copy of it (the "quantized" model's)."""
    rng = np.random.default_rng(1)
    weight = rng.standard_normal((16, 10)).astype(np.float32)
    return weight, (weight + 0.05 * rng.standard_normal(weight.shape)).astype(np.float32)


@pytest.fixture
def pair(tmp_path: Path, weights) -> tuple[Path, Path]:
    """A reference model and a perturbed one, same inputs and outputs."""
    return matmul_model(tmp_path / "ref.onnx", weights[0]), matmul_model(tmp_path / "cand.onnx", weights[1])


@pytest.fixture
def feed_dir(tmp_path: Path) -> Path:
    """Three feeds of four rows each."""
    folder = tmp_path / "feeds"
    folder.mkdir()
    rng = np.random.default_rng(2)
    for index in range(3):
        np.savez(folder / f"batch_{index}.npz", x=rng.standard_normal((4, 16)).astype(np.float32))
    return folder
