"""FoldConstants (passes/fold_constants.py, onnx-graphsurgeon underneath)."""

from __future__ import annotations

import numpy as np
import onnx

from qcompiler import ir
from qcompiler.ir.testing import parse, run_onnxruntime, tensor_text
from qcompiler.passes import FoldConstants

SHAPE_CHAIN = """
<ir_version: 8, opset_import: ["" : 13]>
g (float[{batch},3,4,4] x) => (float[{batch},48] y) <int64[1] zero = {{0}}, int64[1] minus = {{-1}}> {{
  s = Shape(x)
  n = Gather <axis = 0> (s, zero)
  shp = Concat <axis = 0> (n, minus)
  r = Reshape(x, shp)
  y = Relu(r)
}}"""


def ops(m) -> list[str]:
    return [node.op_type for node in m.graph]


def test_static_shape_chain_folds_to_a_constant(run_checked):
    m = parse(SHAPE_CHAIN.format(batch=2))
    assert run_checked(m, FoldConstants()).modified
    assert ops(m) == ["Reshape", "Relu"]
    reshape = m.graph.nodes[0]
    np.testing.assert_array_equal(reshape.inputs[1].const, [2, -1])
    assert set(m.graph.initializers) == {reshape.inputs[1].name}  # zero and minus are dead now
    assert [v.name for v in m.graph.outputs] == ["y"] and [v.name for v in m.graph.inputs] == ["x"]


def test_dynamic_shape_chain_stays(run_checked):
    m = parse(SHAPE_CHAIN.format(batch="N"))
    before = ir.format_model(m)
    assert not run_checked(m, FoldConstants()).modified
    assert ir.format_model(m) == before


def test_constant_arithmetic_folds_and_keeps_docs_and_metadata(run_checked):
    m = parse("""
    <ir_version: 8, opset_import: ["" : 13]>
    g (float[N,2] x) => (float[N,2] y) <float[2] w = {1, 2}, float[2] b = {0.5, -1}> {
      w2 = Mul(w, w)
      wb = Add(w2, b)
      y = Mul(x, wb)
    }""")
    m.graph.nodes[2].name, m.graph.nodes[2].doc_string = "scale", "multiplies by w*w+b"
    m.graph.doc_string, m.graph.metadata = "graph doc", {"graph_key": "v"}
    m.doc_string, m.metadata = "model doc", {"character": "a\nb"}
    assert run_checked(m, FoldConstants()).modified
    assert ops(m) == ["Mul"]
    mul = m.graph.nodes[0]
    np.testing.assert_array_equal(mul.inputs[1].const, [1.5, 3.0])
    assert (mul.name, mul.doc_string) == ("scale", "multiplies by w*w+b")
    assert (m.graph.doc_string, m.graph.metadata) == ("graph doc", {"graph_key": "v"})
    assert (m.doc_string, m.metadata) == ("model doc", {"character": "a\nb"})
    assert (m.ir_version, m.opset_imports) == (8, {"": 13})


def test_nothing_constant_no_change(run_checked):
    m = parse("""
    <ir_version: 8, opset_import: ["" : 13]>
    g (float[N,2] x) => (float[N,2] y) <float[2] w = {1, 2}> {
      h = Mul(x, w)
      y = Relu(h)
    }""")
    assert not run_checked(m, FoldConstants()).modified


def test_results_above_the_size_threshold_are_not_folded(run_checked):
    m = parse("""
    <ir_version: 8, opset_import: ["" : 13]>
    g (float[256,256] x) => (float[256,256] y) <float[1] one = {1}, int64[2] shape = {256, 256}> {
      big = Expand(one, shape)
      y = Add(x, big)
    }""")
    assert not run_checked(m, FoldConstants(size_threshold=1024)).modified
    assert ops(m) == ["Expand", "Add"]
    assert run_checked(m, FoldConstants()).modified  # 256 KiB is under the default threshold
    assert ops(m) == ["Add"]


def test_overridable_initializer_inputs_stay_graph_inputs():
    proto = onnx.parser.parse_model("""
    <ir_version: 8, opset_import: ["" : 13]>
    g (float[N,2] x, float[2] w) => (float[N,2] y) <float[2] w = {1, 2}> {
      w2 = Mul(w, w)
      y = Mul(x, w2)
    }""")
    m = ir.from_proto(proto)
    assert FoldConstants()(m).modified
    ir.verify(m, strict=True)
    assert [v.name for v in m.graph.inputs] == ["x", "w"]  # the interface is unchanged
    np.testing.assert_array_equal(m.graph.initializers["w"].const, [1, 2])
    x = np.ones((1, 2), np.float32)
    np.testing.assert_array_equal(run_onnxruntime(m, {"x": x})[0], [[1, 4]])
    run_onnxruntime(m, {"x": x, "w": np.zeros(2, np.float32)})  # still accepted as an input


UNSQUEEZED_TWICE = """
<ir_version: 8, opset_import: ["" : 13]>
g (float[N,4,1] x) => (float[N,4,1] y) <float[4] a = {1, 2, 3, 4}, int64[1] ax = {1}> {
  u = Unsqueeze(a, ax)
  b = Add(u, u)
  v = Mul(u, b)
  y = Mul(x, v)
}"""


def test_onnxruntime_optimizer_warnings_do_not_reach_the_terminal(capfd):
    import onnxruntime as ort

    before = ort.InferenceSession
    m = parse(UNSQUEEZED_TWICE)
    assert FoldConstants()(m).modified
    assert ops(m) == ["Mul"]
    err = capfd.readouterr().err  # onnxruntime logs from C++ to file descriptor 2
    assert "W:onnxruntime" not in err and "UnsqueezeElimination" not in err, err
    assert ort.InferenceSession is before


def test_quiet_sessions_keep_errors_and_given_options():
    import onnxruntime as ort

    from qcompiler.passes.fold_constants import quiet_onnxruntime_sessions

    data = onnx.parser.parse_model(UNSQUEEZED_TWICE).SerializeToString()
    with quiet_onnxruntime_sessions():
        quiet = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
        options = ort.SessionOptions()
        options.log_severity_level = 1
        given = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
    assert quiet.get_session_options().log_severity_level == 3  # errors are still logged
    assert given.get_session_options().log_severity_level == 1


def test_weights_that_no_constant_node_reads_are_not_copied(run_checked):
    """graphsurgeon gets the weights that folding does not evaluate as placeholders: the folded model holds
    the same arrays (a multi-gigabyte model is not copied); a weight a constant chain reads is folded."""
    rng = np.random.default_rng(0)
    w, k = (rng.standard_normal((64, 64)).astype(np.float32) for _ in range(2))
    m = parse(f"""
    <ir_version: 8, opset_import: ["" : 13]>
    g (float[N,64] x) => (float[N,64] y) <{tensor_text("w", w)}, {tensor_text("k", k)}> {{
      wt = Transpose(w)
      h = MatMul(x, wt)
      y = MatMul(h, k)
    }}""")
    kept = m.graph.initializers["k"].const
    assert run_checked(m, FoldConstants()).modified
    assert ops(m) == ["MatMul", "MatMul"]
    first, second = m.graph.nodes
    np.testing.assert_array_equal(first.inputs[1].const, w.T)
    assert second.inputs[1].const is kept
