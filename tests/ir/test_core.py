"""The core IR: use lists, single producers, captures, topological order, naming, verify(), the
printer and QuantSpec.

Broken IR is built on purpose in the verify() tests (sometimes through private fields, the way a
buggy pass would break it) to show that each invariant verify() claims is really checked.
"""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto

from qcompiler import ir
from qcompiler.errors import InternalError, VerificationError
from qcompiler.ir import CAPTURE_INDEX, Graph, Model, Node, QuantSpec, Usage, Value
from qcompiler.ir.testing import parse, random_feeds, run_onnxruntime

FLOAT = TensorProto.FLOAT


def chain_model() -> tuple[Model, dict[str, Value], dict[str, Node]]:
    """x -> Relu -> a -> Neg -> b -> Add(a, b) -> y, with y the graph output."""
    graph = Graph("g")
    x = Value("x", FLOAT, (2, 3))
    graph.inputs.append(x)
    relu = Node("Relu", [x], [Value("a", FLOAT, (2, 3))], name="relu")
    a = relu.outputs[0]
    neg = Node("Neg", [a], [Value("b", FLOAT, (2, 3))], name="neg")
    b = neg.outputs[0]
    add = Node("Add", [a, b], [Value("y", FLOAT, (2, 3))], name="add")
    graph.append(relu, neg, add)
    graph.outputs.append(add.outputs[0])
    values = {"x": x, "a": a, "b": b, "y": add.outputs[0]}
    return Model(graph), values, {"relu": relu, "neg": neg, "add": add}


IF_MODEL = """
<ir_version: 8, opset_import: ["" : 13]>
g (float[2] x, bool c) => (float[2] z) {
  t = Relu(x)
  u = Sigmoid(x)
  z = If(c) <then_branch = th () => (float[2] o) { o = Neg(t) },
             else_branch = el () => (float[2] o2) { o2 = Abs(t) }>
}"""


# -- use lists ---------------------------------------------------------------------------------


def test_construction_records_uses_and_producers():
    model, v, n = chain_model()
    assert v["a"].uses() == (Usage(n["neg"], 0), Usage(n["add"], 0))
    assert v["a"].consumers() == (n["neg"], n["add"])
    assert v["b"].uses() == (Usage(n["add"], 1),)
    assert v["a"].producer() is n["relu"] and v["a"].output_index() == 0
    assert v["x"].producer() is None
    ir.verify(model)


def test_same_value_twice_is_two_uses_one_consumer():
    x = Value("x", FLOAT, (2,))
    mul = Node("Mul", [x, x], 1)
    assert x.uses() == (Usage(mul, 0), Usage(mul, 1))
    assert x.consumers() == (mul,)
    mul.set_input(1, None)
    assert x.uses() == (Usage(mul, 0),)
    assert mul.inputs == (x, None)


def test_set_input_moves_the_use():
    model, v, n = chain_model()
    n["add"].set_input(1, v["x"])
    assert v["b"].uses() == ()
    assert Usage(n["add"], 1) in v["x"].uses()
    assert n["add"].inputs == (v["a"], v["x"])
    n["add"].set_input(1, v["x"])  # no-op: same value
    assert v["x"].uses().count(Usage(n["add"], 1)) == 1
    ir.verify(model)


def test_append_input_records_the_new_index():
    model, v, n = chain_model()
    n["relu"].append_input(None)
    n["relu"].append_input(v["x"])
    assert n["relu"].inputs == (v["x"], None, v["x"])
    assert v["x"].uses() == (Usage(n["relu"], 0), Usage(n["relu"], 2))


def test_replace_all_uses_with_rewires_every_reader_but_not_graph_outputs():
    model, v, n = chain_model()
    v["a"].replace_all_uses_with(v["x"])
    assert v["a"].uses() == ()
    assert n["neg"].inputs == (v["x"],) and n["add"].inputs == (v["x"], v["b"])
    assert v["x"].uses() == (Usage(n["relu"], 0), Usage(n["neg"], 0), Usage(n["add"], 0))
    v["y"].replace_all_uses_with(v["x"])  # y has no readers; the graph output stays y
    assert model.graph.outputs == [v["y"]]
    v["x"].replace_all_uses_with(v["x"])  # replacing with itself changes nothing
    assert len(v["x"].uses()) == 3
    ir.verify(model)


