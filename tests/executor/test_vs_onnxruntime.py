"""The executor against onnxruntime's real int8 run of whole QDQ models, every quantized tensor compared.

* On this CPU: the executor under this CPU's profile equals onnxruntime with all graph optimizations
  (its fusions and integer kernels) bit for bit; ``simulate`` equals onnxruntime without optimizations.
* Under ``qemu-x86_64 -cpu Haswell-v4`` (AVX2, no VNNI; skipped without qemu-user): the ``x86-avx2``
  profile equals onnxruntime there bit for bit, on inputs where the int16 pairs do saturate (the exact
  profile differs). On a CPU that is itself AVX2 without VNNI the native test on those inputs checks
  the same, and that the case discriminates.
"""

from __future__ import annotations

import shutil
import subprocess
import sys

import numpy as np
import pytest

from qcompiler import ir
from qcompiler.executor import Interpreter
from qcompiler.executor.agreement import expose_quantized_outputs, run_onnxruntime
from qcompiler.targets import detect_target

from .conftest import feeds


def quantized_names(model: ir.Model) -> list[str]:
    return [n.outputs[0].name for n in model.graph if n.op_type == "QuantizeLinear"]


def test_this_cpus_profile_equals_onnxruntime_optimized(cnn_qdq):
    probe = expose_quantized_outputs(cnn_qdq, every=True)
    interpreter = Interpreter(probe, profile=detect_target().name)
    names = quantized_names(cnn_qdq)
    assert len(names) >= 6
    for feed in feeds(10, 2):
        ours, theirs = interpreter.run(feed), run_onnxruntime(probe, feed, optimize=True)
        for name in names + ["y"]:
            np.testing.assert_array_equal(ours[name], theirs[name], err_msg=name)


def test_this_cpus_profile_equals_onnxruntime_optimized_where_pairs_saturate(cnn_qdq):
    probe = expose_quantized_outputs(cnn_qdq, every=True)
    target = detect_target()
    feed = {"x": 4 * feeds(12, 1)[0]["x"]}  # the emulated-Haswell case below: large pair sums
    ours, theirs = Interpreter(probe, profile=target.name).run(feed), run_onnxruntime(probe, feed, optimize=True)
    names = quantized_names(cnn_qdq) + ["y"]
    for name in names:
        np.testing.assert_array_equal(ours[name], theirs[name], err_msg=name)
    if target.accumulation == "avx2_pair_saturate":  # this CPU saturates: the exact profile must not match
        exact = Interpreter(probe, profile="exact").run(feed)
        assert any(not np.array_equal(exact[name], theirs[name]) for name in names)


def test_simulate_equals_onnxruntime_without_optimizations(cnn_qdq):
    probe = expose_quantized_outputs(cnn_qdq, every=True)
    interpreter = Interpreter(probe, profile="simulate")
    for feed in feeds(11, 2):
        ours, theirs = interpreter.run(feed), run_onnxruntime(probe, feed, optimize=False)
        for name in quantized_names(cnn_qdq):
            np.testing.assert_array_equal(ours[name], theirs[name], err_msg=name)


WORKER = """
import sys, numpy as np, onnxruntime as ort
session = ort.InferenceSession(sys.argv[1], providers=["CPUExecutionProvider"])
feed = dict(np.load(sys.argv[2]))
np.savez(sys.argv[3], **dict(zip([o.name for o in session.get_outputs()], session.run(None, feed))))
"""


@pytest.mark.skipif(shutil.which("qemu-x86_64") is None, reason="needs qemu-user (apt-get install qemu-user)")
def test_avx2_profile_equals_onnxruntime_on_an_emulated_haswell(cnn_qdq, tmp_path):
    probe = expose_quantized_outputs(cnn_qdq, every=True)
    ir.save(probe, tmp_path / "m.onnx")
    feed = {"x": 4 * feeds(12, 1)[0]["x"]}  # beyond the calibrated range: saturated activations, large pair sums
    np.savez(tmp_path / "x.npz", **feed)
    subprocess.run(["qemu-x86_64", "-cpu", "Haswell-v4", sys.executable, "-c", WORKER, str(tmp_path / "m.onnx"),
                    str(tmp_path / "x.npz"), str(tmp_path / "y.npz")], check=True, timeout=600, capture_output=True)
    theirs = dict(np.load(tmp_path / "y.npz"))
    avx2 = Interpreter(probe, profile="x86-avx2").run(feed)
    exact = Interpreter(probe, profile="exact").run(feed)
    names = quantized_names(cnn_qdq) + ["y"]
    for name in names:
        np.testing.assert_array_equal(avx2[name], theirs[name], err_msg=name)
    assert any(not np.array_equal(exact[name], theirs[name]) for name in names)  # the case discriminates


