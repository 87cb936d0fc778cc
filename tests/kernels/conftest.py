"""Fixtures for the kernel tests: one-node ONNX models and onnxruntime sessions without optimizations."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper, numpy_helper


def _single_node(op_type: str, inputs: dict, output_dtype, *, opset: int = 13, **attrs):
    """``(model, feeds)``: ``op_type`` reading ``inputs`` (name -> array, ``None`` = omitted).

    The first input is a graph input fed at run time, the others are initializers (constant
    weights, as a deployed model has them, so onnxruntime prepacks them).
    """
    names = list(inputs)
    first = np.asarray(inputs[names[0]])
    node = helper.make_node(op_type, [n if inputs[n] is not None else "" for n in names], ["y"], **attrs)
    graph = helper.make_graph(
        [node], op_type,
        [helper.make_tensor_value_info(names[0], helper.np_dtype_to_tensor_dtype(first.dtype), first.shape)],
        [helper.make_tensor_value_info("y", helper.np_dtype_to_tensor_dtype(np.dtype(output_dtype)), None)],
        [numpy_helper.from_array(np.asarray(v), n) for n, v in list(inputs.items())[1:] if v is not None],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 10
    return model, {names[0]: first}


def _run_ort(model: onnx.ModelProto, feeds: dict) -> np.ndarray:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(None, feeds)[0]


@pytest.fixture(scope="session")
def single_node():
    """``single_node(op_type, inputs, output_dtype, opset=13, **attrs) -> (model, feeds)``."""
    return _single_node


@pytest.fixture(scope="session")
def run_ort():
    """``run_ort(model, feeds) -> y`` with onnxruntime's CPU provider, graph optimizations off."""
    return _run_ort