def test_a_value_has_only_one_producer():
    x = Value("x", FLOAT, (2,))
    relu = Node("Relu", [x], 1)
    with pytest.raises(InternalError, match="already has a producer"):
        Node("Neg", [x], [relu.outputs[0]])
    assert relu.outputs[0].producer() is relu


def test_remove_refuses_a_node_whose_output_is_used():
    model, v, n = chain_model()
    with pytest.raises(InternalError, match="still used by"):
        model.graph.remove(n["neg"])
    assert n["neg"] in model.graph.nodes and v["b"].producer() is n["neg"]
    ir.verify(model)


def test_remove_refuses_a_node_producing_a_graph_output():
    model, v, n = chain_model()
    with pytest.raises(InternalError, match="graph output"):
        model.graph.remove(n["add"])
    assert len(model.graph) == 3


def test_remove_detaches_inputs_and_outputs():
    model, v, n = chain_model()
    n["add"].set_input(1, v["a"])  # b is now dead
    model.graph.remove(n["neg"])
    assert n["neg"].graph is None and v["b"].producer() is None
    assert all(use.node is not n["neg"] for use in v["a"].uses())
    ir.verify(model)


def test_remove_a_producer_together_with_its_readers():
    model, v, n = chain_model()
    model.graph.outputs = [v["x"]]
    model.graph.remove([n["relu"], n["neg"], n["add"]])
    assert len(model.graph) == 0 and v["x"].uses() == ()
    ir.verify(model)


def test_unsafe_remove_leaves_readers_that_verify_reports():
    model, v, n = chain_model()
    model.graph.remove(n["neg"], safe=False)
    with pytest.raises(VerificationError, match="'b' is not defined before the node"):
        ir.verify(model)


def test_remove_of_a_node_not_in_the_graph_changes_nothing():
    model, v, n = chain_model()
    stranger = Node("Relu", [v["x"]], 1)
    model.graph.outputs = [v["x"]]
    with pytest.raises(InternalError, match="not a node of graph"):
        model.graph.remove([n["add"], n["neg"], n["relu"], stranger])
    assert model.graph.nodes == (n["relu"], n["neg"], n["add"])
    assert v["a"].uses() == (Usage(n["neg"], 0), Usage(n["add"], 0))
    model.graph.remove([n["add"], n["neg"], n["relu"]])
    with pytest.raises(InternalError, match="not a node of graph"):
        model.graph.remove(n["relu"])  # twice


# -- captures --------------------------------------------------------------------------------


def test_subgraph_reads_are_captures_with_index_minus_one():
    model = parse(IF_MODEL)
    relu, _, if_node = model.graph.nodes
    t = relu.outputs[0]
    assert if_node.captures == (t,)
    assert t.uses() == (Usage(if_node, CAPTURE_INDEX),)
    assert t.consumers() == (if_node,)


def test_captured_value_cannot_be_removed_safely():
    model = parse(IF_MODEL)
    relu = model.graph.nodes[0]
    with pytest.raises(InternalError, match="still used by"):
        model.graph.remove(relu)


def test_replace_all_uses_with_renames_inside_the_subgraphs():
    model = parse(IF_MODEL)
    relu, sigmoid, if_node = model.graph.nodes
    t, u = relu.outputs[0], sigmoid.outputs[0]
    feeds = random_feeds(model)
    expected = np.where(feeds["c"], -1, 1) * np.abs(1 / (1 + np.exp(-feeds["x"])))
    t.replace_all_uses_with(u)
    assert t.uses() == () and if_node.captures == (u,)
    assert u.uses() == (Usage(if_node, CAPTURE_INDEX),)
    reads = [name for g in (if_node.attrs["then_branch"], if_node.attrs["else_branch"])
             for node in g.node for name in node.input]
    assert reads == ["u", "u"]
    ir.verify(model)
    np.testing.assert_allclose(run_onnxruntime(model, feeds)[0], expected, rtol=1e-6)


