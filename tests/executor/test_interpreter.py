"""The Interpreter: planning, running float and quantized models, freeing values, errors, fallback."""

from __future__ import annotations

import numpy as np
import pytest

from qcompiler import ir
from qcompiler.errors import UserError
from qcompiler.executor import ExecutionError, Interpreter
from qcompiler.ir.testing import parse, run_onnxruntime

from .conftest import cnn_model, feeds


def test_float_model_matches_onnxruntime():
    model = cnn_model()
    feed = feeds(3, 1)[0]
    ours = Interpreter(model).run(feed)["y"]
    np.testing.assert_allclose(ours, run_onnxruntime(model, feed)[0], rtol=1e-5, atol=1e-5)


def test_qdq_model_simulated_matches_onnxruntime_without_optimizations(cnn_qdq):
    for feed in feeds(4, 2):
        np.testing.assert_allclose(Interpreter(cnn_qdq).run(feed)["y"], run_onnxruntime(cnn_qdq, feed)[0],
                                   rtol=1e-5, atol=1e-5)


def test_the_input_model_is_not_modified(cnn_qdq_copy):
    before = ir.format_model(cnn_qdq_copy)
    Interpreter(cnn_qdq_copy, profile="x86-avx2").run(feeds(5, 1)[0])
    assert ir.format_model(cnn_qdq_copy) == before


def test_values_are_freed_after_their_last_use():
    model = parse("""
        <ir_version: 8, opset_import: ["" : 13]>
        g (float[4] x) => (float[4] y, float[4] a) {
            a = Relu (x)
            b = Neg (a)
            c = Abs (b)
            y = Add (c, a)
        }""")
    interpreter = Interpreter(model)
    released = {step.outputs[0].name: [v.name for v in step.release] for step in interpreter.steps}
    assert released == {"a": ["x"], "b": [], "c": ["b"], "y": ["c"]}  # a is a graph output: kept
    x = np.array([-1, 2, -3, 4], np.float32)
    assert Interpreter(model).run({"x": x})["y"].tolist() == [0, 4, 0, 8]
    keeping = Interpreter(model, free_dead_values=False)
    keeping.run({"x": x})
    assert set(keeping.values) >= {"a", "b", "c", "y"}


def test_unused_nodes_are_not_planned():
    model = parse("""
        <ir_version: 8, opset_import: ["" : 13]>
        g (float[2] x) => (float[2] y) {
            dead = Exp (x)
            y = Relu (x)
        }""")
    assert [s.op for s in Interpreter(model).steps] == ["Relu"]


def test_errors_name_the_node():
    model = parse("""
        <ir_version: 8, opset_import: ["" : 13]>
        g (float[6] x) => (float[4,2] y) {
            shape = Constant <value = int64[2] {4, 2}> ()
            y = Reshape (x, shape)
        }""")
    model.graph.nodes[1].name = "the_reshape"
    with pytest.raises(ExecutionError, match=r"Reshape node 'the_reshape'"):
        Interpreter(model).run({"x": np.zeros(6, np.float32)})


def test_fused_step_errors_list_the_fused_nodes(cnn_qdq):
    interpreter = Interpreter(cnn_qdq, profile="exact")
    conv = next(s for s in interpreter.steps if s.op == "QLinearConv")
    assert "fused from DequantizeLinear" in conv.describe() and "Conv" in conv.describe()


@pytest.mark.parametrize("feed, message", [({}, "missing input 'x'"),
                                           ({"x": np.zeros((2, 3, 8, 8), np.float64)}, "has type float64"),
                                           ({"x": np.zeros((2, 3, 8, 8), np.float32), "z": np.zeros(1)},
                                            "unknown input")])
def test_bad_feeds_are_user_errors(feed, message):
    with pytest.raises(UserError, match=message):
        Interpreter(cnn_model()).run(feed)


def test_ops_without_a_kernel_fall_back_to_onnx_reference_with_subgraph_captures():
    """If reads an outer-scope value inside its branches: the capture is passed to onnx.reference."""
    model = parse("""
        <ir_version: 8, opset_import: ["" : 13]>
        g (bool c, float[3] x) => (float[3] y) {
            t = Exp (x)
            y = If (c) <
                then_branch = then_g () => (float[3] o) { o = Erf (t) },
                else_branch = else_g () => (float[3] o) { o = Neg (t) }
            >
        }""")
    interpreter = Interpreter(model)
    assert {s.op: s.source for s in interpreter.steps} == {"Exp": "onnx.reference", "If": "onnx.reference"}
    x = np.array([0.1, -0.5, 1.0], np.float32)
    for cond in (True, False):
        feed = {"c": np.array(cond), "x": x}
        np.testing.assert_allclose(interpreter.run(feed)["y"], run_onnxruntime(model, feed)[0], rtol=1e-6)


def test_maxpool_with_indices_falls_back_and_matches_onnxruntime():
    model = parse("""
        <ir_version: 8, opset_import: ["" : 13]>
        g (float[1,2,4,4] x) => (float[1,2,2,2] y, int64[1,2,2,2] i) {
            y, i = MaxPool <kernel_shape = [2, 2], strides = [2, 2]> (x)
        }""")
    interpreter = Interpreter(model)
    assert interpreter.steps[0].source == "onnx.reference"
    feed = {"x": np.random.default_rng(0).normal(size=(1, 2, 4, 4)).astype(np.float32)}
    ours, theirs = interpreter.run(feed), run_onnxruntime(model, feed)
    np.testing.assert_array_equal(ours["y"], theirs[0])
    np.testing.assert_array_equal(ours["i"], theirs[1])


def test_fused_profiles_plan_integer_kernels(cnn_qdq):
    simulated = {s.op for s in Interpreter(cnn_qdq).steps}
    fused = [s.op for s in Interpreter(cnn_qdq, profile="x86-avx2").steps if len(s.nodes) > 1]
    assert "Conv" in simulated and "QLinearConv" not in simulated
    assert sorted(fused) == ["QGemm", "QLinearAdd", "QLinearConv", "QLinearConv", "QLinearGlobalAveragePool"]


def test_runs_a_model_file(tmp_path, cnn_qdq):
    path = tmp_path / "m.onnx"
    ir.save(cnn_qdq, path)
    feed = feeds(6, 1)[0]
    np.testing.assert_array_equal(Interpreter(path, profile="exact").run(feed)["y"],
                                  Interpreter(cnn_qdq, profile="exact").run(feed)["y"])


def test_fallback_ops_follow_the_models_opset():
    """An op without a kernel of ours runs in onnx.reference at the model's opset: an opset-9 Dropout keeps its
    ``ratio`` attribute (onnx.reference given the bare node would pick Dropout-12, which has no such attribute;
    the interface matrix met it on light_squeezenet's original model under --sensitivity-threshold)."""
    model = parse("""<ir_version: 4, opset_import: ["" : 9]>
    g (float[2,3] x) => (float[2,3] y) {
      d = Dropout <ratio = 0.5> (x)
      y = Relu(d)
    }""")
    x = np.linspace(-1, 1, 6, dtype=np.float32).reshape(2, 3)
    np.testing.assert_array_equal(Interpreter(model).run({"x": x})["y"], np.maximum(x, 0))
    np.testing.assert_array_equal(Interpreter(model).run({"x": x})["y"], run_onnxruntime(model, {"x": x})[0])
