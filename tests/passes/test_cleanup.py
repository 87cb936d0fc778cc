"""RemoveIdentity, RemoveDropout, EliminateDeadNodes and SumToAdd (passes/cleanup.py)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from qcompiler import ir
from qcompiler.ir.testing import parse, random_feeds
from qcompiler.passes import EliminateDeadNodes, RemoveDropout, RemoveIdentity, SumToAdd


def model(signature: str, body: str, opset: int = 13, inits: str = ""):
    return parse(f"""
    <ir_version: 8, opset_import: ["" : {opset}]>
    g {signature} {f"<{inits}>" if inits else ""} {{
      {body}
    }}""")


def ops(m) -> list[str]:
    return [node.op_type for node in m.graph]


def interface(m) -> tuple[list[str], list[str]]:
    proto = ir.to_proto(m)
    return [v.name for v in proto.graph.input], [v.name for v in proto.graph.output]


# -- RemoveIdentity --------------------------------------------------------------------------


def test_identity_in_the_middle_is_removed(run_checked):
    m = model("(float[N,4] x) => (float[N,4] y)",
              """t = Relu(x)
                 u = Identity(t)
                 y = Neg(u)""")
    assert run_checked(m, RemoveIdentity()).modified
    relu, neg = m.graph.nodes
    assert ops(m) == ["Relu", "Neg"] and neg.inputs[0] is relu.outputs[0]


def test_identity_feeding_a_graph_output_keeps_the_output_name(run_checked):
    m = model("(float[N,4] x) => (float[N,4] y, float[N,4] z)",
              """t = Relu(x)
                 y = Identity(t)
                 z = Neg(t)""")
    before = interface(m)
    assert run_checked(m, RemoveIdentity()).modified
    assert ops(m) == ["Relu", "Neg"]
    assert interface(m) == before
    relu, neg = m.graph.nodes
    assert relu.outputs[0].name == "y" and neg.inputs[0] is relu.outputs[0]


def test_chain_of_identities_to_an_output(run_checked):
    m = model("(float[N,4] x) => (float[N,4] y)",
              """t = Relu(x)
                 u = Identity(t)
                 y = Identity(u)""")
    assert run_checked(m, RemoveIdentity()).modified
    assert ops(m) == ["Relu"] and m.graph.outputs[0].name == "y"


@pytest.mark.parametrize("signature, body, inits", [
    ("(float[N,4] x) => (float[N,4] y)", "y = Identity(x)", ""),  # input -> output
    ("(float[N,4] x) => (float[4] y)", "y = Identity(w)", "float[4] w = {1, 2, 3, 4}"),  # initializer
    ("(float[N,4] x) => (float[N,4] t, float[N,4] y)", "t = Relu(x)\n y = Identity(t)", ""),  # output -> output
])
def test_identity_that_cannot_be_removed_without_renaming_the_interface_stays(run_checked, signature, body,
                                                                             inits):
    m = model(signature, body, inits=inits)
    before = interface(m)
    assert not run_checked(m, RemoveIdentity()).modified
    assert "Identity" in ops(m) and interface(m) == before


def test_two_identities_of_one_value_to_two_outputs(run_checked):
    m = model("(float[N,4] x) => (float[N,4] a, float[N,4] b)",
              """t = Relu(x)
                 a = Identity(t)
                 b = Identity(t)""")
    before = interface(m)
    assert run_checked(m, RemoveIdentity()).modified
    assert ops(m) == ["Relu", "Identity"] and interface(m) == before


def test_identity_removal_keeps_a_subgraph_reading_the_renamed_value(run_checked):
    # t takes the graph output's name y; the If branches read t by name and must follow the rename
    m = model("(float[N,4] x, bool c) => (float[N,4] y, float[N,4] z)",
              """t = Relu(x)
                 y = Identity(t)
                 z = If(c) <then_branch = th () => (float[N,4] o) { o = Neg(t) },
                            else_branch = el () => (float[N,4] o2) { o2 = Abs(t) }>""")
    feeds = random_feeds(m)
    for c in (True, False):
        feeds["c"] = np.array(c)
        copy = m.clone()
        assert run_checked(copy, RemoveIdentity(), feeds=feeds).modified
        assert ops(copy) == ["Relu", "If"]
        ir.verify(copy, strict=True)


def test_identity_inside_a_subgraph_is_left_alone(run_checked):
    m = model("(float[N,4] x, bool c) => (float[N,4] z)",
              """z = If(c) <then_branch = th () => (float[N,4] o) { o = Identity(x) },
                            else_branch = el () => (float[N,4] o2) { o2 = Neg(x) }>""")
    assert not run_checked(m, RemoveIdentity()).modified


# -- RemoveDropout ---------------------------------------------------------------------------


@pytest.mark.parametrize("opset, call", [
    (13, "Dropout(t)"),
    (13, "Dropout(t, ratio)"),
    (13, "Dropout(t, ratio, off)"),  # training_mode = False, a constant
    (11, "Dropout <ratio = 0.3> (t)"),
])
def test_inference_dropout_is_removed(run_checked, opset, call):
    m = model("(float[N,4] x) => (float[N,4] y)",
              f"""t = Relu(x)
                  d = {call}
                  y = Neg(d)""",
              opset=opset, inits="float ratio = {0.5}, bool off = {0}")
    assert run_checked(m, RemoveDropout()).modified
    assert ops(m) == ["Relu", "Neg"]


def test_dropout_feeding_a_graph_output_is_removed_keeping_the_name(run_checked):
    m = model("(float[N,4] x) => (float[N,4] y)", "t = Relu(x)\n y = Dropout(t)")
    assert run_checked(m, RemoveDropout()).modified
    assert ops(m) == ["Relu"] and interface(m) == (["x"], ["y"])


def test_dropout_in_training_mode_stays(run_checked):
    m = model("(float[N,4] x) => (float[N,4] y)",
              """t = Relu(x)
                 d = Dropout <seed = 1> (t, ratio, on)
                 y = Neg(d)""",
              inits="float ratio = {0.5}, bool on = {1}")
    assert not run_checked(m, RemoveDropout()).modified
    assert "Dropout" in ops(m)


def test_dropout_with_a_runtime_training_flag_stays(run_checked):
    m = model("(float[N,4] x, bool training) => (float[N,4] y)",
              """t = Relu(x)
                 d = Dropout <seed = 1> (t, ratio, training)
                 y = Neg(d)""",
              inits="float ratio = {0.5}")
    feeds = {"x": np.ones((2, 4), np.float32), "training": np.array(False)}
    assert not run_checked(m, RemoveDropout(), feeds=feeds).modified


def test_dropout_whose_mask_is_read_stays(run_checked):
    m = model("(float[N,4] x) => (float[N,4] y)",
              """t = Relu(x)
                 d, mask = Dropout(t)
                 f = Cast <to = 1> (mask)
                 y = Mul(d, f)""")
    assert not run_checked(m, RemoveDropout()).modified
    assert "Dropout" in ops(m)


def test_dropout_whose_mask_is_a_graph_output_stays(run_checked):
    m = model("(float[N,4] x) => (float[N,4] y, bool[N,4] mask)",
              """t = Relu(x)
                 y, mask = Dropout(t)""")
    before = ir.format_model(m)
    assert not run_checked(m, RemoveDropout()).modified
    assert ir.format_model(m) == before


def test_dropout_with_an_unused_mask_is_removed(run_checked):
    m = model("(float[N,4] x) => (float[N,4] y)",
              """t = Relu(x)
                 d, mask = Dropout(t)
                 y = Neg(d)""")
    assert run_checked(m, RemoveDropout()).modified
    assert ops(m) == ["Relu", "Neg"]


# -- EliminateDeadNodes ----------------------------------------------------------------------


def test_dead_nodes_and_their_initializers_are_removed(run_checked):
    m = model("(float[N,4] x) => (float[N,4] y)",
              """y = Relu(x)
                 dead1 = Mul(x, w)
                 dead2 = Neg(dead1)""",
              inits="float[4] w = {1, 2, 3, 4}, float[1] unused = {0}")
    assert run_checked(m, EliminateDeadNodes()).modified
    assert ops(m) == ["Relu"] and m.graph.initializers == {}


def test_live_nodes_and_captured_values_stay(run_checked):
    m = model("(float[N,4] x, bool c) => (float[N,4] z)",
              """t = Relu(x)
                 z = If(c) <then_branch = th () => (float[N,4] o) { o = Neg(t) },
                            else_branch = el () => (float[N,4] o2) { o2 = Abs(t) }>""")
    assert not run_checked(m, EliminateDeadNodes()).modified
    assert ops(m) == ["Relu", "If"]


def test_initializer_that_is_also_a_graph_input_stays():
    proto = onnx.parser.parse_model("""
    <ir_version: 8, opset_import: ["" : 13]>
    g (float[N,4] x, float[4] w) => (float[N,4] y) <float[4] w = {1, 2, 3, 4}> {
      y = Relu(x)
    }""")
    m = ir.from_proto(proto)
    assert not EliminateDeadNodes()(m).modified
    assert "w" in m.graph.initializers and [v.name for v in m.graph.inputs] == ["x", "w"]


# -- SumToAdd --------------------------------------------------------------------------------


def test_sum_of_two_becomes_add_and_longer_sums_stay(run_checked):
    m = model("(float[N,4] x, float[N,4] x2) => (float[N,4] y, float[N,4] z)",
              """y = Sum(x, x2)
                 z = Sum(x, x2, y)""")
    assert run_checked(m, SumToAdd()).modified
    assert ops(m) == ["Add", "Sum"]
    assert interface(m)[1] == ["y", "z"]
    assert not run_checked(m, SumToAdd()).modified