def test_replacing_a_capture_by_a_value_already_captured_lists_it_once():
    model = parse(IF_MODEL.replace("o2 = Abs(t)", "o2 = Abs(u)"))
    relu, sigmoid, if_node = model.graph.nodes
    t, u = relu.outputs[0], sigmoid.outputs[0]
    assert if_node.captures == (t, u)
    t.replace_all_uses_with(u)
    assert if_node.captures == (u,) and u.uses() == (Usage(if_node, CAPTURE_INDEX),)
    ir.verify(model)
    model.graph.remove(relu)
    ir.verify(model, strict=True)


def test_renaming_a_captured_value_renames_it_inside_the_subgraphs():
    model = parse(IF_MODEL)
    t = model.graph.nodes[0].outputs[0]
    feeds = random_feeds(model)
    before = run_onnxruntime(model, feeds)
    t.name = "renamed"
    ir.verify(model)
    assert [n.input[0] for n in model.graph.nodes[2].attrs["then_branch"].node] == ["renamed"]
    np.testing.assert_array_equal(run_onnxruntime(model, feeds)[0], before[0])


# -- order -----------------------------------------------------------------------------------


def test_sort_restores_topological_order():
    model, v, n = chain_model()
    model.graph.reorder(model.graph.nodes[::-1])  # as a pass appending consumers first would leave it
    with pytest.raises(VerificationError):
        ir.verify(model)
    model.graph.sort()
    assert model.graph.nodes == (n["relu"], n["neg"], n["add"])
    ir.verify(model)


def test_sort_keeps_a_valid_order_unchanged():
    graph = Graph("g")
    x = Value("x", FLOAT, (2,))
    graph.inputs.append(x)
    # two independent branches, interleaved in a valid but not "canonical" order
    b1 = Node("Neg", [x], [Value("b1")], name="b1")
    a1 = Node("Relu", [x], [Value("a1")], name="a1")
    b2 = Node("Abs", [b1.outputs[0]], [Value("b2")], name="b2")
    a2 = Node("Exp", [a1.outputs[0]], [Value("a2")], name="a2")
    join = Node("Add", [a2.outputs[0], b2.outputs[0]], [Value("y")], name="join")
    order = (b1, a1, b2, a2, join)
    graph.append(*order)
    graph.outputs.append(join.outputs[0])
    graph.sort()
    assert graph.nodes == order
    # only the misplaced node moves
    graph.reorder([b1, b2, join, a1, a2])
    graph.sort()
    assert graph.nodes == (b1, b2, a1, a2, join)


def test_sort_orders_a_capturing_node_after_the_captured_value():
    model = parse(IF_MODEL)
    relu, sigmoid, if_node = model.graph.nodes
    model.graph.reorder([if_node, sigmoid, relu])
    with pytest.raises(VerificationError, match="captured value 't'"):
        ir.verify(model)
    model.graph.sort()
    assert model.graph.index(relu) < model.graph.index(if_node)
    ir.verify(model)


def test_sort_raises_on_a_cycle():
    model, v, n = chain_model()
    n["relu"].set_input(0, v["b"])  # relu <- neg <- relu
    with pytest.raises(InternalError, match="cycle"):
        model.graph.sort()


# -- naming ----------------------------------------------------------------------------------


def test_unique_name_avoids_values_nodes_and_names_handed_out():
    model, v, n = chain_model()
    graph = model.graph
    assert graph.unique_name("fresh") == "fresh"
    assert graph.unique_name("fresh") != "fresh"  # handed out once already
    for taken in ("x", "a", "y", "relu", "add"):
        assert graph.unique_name(taken) != taken
    names = [graph.unique_name("a") for _ in range(50)]
    assert len(set(names)) == 50
    existing = {val.name for val in graph.values()} | {node.name for node in graph}
    assert not existing & set(names)
    assert graph.unique_name("") != ""


def test_unique_name_sees_nodes_and_initializers_added_later():
    model, v, n = chain_model()
    graph = model.graph
    graph.unique_name("warm")  # builds the cache of taken names
    late = Node("Relu", [v["y"]], [Value("late_out")], name="late_node")
    graph.append(late)
    graph.add_initializer(Value("late_init", const=np.zeros(2, np.float32)))
    for taken in ("late_out", "late_node", "late_init"):
        assert graph.unique_name(taken) != taken