def test_a_float_layer_between_dequantize_and_quantize_runs_as_onnxruntime_quantizes_it():
    """Issue 17's graph campaign: a Gemm with transA (kept float by the compiler) read a quantized input
    and fed a quantized one; onnxruntime quantizes its float weight itself (WeightBiasQuantization,
    int8 per tensor asymmetric) and runs QGemm, which the executor did not model (up to 72 LSB apart)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    import qcompiler

    rng = np.random.default_rng(3)
    nodes = [helper.make_node("Gemm", ["x", "w0"], ["g0"]),
             helper.make_node("Transpose", ["g0"], ["t"], perm=[1, 0]),
             helper.make_node("Gemm", ["t", "w1"], ["g1"], transA=1),
             helper.make_node("Gemm", ["g1", "w2", "b2"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 6])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 5])],
                              [numpy_helper.from_array(rng.normal(0, 0.4, s).astype(np.float32), n)
                               for n, s in (("w0", (6, 6)), ("w1", (6, 9)), ("w2", (9, 5)), ("b2", (5,)))])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    calib = [{"x": rng.normal(0, 3, (4, 6)).astype(np.float32)} for _ in range(4)]
    model = qcompiler.compile(ir.from_proto(proto), None, calib=calib, objective="size")
    first = next(n for n in model.graph if n.op_type == "Gemm" and n.attrs.get("transA"))
    assert first.inputs[1].producer() is None and first.inputs[0].producer().op_type == "DequantizeLinear"
    probe = expose_quantized_outputs(model, every=True)
    interpreter = Interpreter(probe, profile=detect_target().name)
    names = quantized_names(model)
    for feed in calib[:2]:
        ours, theirs = interpreter.run(feed), run_onnxruntime(probe, feed, optimize=True)
        for name in names + ["y"]:
            np.testing.assert_array_equal(ours[name], theirs[name], err_msg=name)


def test_a_gemm_with_alpha_and_a_bias_stays_unfused_as_in_onnxruntime():
    """Issue 17's graph campaign: QGemm multiplies its int32 bias by alpha too, so onnxruntime fuses no
    Gemm with a bias and alpha != 1 and runs it in float; the executor fused it (1 LSB apart)."""
    from onnx import TensorProto, helper, numpy_helper

    import qcompiler

    rng = np.random.default_rng(5)
    graph = helper.make_graph([helper.make_node("Gemm", ["x", "w", "b"], ["y"], alpha=0.5, transB=1)], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [8, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [8, 10])],
                              [numpy_helper.from_array(rng.normal(0, 0.3, (10, 16)).astype(np.float32), "w"),
                               numpy_helper.from_array(rng.normal(0, 1.0, 10).astype(np.float32), "b")])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    calib = [{"x": rng.normal(0, 2, (8, 16)).astype(np.float32)} for _ in range(4)]
    model = qcompiler.compile(ir.from_proto(proto), None, calib=calib, objective="size")
    gemm = next(n for n in model.graph if n.op_type == "Gemm")
    assert gemm.inputs[2].producer().op_type == "DequantizeLinear"  # an int32 bias
    probe = expose_quantized_outputs(model, every=True)
    interpreter = Interpreter(probe, profile=detect_target().name)
    assert not any(step.op == "QGemm" for step in interpreter.steps)
    names = quantized_names(model)
    for feed in calib:
        ours, theirs = interpreter.run(feed), run_onnxruntime(probe, feed, optimize=True)
        for name in names:
            np.testing.assert_array_equal(ours[name], theirs[name], err_msg=name)


def test_a_dequantized_graph_output_still_feeds_a_fused_unit():
    """Issue 17's graph campaign (seed 15, graph 5): a quantized Transpose output that is also a graph
    output feeds a Gemm (transA); onnxruntime gives the Gemm a DequantizeLinear of its own
    (EnsureUniqueDQForNodeUnit) and fuses QGemm, the executor left the unit unfused (23 LSB apart where
    the int16 pairs saturate)."""
    from onnx import TensorProto, helper, numpy_helper

    import qcompiler

    rng = np.random.default_rng(11)
    nodes = [helper.make_node("MatMul", ["x", "w0"], ["m"]),
             helper.make_node("Transpose", ["m"], ["t"], perm=[1, 0]),
             helper.make_node("Gemm", ["t", "w1", "b1"], ["g"], transA=1),
             helper.make_node("Relu", ["g"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 5])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4]),
                               helper.make_tensor_value_info("t", TensorProto.FLOAT, [6, 2])],
                              [numpy_helper.from_array(rng.normal(0, 0.4, s).astype(np.float32), n)
                               for n, s in (("w0", (5, 6)), ("w1", (6, 4)), ("b1", (4,)))])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    calib = [{"x": rng.normal(0, 1000, (2, 5)).astype(np.float32)} for _ in range(4)]
    model = qcompiler.compile(ir.from_proto(proto), None, calib=calib, objective="size", pipeline="int8")
    assert model.graph.outputs[1].producer().op_type == "DequantizeLinear"
    probe = expose_quantized_outputs(model, every=True)
    interpreter = Interpreter(probe, profile=detect_target().name)
    assert any(step.op == "QGemm" for step in interpreter.steps)
    for feed in calib:
        ours, theirs = interpreter.run(feed), run_onnxruntime(probe, feed, optimize=True)
        for name in quantized_names(model):
            np.testing.assert_array_equal(ours[name], theirs[name], err_msg=name)


def test_propagation_leaves_a_subgraph_capture_alone(monkeypatch):
    """Issue 17's graph campaign: a Slice after a DequantizeLinear, whose output an If captures, got a
    propagated Q/DQ pair for the capture too, wired as input -1 of the If: it replaced the condition."""
    from onnx import TensorProto, helper, numpy_helper

    import qcompiler
    from qcompiler.executor.propagation import propagate_qdq
    from qcompiler.options import CompileOptions
    from qcompiler.pipelines import resolve

    def branch(name, op, extra):
        out = f"{name}_out"
        return helper.make_graph([helper.make_node(op, ["s", *extra], [out])], name, [],
                                 [helper.make_tensor_value_info(out, TensorProto.FLOAT, [2, 1, 4])])

    rng = np.random.default_rng(7)
    constants = {"starts": np.array([0]), "ends": np.array([1]), "axes": np.array([1]), "zero": np.float32(0),
                 "gain": np.float32(1.5)}
    nodes = [helper.make_node("Transpose", ["x"], ["t"], perm=[0, 2, 1]),
             helper.make_node("MatMul", ["x", "t"], ["m"]),
             helper.make_node("Slice", ["m", "starts", "ends", "axes"], ["s"]),
             helper.make_node("ReduceMean", ["s"], ["mean"], keepdims=0),
             helper.make_node("Greater", ["mean", "zero"], ["cond"]),
             helper.make_node("If", ["cond"], ["y"], then_branch=branch("then", "Mul", ["gain"]),
                              else_branch=branch("else", "Relu", []))]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 1, 4])],
                              [numpy_helper.from_array(np.asarray(v, np.int64 if k in ("starts", "ends", "axes")
                                                                  else np.float32), k) for k, v in constants.items()])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    calib = [{"x": rng.normal(0, 1, (2, 4, 3)).astype(np.float32)} for _ in range(4)]
    # the compiler now gives such a captured value a pair of its own (lowering.guard_captures), because
    # onnxruntime 1.32 with graph optimizations aborts the process on this form; the executor still meets
    # it in other tools' models, so the test writes it with the guard off, leaves out check-kernels (it
    # runs onnxruntime optimized) and compares with onnxruntime without optimizations: the QDQ graph in float
    monkeypatch.setattr("qcompiler.lowering.guard_captures", lambda graph: 0)
    options = CompileOptions(calib=calib, objective="size")
    pipeline = resolve("int8", options)
    pipeline.passes = [p for p in pipeline.passes if p.name != "check-kernels"]
    model = qcompiler.compile(ir.from_proto(proto), None, pipeline=pipeline, options=options)
    propagated = propagate_qdq(model)
    if_node = next(n for n in propagated.graph if n.op_type == "If")
    assert if_node.inputs[0].name == "cond"
    for profile in ("exact", detect_target().name):
        interpreter = Interpreter(model, profile=profile)
        for feed in calib[:2]:
            ours, theirs = interpreter.run(feed)["y"], run_onnxruntime(model, feed, optimize=False)["y"]
            np.testing.assert_allclose(ours, theirs, atol=0.05 * np.abs(theirs).max())
