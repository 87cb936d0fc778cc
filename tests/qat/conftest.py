"""Small real models in FP32, their calibration data, and the int8 QDQ models qcompiler compiles from them: what
fine-tuning starts from. A CNN classifier (Conv, Relu, 1x1 Conv, Relu, MaxPool, Flatten, Gemm) and a text-line
recognizer of any width (per column, a Softmax over 4 classes)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper


def _float_model() -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.normal(0, 0.4, (4, 1, 3, 3)).astype(np.float32), "conv.w"),
             numpy_helper.from_array(rng.normal(0, 0.1, (4,)).astype(np.float32), "conv.b"),
             numpy_helper.from_array(rng.normal(0, 0.4, (4, 4, 1, 1)).astype(np.float32), "mix.w"),
             numpy_helper.from_array(rng.normal(0, 0.3, (5, 36)).astype(np.float32), "fc.w"),
             numpy_helper.from_array(rng.normal(0, 0.1, (5,)).astype(np.float32), "fc.b")]
    nodes = [helper.make_node("Conv", ["x", "conv.w", "conv.b"], ["c"], pads=[1, 1, 1, 1], name="conv"),
             helper.make_node("Relu", ["c"], ["r0"], name="relu"),
             helper.make_node("Conv", ["r0", "mix.w"], ["m"], name="mix"),
             helper.make_node("Relu", ["m"], ["r"], name="relu_mix"),
             helper.make_node("MaxPool", ["r"], ["p"], kernel_shape=[2, 2], strides=[2, 2], name="pool"),
             helper.make_node("Flatten", ["p"], ["f"], name="flatten"),
             helper.make_node("Gemm", ["f", "fc.w", "fc.b"], ["y"], transB=1, name="fc")]
    return float_model(nodes, "tiny_cnn", ["n", 1, 6, 6], ["n", 5], inits)


def float_model(nodes, name: str, x_shape: list, y_shape: list, inits) -> onnx.ModelProto:
    """An opset-17 model of ``nodes`` from input ``x`` to output ``y``, both float."""
    graph = helper.make_graph(nodes, name, [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, y_shape)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def compiled(root, name: str, model: onnx.ModelProto, batches: list[np.ndarray]):
    """``(fp32 path, int8 QDQ path, calibration dir)``: ``model`` saved in ``root``, ``batches`` as its
    calibration files, and the int8 model qcompiler compiles from them."""
    import qcompiler

    fp32, int8, data = root / f"{name}.onnx", root / f"{name}.int8.onnx", root / "calib"
    onnx.save(model, fp32)
    data.mkdir()
    for i, x in enumerate(batches):
        np.savez(data / f"batch_{i}.npz", x=x)
    qcompiler.compile(str(fp32), str(int8), pipeline="int8", calib=str(data), objective="size")
    return fp32, int8, data


@pytest.fixture(scope="session")
def tiny_cnn(tmp_path_factory):
    """``(fp32 path, int8 QDQ path, calibration dir)``."""
    rng = np.random.default_rng(1)
    return compiled(tmp_path_factory.mktemp("qat"), "tiny", _float_model(),
                    [rng.uniform(0, 1, (16, 1, 6, 6)).astype(np.float32) for _ in range(3)])


def _line_model() -> onnx.ModelProto:
    """A 'text line' CNN of any width: Conv 3x3, Relu, a 4x1 Conv per column, Softmax over 4 classes."""
    rng = np.random.default_rng(1)
    inits = [numpy_helper.from_array(rng.normal(0, 0.5, (4, 1, 3, 3)).astype(np.float32), "c.w"),
             numpy_helper.from_array(rng.normal(0, 0.5, (4, 4, 4, 1)).astype(np.float32), "k.w"),
             numpy_helper.from_array(np.array([2], np.int64), "sq")]
    nodes = [helper.make_node("Conv", ["x", "c.w"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("Conv", ["r", "k.w"], ["k"]),  # height 4 -> 1: a column's classes
             helper.make_node("Squeeze", ["k", "sq"], ["s"]),
             helper.make_node("Transpose", ["s"], ["t"], perm=[0, 2, 1]),
             helper.make_node("Softmax", ["t"], ["y"], axis=-1)]
    return float_model(nodes, "line", ["n", 1, 4, "w"], ["n", "w", 4], inits)


@pytest.fixture(scope="session")
def line_model(tmp_path_factory):
    """``(fp32 path, int8 QDQ path, calibration dir)`` of :func:`_line_model`, lines 16 to 24 wide."""
    rng = np.random.default_rng(0)
    return compiled(tmp_path_factory.mktemp("line"), "line", _line_model(),
                    [rng.normal(0, 1, (2, 1, 4, width)).astype(np.float32) for width in (16, 24, 20)])


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """One torch thread per test: the tests' numbers do not depend on the machine's core count."""
    try:
        import torch
    except ImportError:  # the tests that need it skip themselves
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