def test_replace_outputs_hands_each_slot_and_name_to_the_new_value():
    model, v, n = chain_model()
    graph = model.graph
    graph.outputs.insert(0, v["b"])
    first = Node("Exp", [v["b"]], [Value("b_exp", FLOAT, (2, 3))], name="exp")
    second = Node("Abs", [v["y"]], [Value("y_abs", FLOAT, (2, 3))], name="abs")
    graph.append(first, second)
    graph.replace_outputs({v["y"]: second.outputs[0], v["b"]: first.outputs[0]})
    assert graph.outputs == [first.outputs[0], second.outputs[0]]
    assert [o.name for o in graph.outputs] == ["b", "y"]
    assert v["b"].name != "b" and v["y"].name != "y"
    ir.verify(model)
    with pytest.raises(InternalError, match="'a' is not an output"):
        graph.replace_output(v["a"], v["x"])


def test_replace_outputs_replaces_every_slot_of_an_output_listed_twice():
    """Issue 17: the same tensor returned twice kept its second slot on the old value, renamed."""
    model, v, n = chain_model()
    graph = model.graph
    graph.outputs.append(v["y"])
    abs_ = Node("Abs", [v["y"]], [Value("y_abs", FLOAT, (2, 3))], name="abs")
    graph.append(abs_)
    graph.replace_outputs({v["y"]: abs_.outputs[0]})
    assert graph.outputs == [abs_.outputs[0], abs_.outputs[0]]
    assert [o.name for o in graph.outputs] == ["y", "y"]
    ir.verify(model)


def test_drop_initializer_keeps_one_that_is_read_returned_or_an_input_default():
    graph = Graph("g")
    default = graph.add_initializer(Value("d", const=np.zeros(2, np.float32)))
    returned = graph.add_initializer(Value("r", const=np.zeros(2, np.float32)))
    read = graph.add_initializer(Value("u", const=np.zeros(2, np.float32)))
    unused = graph.add_initializer(Value("n", const=np.zeros(2, np.float32)))
    graph.inputs.append(default)
    graph.outputs.append(returned)
    graph.append(Node("Abs", [read], [Value("a", FLOAT, (2,))]))
    assert [graph.drop_initializer(v) for v in (default, returned, read, unused)] == [False, False, False, True]
    assert set(graph.initializers) == {"d", "r", "u"}


# -- verify() --------------------------------------------------------------------------------


def _qdq_model(zero_point_dtype=TensorProto.INT8, scales=4, axis=0) -> Model:
    """w (float[4,3]) -> QuantizeLinear -> q (int8) -> DequantizeLinear -> y, per-axis."""
    graph = Graph("g")
    w = Value("w", FLOAT, (4, 3))
    graph.inputs.append(w)
    scale = graph.add_initializer(Value("s", const=np.full(scales, 0.1, np.float32)))
    zero_point = graph.add_initializer(Value("zp", zero_point_dtype, (scales,),
                                             const=np.zeros(scales, np.int8)))
    q = Node("QuantizeLinear", [w, scale, zero_point], [Value("q", TensorProto.INT8, (4, 3))],
             attrs={"axis": axis})
    dq = Node("DequantizeLinear", [q.outputs[0], scale, zero_point], [Value("y", FLOAT, (4, 3))],
              attrs={"axis": axis})
    graph.append(q, dq)
    graph.outputs.append(dq.outputs[0])
    return Model(graph)


def test_verify_accepts_well_formed_models():
    ir.verify(chain_model()[0])
    ir.verify(parse(IF_MODEL))
    ir.verify(_qdq_model(), strict=True)


def _use_before_def(model, v, n):
    model.graph.reorder([n["neg"], n["relu"], n["add"]])
    return "'a' is not defined before the node"


def _stale_use(model, v, n):
    n["add"]._inputs = (v["x"], v["b"])  # rewired without set_input: a still lists the use
    return "stale use"


def _missing_use(model, v, n):
    v["b"]._remove_use(n["add"], 1)
    return "does not list this use"


def _duplicate_output_names(model, v, n):
    v["b"].name = "a"
    return "output name 'a' is used by another value"


def _input_named_like_initializer(model, v, n):
    model.graph.inputs.append(Value("w", FLOAT, (2,)))
    model.graph.add_initializer(Value("w", const=np.zeros(2, np.float32)))
    return "two values are named 'w'"


def _output_not_produced(model, v, n):
    model.graph.outputs.append(Value("ghost", FLOAT, (2,)))
    return "graph output 'ghost' is not produced"


