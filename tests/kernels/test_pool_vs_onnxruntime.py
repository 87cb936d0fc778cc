"""MaxPool and AveragePool against onnxruntime, bit for bit: kernel, stride, pads, ceil mode,
count_include_pad, dilations, float32 and uint8 (MaxPool between the Q/DQ onnxruntime drops)."""

from __future__ import annotations

import itertools

import numpy as np
import onnxruntime as ort
import pytest
from onnx import helper

from qcompiler.kernels import default_registry


def run_ort(op: str, x: np.ndarray, attrs: dict) -> np.ndarray:
    elem = helper.np_dtype_to_tensor_dtype(x.dtype)
    graph = helper.make_graph([helper.make_node(op, ["x"], ["y"], **attrs)], "pool",
                              [helper.make_tensor_value_info("x", elem, x.shape)],
                              [helper.make_tensor_value_info("y", elem, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])
    model.ir_version = 9
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"]).run(
        None, {"x": x})[0]


GEOMETRY = list(itertools.product([(2, 2), (3, 2)], [(1, 1), (2, 2), (2, 1)], [(0, 0, 0, 0), (1, 1, 1, 1), (0, 1, 1, 0)],
                                  [0, 1]))


@pytest.mark.parametrize("dtype", [np.float32, np.uint8], ids=["float32", "uint8"])
@pytest.mark.parametrize("dilations", [(1, 1), (2, 1)])
def test_maxpool(dtype, dilations):
    rng = np.random.default_rng(list(dilations))
    x = rng.normal(0, 50, (1, 2, 7, 8)).astype(np.float32) if dtype == np.float32 else \
        rng.integers(0, 256, (1, 2, 7, 8)).astype(np.uint8)
    kernel = default_registry.lookup("", "MaxPool", 19)
    for k, s, p, ceil in GEOMETRY:
        attrs = dict(kernel_shape=list(k), strides=list(s), pads=list(p), ceil_mode=ceil, dilations=list(dilations))
        np.testing.assert_array_equal(kernel(x, **attrs), run_ort("MaxPool", x, attrs), err_msg=str(attrs))


@pytest.mark.parametrize("count_include_pad", [0, 1])
def test_average_pool(count_include_pad):
    x = np.random.default_rng(count_include_pad).normal(0, 50, (1, 2, 7, 8)).astype(np.float32)
    kernel = default_registry.lookup("", "AveragePool", 19)
    for k, s, p, ceil in GEOMETRY:
        attrs = dict(kernel_shape=list(k), strides=list(s), pads=list(p), ceil_mode=ceil,
                     count_include_pad=count_include_pad)
        np.testing.assert_array_equal(kernel(x, **attrs), run_ort("AveragePool", x, attrs), err_msg=str(attrs))


def test_auto_pad_same_upper():
    x = np.random.default_rng(5).normal(size=(2, 3, 9, 6)).astype(np.float32)
    attrs = dict(kernel_shape=[3, 3], strides=[2, 2], auto_pad="SAME_UPPER")
    for op in ("MaxPool", "AveragePool"):
        np.testing.assert_array_equal(default_registry.lookup("", op, 19)(x, **attrs), run_ort(op, x, attrs))
