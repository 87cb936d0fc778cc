"""DynamicQuantizeLinear (ours) vs onnxruntime's CPU kernel: the integers, scale and zero point bit for bit."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from qcompiler.kernels import default_registry

RNG = np.random.default_rng(20261205)


def onnxruntime_dynamic_quantize(x: np.ndarray) -> tuple[np.ndarray, ...]:
    node = helper.make_node("DynamicQuantizeLinear", ["x"], ["y", "scale", "zero_point"])
    graph = helper.make_graph(
        [node], "dql", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x.shape)],
        [helper.make_tensor_value_info("y", TensorProto.UINT8, None),
         helper.make_tensor_value_info("scale", TensorProto.FLOAT, None),
         helper.make_tensor_value_info("zero_point", TensorProto.UINT8, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return tuple(session.run(None, {"x": x}))


CASES = {
    "normal": RNG.standard_normal((4, 37, 64)),
    "positive": RNG.random((3, 100)) * 7 + 0.5,  # the range widens to include 0: zero point 0
    "negative": -RNG.random((3, 100)) * 3 - 1,  # zero point 255
    "zeros": np.zeros((2, 5)),  # scale 1, zero point 0
    "constant": np.full((16,), 2.5),
    "outlier": np.concatenate([RNG.standard_normal(999) * 0.01, [40.0]]),  # one value sets the scale
    "wide": RNG.standard_normal((8, 8)) * 1e30,
    "tiny": RNG.standard_normal((8, 8)) * 1e-30,
    "halves": np.arange(-255, 256, dtype=np.float64) / 2,  # x / scale on .5 boundaries: round half to even
}


def ours(backend: str):
    return default_registry.lookup("", "DynamicQuantizeLinear", 13, backends=(backend,))


@pytest.mark.parametrize("backend", ["reference", "jit"])
@pytest.mark.parametrize("name", list(CASES))
def test_dynamic_quantize_linear_equals_onnxruntime(name, backend):
    x = np.asarray(CASES[name], np.float32)
    theirs = onnxruntime_dynamic_quantize(x)
    for got, want in zip(ours(backend)(x), theirs, strict=True):
        assert np.asarray(got).dtype == want.dtype
        np.testing.assert_array_equal(np.asarray(got).reshape(want.shape), want)


@pytest.mark.parametrize("backend", ["reference", "jit"])
def test_random_tensors_equal_onnxruntime(backend):
    kernel = ours(backend)
    for _ in range(50):
        shape = tuple(RNG.integers(1, 9, RNG.integers(1, 4)))
        x = (RNG.standard_normal(shape) * 10.0 ** RNG.uniform(-3, 3) + RNG.uniform(-2, 2)).astype(np.float32)
        for got, want in zip(kernel(x), onnxruntime_dynamic_quantize(x), strict=True):
            np.testing.assert_array_equal(np.asarray(got).reshape(want.shape), want)