def _wrong_producer(model, v, n):
    v["b"]._producer = n["relu"]
    return "does not name this node as producer"


def _unnamed_output(model, v, n):
    v["b"].name = ""
    return "output 0 has no name"


def _node_of_another_graph(model, v, n):
    n["neg"].graph = None
    return "node.graph does not point to its graph"


def _user_outside_the_graph(model, v, n):
    Node("Relu", [v["x"]], 1)  # created but never added to the graph
    return "which is not in the graph"


def _initializer_key(model, v, n):
    value = model.graph.add_initializer(Value("k", const=np.zeros(1, np.float32)))
    value._name = "other"  # bypasses rename bookkeeping, like a buggy pass writing the field
    return "initializer key 'k' differs"


def _initializer_without_data(model, v, n):
    model.graph.initializers["e"] = Value("e", FLOAT, (1,))
    return "initializer 'e' has no data"


def _input_with_producer(model, v, n):
    model.graph.inputs.append(v["b"])
    return "graph input/initializer 'b' has a producer"


def _quant_axis_out_of_range(model, v, n):
    v["a"].quant = QuantSpec(TensorProto.INT8, np.ones(3, np.float32), np.zeros(3, np.int8), axis=2)
    return "quant axis 2 out of range"


@pytest.mark.parametrize("breaker", [
    _use_before_def, _stale_use, _missing_use, _duplicate_output_names, _input_named_like_initializer,
    _output_not_produced, _wrong_producer, _unnamed_output, _node_of_another_graph,
    _user_outside_the_graph, _initializer_key, _initializer_without_data, _input_with_producer,
    _quant_axis_out_of_range,
], ids=lambda f: f.__name__.strip("_"))
def test_verify_catches(breaker):
    model, v, n = chain_model()
    expected = breaker(model, v, n)
    with pytest.raises(VerificationError) as info:
        ir.verify(model)
    assert any(expected in problem for problem in info.value.problems), info.value.problems


def test_verify_catches_a_stale_capture():
    model = parse(IF_MODEL)
    relu, sigmoid, if_node = model.graph.nodes
    if_node._captures = (sigmoid.outputs[0],)  # the subgraphs still read t
    with pytest.raises(VerificationError, match="its subgraphs read"):
        ir.verify(model)


def test_verify_catches_a_capture_the_node_does_not_list():
    model = parse(IF_MODEL)
    relu, sigmoid, if_node = model.graph.nodes
    sigmoid.outputs[0]._add_use(if_node, CAPTURE_INDEX)
    with pytest.raises(VerificationError, match="lists a capture by"):
        ir.verify(model)


def test_verify_lists_every_problem_at_once():
    model, v, n = chain_model()
    _missing_use(model, v, n)
    _output_not_produced(model, v, n)
    with pytest.raises(VerificationError) as info:
        ir.verify(model)
    assert len(info.value.problems) == 2


@pytest.mark.parametrize("kwargs, expected", [
    ({"zero_point_dtype": TensorProto.UINT8}, "zero point dtype differs"),
    ({"scales": 3}, "3 scales for axis 0 of size 4"),
    ({"scales": 4, "axis": 2}, "axis 2 out of range for rank 2"),
])
def test_verify_catches_bad_qdq(kwargs, expected):
    with pytest.raises(VerificationError, match=expected):
        ir.verify(_qdq_model(**kwargs))


def test_verify_catches_qdq_without_scale():
    model = _qdq_model()
    model.graph.nodes[1].set_input(1, None)
    with pytest.raises(VerificationError, match="missing scale input"):
        ir.verify(model)


def test_verify_strict_runs_the_onnx_checker():
    model, v, n = chain_model()
    n["neg"].op_type = "NoSuchOp"
    ir.verify(model)  # the IR itself is fine
    with pytest.raises(VerificationError, match="onnx.checker"):
        ir.verify(model, strict=True)


# -- printer ---------------------------------------------------------------------------------

CONV_TEXT = """
<ir_version: 8, opset_import: ["" : 13]>
g (float[N,2,4,4] x) => (float[N,3,4,4] y) <float[3,2,1,1] w = {1,2,3,4,5,6}, float[3] b = {0.5,0,-1}> {
  c = Conv <kernel_shape = [1,1], pads = [0,0,0,0]> (x, w, b)
  y = Relu(c)
}"""


