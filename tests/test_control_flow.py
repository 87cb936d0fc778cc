"""Models with control flow compile: an If whose branches read a quantized activation of the outer graph."""

from __future__ import annotations

import numpy as np
import onnx

import qcompiler
from qcompiler import ir
from qcompiler.ir.testing import run_onnxruntime

RNG = np.random.default_rng(5)


def if_model() -> ir.Model:
    text = """
    <ir_version: 8, opset_import: ["" : 13]>
    g (float[1,4,8,8] x, bool flag) => (float[1,8,8,8] y) {
      c = Conv <pads = [1,1,1,1]> (x, w, b)
      y = If (flag) <
        then_branch = then_g () => (float[1,8,8,8] t) { t = Relu(c) },
        else_branch = else_g () => (float[1,8,8,8] e) { e = Sigmoid(c) }
      >
    }"""
    proto = onnx.parser.parse_model(text)
    proto.graph.initializer.extend([
        onnx.numpy_helper.from_array(RNG.standard_normal((8, 4, 3, 3)).astype(np.float32), "w"),
        onnx.numpy_helper.from_array(RNG.standard_normal(8).astype(np.float32), "b")])
    return ir.from_proto(proto)


def feeds(count: int, flag: bool) -> list[dict[str, np.ndarray]]:
    return [{"x": RNG.standard_normal((1, 4, 8, 8)).astype(np.float32), "flag": np.array(flag)} for _ in range(count)]


def test_if_branch_reading_a_quantized_activation_compiles_and_runs():
    model = if_model()
    calib = feeds(4, True) + feeds(4, False)
    tests = feeds(2, True) + feeds(2, False)
    reference = [run_onnxruntime(model, feed)[0] for feed in tests]
    compiled = qcompiler.compile(model.clone(), None, calib=calib, target="x86-vnni", objective="size")
    proto = ir.to_proto(compiled)
    onnx.checker.check_model(proto)
    conv = next(n for n in proto.graph.node if n.op_type == "Conv")
    if_node = next(n for n in proto.graph.node if n.op_type == "If")
    captured = {i for a in if_node.attribute for n in a.g.node for i in n.input}
    producers = {o: n.op_type for n in proto.graph.node for o in n.output}
    assert conv.input[0] != "x" and len(captured) == 1  # the conv reads a dequantized input ...
    assert producers[captured.pop()] == "DequantizeLinear"  # ... and so do both branches
    for feed, want in zip(tests, reference):
        got = run_onnxruntime(proto, feed)[0]
        assert got.shape == want.shape
        assert np.sum((got - want) ** 2) < 1e-3 * np.sum(want ** 2)  # each branch runs on the int8 conv's output


def test_analyze_runs_on_a_model_with_an_if(tmp_path, capsys):
    from qcompiler.cli import main

    path = tmp_path / "if.onnx"
    ir.save(if_model(), path)
    calib = tmp_path / "calib"
    calib.mkdir()
    for i, feed in enumerate(feeds(2, True) + feeds(2, False)):
        np.savez(calib / f"batch_{i}.npz", **feed)
    assert main(["analyze", str(path), "--calib", str(calib), "--target", "x86-vnni", "-q"]) == 0
    assert "1. float sanity: PASS" in capsys.readouterr().out
