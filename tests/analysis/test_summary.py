"""The per-layer summary: MACs from shapes resolved on a feed, precision read off the QDQ graph, totals."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

import qcompiler
from qcompiler import ir
from qcompiler.cli import main
from qcompiler.summary import format_table, summarize

from .conftest import cnn, cnn_feeds


def test_macs_of_every_compute_op_with_dynamic_dims_resolved_on_the_feed():
    rng = np.random.default_rng(0)
    proto = onnx.parser.parse_model("""
    <ir_version: 8, opset_import: ["" : 13]>
    g (float[N,2,5,5] x, float[N,T,6] s, float[6,M] a) => (float[N,3,5,5] c, float[N,2,11,11] t, float[N,T,4] m, float[M,4] g) {
      c = Conv<pads=[1,1,1,1], group=1>(x, wc)
      t = ConvTranspose<strides=[2,2]>(x, wt)
      m = MatMul(s, wm)
      g = Gemm<transA=1>(a, wg)
    }""")
    weights = {"wc": (3, 2, 3, 3), "wt": (2, 2, 3, 3), "wm": (6, 4), "wg": (6, 4)}
    proto.graph.initializer.extend(onnx.numpy_helper.from_array(rng.standard_normal(s).astype(np.float32), n)
                                   for n, s in weights.items())
    model = ir.from_proto(proto)
    feed = {"x": np.zeros((3, 2, 5, 5), np.float32), "s": np.zeros((3, 7, 6), np.float32),
            "a": np.zeros((6, 9), np.float32)}
    records = {r["op"]: r for r in summarize(model, feed)["layers"]}
    assert records["Conv"]["macs"] == 3 * 3 * 5 * 5 * (2 * 3 * 3)        # numel(Y) * C_in * k*k
    assert records["ConvTranspose"]["macs"] == 3 * 2 * 5 * 5 * (2 * 3 * 3)  # numel(X) * C_out * k*k
    assert records["MatMul"]["macs"] == 3 * 7 * 4 * 6                    # numel(Y) * K
    assert records["Gemm"]["macs"] == 9 * 4 * 6                          # transA: K is A's first axis
    assert all(r["precision"] == "float" for r in records.values())
    assert sum(r["macs_share"] for r in records.values()) == pytest.approx(1.0)


def test_summary_of_a_compiled_model():
    compiled = qcompiler.compile(cnn(), None, calib=cnn_feeds(), calibration="minmax", objective="size",
                                 exclude=["Gemm"])
    summary = summarize(compiled, cnn_feeds(count=1)[0], cnn())
    layers = summary["layers"]
    assert [(r["op"], r["precision"]) for r in layers] == [
        ("Conv", "int8"), ("Conv", "int8"), ("GlobalAveragePool", "int8"), ("Gemm", "float")]
    assert [r["params"] for r in layers] == [32 * 27 + 32, 64 * 32 * 9 + 64, 0, 10 * 64 + 10]
    totals = summary["totals"]
    gemm_macs = 4 * 10 * 64
    assert totals["macs"] == 4 * 32 * 64 * 27 + 4 * 64 * 64 * 32 * 9 + gemm_macs
    assert totals["int8_macs_share"] == pytest.approx(1 - gemm_macs / totals["macs"])
    assert totals["size_before"] == ir.to_proto(cnn()).ByteSize() and totals["compression"] > 2.5
    table = format_table(summary)
    assert table.splitlines()[0].split() == ["layer", "op", "alone", "dB", "precision", "params", "MACs", "%"]
    assert f"3/4 layers int8, {100 * totals['int8_macs_share']:.1f}% of {totals['macs']:,} MACs in int8" in table


def test_compile_prints_the_table_with_sensitivities(cnn_path, calib_dir, tmp_path, capsys):
    output = tmp_path / "out.onnx"
    status = main(["compile", str(cnn_path), "-o", str(output), "--calib", str(calib_dir), "-q",
                   "--calibration", "minmax", "--objective", "size", "--sensitivity-threshold", "0.001"])
    assert status == 0
    lines = capsys.readouterr().out.splitlines()
    rows = {line.split()[0]: line.split() for line in lines if line.startswith(("Conv", "Gemm", "Global"))}
    assert [row[3] for row in rows.values()] == ["float", "int8", "int8", "int8"]
    assert all(float(row[2]) > 0 for row in rows.values())  # the quantized-alone SQNR in dB
    assert "predicted output error" in lines[-2] and "for threshold 0.001" in lines[-2]
    assert lines[-1].startswith(f"wrote {output}")


def test_the_prediction_is_dropped_when_the_latency_guard_restored_float():
    compiled = qcompiler.compile(cnn(), None, calib=cnn_feeds(), calibration="minmax", objective="size",
                                 sensitivity_threshold=0.001)
    feed = cnn_feeds(count=1)[0]
    assert "predicted" in summarize(compiled, feed, cnn())["totals"]
    compiled.plan.reports["latency_guard"] = {"kept": "float"}  # what the guard records when it restores float
    assert "predicted" not in summarize(compiled, feed, cnn())["totals"]
