"""ConstantToInitializer (passes/constants.py)."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper

from qcompiler import ir
from qcompiler.ir.testing import parse
from qcompiler.passes import ConstantToInitializer


def model(body: str, outputs: str = "float[N,2] y"):
    return parse(f"""
    <ir_version: 8, opset_import: ["" : 13]>
    g (float[N,2] x) => ({outputs}) {{
      {body}
    }}""")


@pytest.mark.parametrize("attr, consumer, expected, dtype", [
    ("value = float[2] {1.5, -2.0}", "y = Mul(x, k)", np.array([1.5, -2.0], np.float32), TensorProto.FLOAT),
    ("value = double[1,2] {0.5, 4}", "h = Cast <to = 1> (k)\n y = Add(x, h)",
     np.array([[0.5, 4]], np.float64), TensorProto.DOUBLE),
    ("value_float = 2.5", "y = Mul(x, k)", np.array(2.5, np.float32), TensorProto.FLOAT),
    ("value_floats = [1.0, 3.0]", "y = Sub(x, k)", np.array([1.0, 3.0], np.float32), TensorProto.FLOAT),
    ("value_int = 3", "h = Cast <to = 1> (k)\n y = Mul(x, h)", np.array(3, np.int64), TensorProto.INT64),
    ("value_ints = [2, -1]", "y = Reshape(x, k)", np.array([2, -1], np.int64), TensorProto.INT64),
])
def test_constant_becomes_an_initializer_of_the_same_name(run_checked, attr, consumer, expected, dtype):
    m = model(f"k = Constant <{attr}> ()\n {consumer}")
    assert run_checked(m, ConstantToInitializer()).modified
    assert "Constant" not in [n.op_type for n in m.graph]
    k = m.graph.initializers["k"]
    assert k.producer() is None and k.dtype == dtype and k.shape == expected.shape
    np.testing.assert_array_equal(k.const, expected)
    assert k.const.dtype == expected.dtype
    assert k.uses()  # the consumer now reads the initializer


def test_constant_that_is_a_graph_output_stays(run_checked):
    m = model("y = Relu(x)\n k = Constant <value_ints = [1, 2]> ()", outputs="float[N,2] y, int64[2] k")
    assert not run_checked(m, ConstantToInitializer()).modified
    assert [n.op_type for n in m.graph] == ["Relu", "Constant"] and m.graph.initializers == {}


def test_no_constant_no_change(run_checked):
    m = model("y = Relu(x)")
    assert not run_checked(m, ConstantToInitializer()).modified


def test_constants_inside_subgraphs_are_left_alone(run_checked):
    m = parse("""
    <ir_version: 8, opset_import: ["" : 13]>
    g (float[N,2] x, bool c) => (float[N,2] z) {
      z = If(c) <then_branch = th () => (float[N,2] o) { k = Constant <value_float = 2.0> ()
                                                         o = Mul(x, k) },
                 else_branch = el () => (float[N,2] o2) { o2 = Neg(x) }>
    }""")
    assert not run_checked(m, ConstantToInitializer()).modified


def test_sparse_constant_stays(run_checked):
    sparse = helper.make_sparse_tensor(helper.make_tensor("v", TensorProto.FLOAT, [1], [2.0]),
                                       helper.make_tensor("i", TensorProto.INT64, [1], [1]), [2])
    graph = helper.make_graph(
        [helper.make_node("Constant", [], ["k"], sparse_value=sparse), helper.make_node("Mul", ["x", "k"], ["y"])],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2])])
    m = ir.from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]))
    assert not run_checked(m, ConstantToInitializer()).modified
    assert [n.op_type for n in m.graph] == ["Constant", "Mul"]


def test_several_constants_keep_the_graph_valid(run_checked):
    m = model("""a = Constant <value_float = 2.0> ()
                 b = Constant <value_floats = [1.0, 3.0]> ()
                 ab = Mul(a, b)
                 y = Add(x, ab)""")
    assert run_checked(m, ConstantToInitializer()).modified
    assert set(m.graph.initializers) == {"a", "b"} and [n.op_type for n in m.graph] == ["Mul", "Add"]