def test_printer_is_deterministic_and_equal_for_equal_graphs():
    first, second = parse(CONV_TEXT), parse(CONV_TEXT)
    text = ir.format_model(first)
    assert text == ir.format_model(first) == ir.format_model(second) == ir.format_model(first.clone())
    assert "= Conv(%x, %w, %b) {kernel_shape=[1,1], pads=[0,0,0,0]}" in text
    assert "%x: float[N,2,4,4]" in text
    # one line per node (plus header, inputs, initializers, return)
    assert sum(line.startswith("  %") and " = " in line for line in text.splitlines()) == 2


def test_a_clone_shares_the_weights_read_only_and_copies_the_rest():
    """A clone holds no second copy of the weights (views of the original's arrays that refuse writes), copies
    small initializers, and is independent once its values are given new arrays."""
    model = parse(CONV_TEXT)
    weight = np.arange(3 * 2 * 40 * 40, dtype=np.float32).reshape(3, 2, 40, 40)  # past SHAPE_DATA_ELEMENTS
    model.graph.initializers["w"].const = weight
    copy = model.clone()
    shared, small = copy.graph.initializers["w"].const, copy.graph.initializers["b"].const
    assert np.shares_memory(shared, weight) and not shared.flags.writeable
    assert not np.shares_memory(small, model.graph.initializers["b"].const)
    with pytest.raises(ValueError, match="read-only"):
        shared[0, 0, 0, 0] = 1.0
    copy.graph.initializers["w"].const = np.zeros_like(weight)
    assert np.array_equal(model.graph.initializers["w"].const, weight) and weight.flags.writeable


def test_printer_shows_every_difference():
    base = ir.format_model(parse(CONV_TEXT))
    changed_weight = parse(CONV_TEXT.replace("{1,2,3,4,5,6}", "{1,2,3,4,5,7}"))
    changed_attr = parse(CONV_TEXT.replace("pads = [0,0,0,0]", "pads = [0,0,0,0], group = 1"))
    changed_name = parse(CONV_TEXT.replace("y = Relu(c)", "y = Relu(c2)").replace("c = Conv", "c2 = Conv"))
    texts = {base, ir.format_model(changed_weight), ir.format_model(changed_attr),
             ir.format_model(changed_name)}
    assert len(texts) == 4


def test_printer_summarizes_large_constants_by_digest():
    node = Node("Constant", [], [Value("k", FLOAT, (100,))],
                attrs={"value": np.arange(100, dtype=np.float32)})
    line = ir.format_node(node)
    assert "tensor<float32[100]#" in line and len(line) < 120


# -- QuantSpec -------------------------------------------------------------------------------


def _quantize(x, spec: QuantSpec):
    scale, zero_point = spec.scale.astype(np.float64), spec.zero_point.astype(np.int64)
    if spec.axis is not None:
        shape = [1] * np.ndim(x)
        shape[spec.axis] = -1
        scale, zero_point = scale.reshape(shape), zero_point.reshape(shape)
    return np.clip(np.round(x / scale) + zero_point, spec.qmin, spec.qmax), scale, zero_point


def test_symmetric_int8_uses_the_restricted_range():
    spec = QuantSpec.from_range(-2.0, 5.08, TensorProto.INT8, symmetric=True)
    assert spec.zero_point == 0 and spec.zero_point.dtype == np.int8
    np.testing.assert_allclose(spec.scale, 5.08 / 127, rtol=1e-7)  # max|x| / 127, not / 127.5
    q, _, _ = _quantize(np.array([-5.08, -2.0, 0.0, 5.08]), spec)
    assert q[-1] == 127 and q[0] == -127  # the extremes are exact: no clipping, -128 unused
    assert spec.symmetric


def test_symmetric_uint8_centres_the_zero_point():
    spec = QuantSpec.from_range(-1.0, 3.0, TensorProto.UINT8, symmetric=True)
    assert spec.zero_point == 128
    q, _, _ = _quantize(np.array([-3.0, 3.0]), spec)
    assert q.tolist() == [1, 255]


