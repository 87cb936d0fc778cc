"""InferShapes (passes/shape_inference.py)."""

from __future__ import annotations

import numpy as np
from onnx import TensorProto

from qcompiler.ir.testing import parse, tensor_text
from qcompiler.passes import InferShapes


def test_shapes_are_filled_and_the_symbolic_batch_is_kept(run_checked):
    rng = np.random.default_rng(0)
    m = parse(f"""
    <ir_version: 8, opset_import: ["" : 13]>
    g (float[N,3,8,8] x) => (float[N,10] y)
      <{tensor_text("w", rng.standard_normal((4, 3, 3, 3)).astype(np.float32))},
       {tensor_text("fc", rng.standard_normal((10, 64)).astype(np.float32))}> {{
      c = Conv <kernel_shape = [3,3], pads = [1,1,1,1], strides = [2,2]> (x, w)
      r = Relu(c)
      f = Flatten(r)
      s = Shape(x)
      y = Gemm <transB = 1> (f, fc)
    }}""")
    assert all(m.find_value(n).shape is None for n in "crfs")
    assert run_checked(m, InferShapes()).modified
    expected = {"c": ("N", 4, 4, 4), "r": ("N", 4, 4, 4), "f": ("N", 64), "s": (4,)}
    assert {n: m.find_value(n).shape for n in expected} == expected
    assert m.find_value("s").dtype == TensorProto.INT64 and m.find_value("c").dtype == TensorProto.FLOAT
    assert not run_checked(m, InferShapes()).modified  # nothing left to add


def test_data_propagation_through_shape_arithmetic(run_checked):
    m = parse("""
    <ir_version: 8, opset_import: ["" : 18]>
    g (float[N,3,4,4] x) => (float[N,48] y) <int64[1] zero = {0}, int64[1] minus = {-1}> {
      s = Shape(x)
      n = Gather <axis = 0> (s, zero)
      shp = Concat <axis = 0> (n, minus)
      r = Reshape(x, shp)
      y = Relu(r)
    }""")
    assert run_checked(m, InferShapes()).modified
    shape = m.find_value("r").shape
    assert len(shape) == 2 and shape[0] == "N"  # the batch dimension follows x through Shape/Gather/Concat


def test_known_shapes_are_not_overwritten(run_checked):
    m = parse("""
    <ir_version: 8, opset_import: ["" : 13]>
    g (float[N,4] x) => (float[N,4] y) {
      y = Relu(x)
    }""")
    assert not run_checked(m, InferShapes()).modified
    assert m.graph.outputs[0].shape == ("N", 4)


def test_unknown_dims_are_completed_without_losing_known_ones(run_checked):
    m = parse("""
    <ir_version: 8, opset_import: ["" : 13]>
    g (float[N,4] x) => (float[N,?] y) {
      y = Relu(x)
    }""")
    assert m.graph.outputs[0].shape == ("N", None)
    assert run_checked(m, InferShapes()).modified
    assert m.graph.outputs[0].shape == ("N", 4)


def test_unknown_custom_op_leaves_its_outputs_unknown():
    m = parse("""
    <ir_version: 8, opset_import: ["" : 13, "custom" : 1]>
    g (float[N,4] x) => (float[N,4] y) {
      r = Relu(x)
      y = custom.Mystery(r)
    }""")
    m.graph.outputs[0].shape = None  # nothing known about the custom op's output
    proto_ops = [n.op_type for n in m.graph]
    result = InferShapes()(m)  # no onnxruntime run: it has no kernel for custom.Mystery
    assert result.modified and proto_ops == [n.op_type for n in m.graph]
    assert m.find_value("r").shape == ("N", 4)
    assert m.graph.outputs[0].shape is None