@pytest.mark.parametrize("lo, hi", [(-1.3, 2.7), (0.2, 6.0), (-8.0, -0.5), (-1e-3, 1e3)])
def test_asymmetric_uint8_maps_lo_to_0_and_hi_to_255(lo, hi):
    spec = QuantSpec.from_range(lo, hi, TensorProto.UINT8, symmetric=False)
    lo_, hi_ = min(lo, 0.0), max(hi, 0.0)  # widened to include zero
    np.testing.assert_allclose(spec.scale, (hi_ - lo_) / 255, rtol=1e-6)
    q, scale, zero_point = _quantize(np.array([lo_, 0.0, hi_]), spec)
    # the zero point is rounded to an integer, which shifts the grid by at most half a step
    assert q[0] in (0, 1) and q[2] in (254, 255)
    assert q[1] == zero_point  # zero is exactly representable
    assert (q[1] - zero_point) * scale == 0.0
    assert abs((q[0] - zero_point) * scale - lo_) <= scale * (1 + 1e-6)
    assert abs((q[2] - zero_point) * scale - hi_) <= scale * (1 + 1e-6)


@pytest.mark.parametrize("dtype", [TensorProto.INT8, TensorProto.UINT8, TensorProto.INT16,
                                   TensorProto.UINT16, TensorProto.INT4, TensorProto.UINT4])
@pytest.mark.parametrize("symmetric", [True, False])
def test_zero_is_always_representable(dtype, symmetric):
    for lo, hi in [(0.3, 0.9), (-0.9, -0.3), (-2.0, 1.0), (0.0, 0.0)]:
        spec = QuantSpec.from_range(lo, hi, dtype, symmetric=symmetric)
        assert spec.qmin <= int(spec.zero_point) <= spec.qmax
        assert spec.scale > 0 and np.isfinite(spec.scale)
        q, scale, zero_point = _quantize(np.array([0.0]), spec)
        assert ((q - zero_point) * scale)[0] == 0.0


def test_per_channel_ranges_give_one_scale_and_zero_point_per_channel():
    lo = np.array([-1.0, -0.5, 0.0, -4.0])
    hi = np.array([1.0, 2.0, 0.0, 0.5])
    sym = QuantSpec.from_range(lo, hi, TensorProto.INT8, symmetric=True, axis=0)
    assert sym.scale.shape == sym.zero_point.shape == (4,)
    assert sym.scale.dtype == np.float32 and sym.per_channel and sym.axis == 0
    np.testing.assert_allclose(sym.scale, [1 / 127, 2 / 127, 1.0, 4 / 127], rtol=1e-6)
    assert (sym.zero_point == 0).all()
    asym = QuantSpec.from_range(lo, hi, TensorProto.UINT8, symmetric=False, axis=0)
    weights = np.stack([lo, hi], axis=1)  # [4, 2]: channel c holds its own lo and hi
    np.testing.assert_allclose(asym.scale, [2 / 255, 2.5 / 255, 1.0, 4.5 / 255], rtol=1e-6)
    assert asym.zero_point.dtype == np.uint8
    assert asym.zero_point.tolist() == [128, 51, 0, 227]  # round(-lo / scale) per channel
    q, _, _ = _quantize(weights, asym)
    assert (q[[0, 1, 3], 0] <= 1).all() and (q[[0, 1, 3], 1] >= 254).all()


def test_reduce_range_uses_seven_bits():
    spec = QuantSpec.from_range(-1.0, 1.0, TensorProto.INT8, symmetric=True, reduce_range=True)
    np.testing.assert_allclose(spec.scale, 1 / 63, rtol=1e-6)
    spec = QuantSpec.from_range(0.0, 1.0, TensorProto.UINT8, symmetric=False, reduce_range=True)
    q, _, _ = _quantize(np.array([1.0]), spec)
    assert q[0] == 127


def test_quantspec_equality_compares_arrays():
    a = QuantSpec.from_range(-1.0, 1.0, TensorProto.INT8, symmetric=True)
    b = QuantSpec.from_range(-1.0, 1.0, TensorProto.INT8, symmetric=True)
    c = QuantSpec.from_range(-1.0, 2.0, TensorProto.INT8, symmetric=True)
    assert a == b and a != c
    with pytest.raises(ValueError, match="not a quantized integer type"):
        QuantSpec.from_range(-1.0, 1.0, TensorProto.FLOAT, symmetric=True)
