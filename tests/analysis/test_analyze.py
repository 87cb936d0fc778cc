"""``qcompiler analyze``: the text, the JSON, the HTML report, the kernel flags and the bad inputs.

Real onnxruntime runs on the small CNN of ``conftest`` and on a one-convolution model built so that
onnxruntime's AVX2 kernels (u8 x s8 pairs summed into a saturating int16) really saturate.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import onnx
import pytest

import qcompiler
from qcompiler import ir
from qcompiler.cli import main
from qcompiler.executor.layerwise import SATURATION, compare_layers

OPTIONS = ["--target", "x86-vnni", "--calibration", "minmax", "-q"]


@pytest.fixture
def analyzed(cnn_path, calib_dir, tmp_path, capsys):
    out_json, out_html = tmp_path / "a.json", tmp_path / "a.html"
    assert main(["analyze", str(cnn_path), "--calib", str(calib_dir), *OPTIONS, "--json", str(out_json),
                 "--html", str(out_html)]) == 0
    return capsys.readouterr().out, json.loads(out_json.read_text()), out_html.read_text()


def test_text_report_has_every_step(analyzed):
    text, report, _ = analyzed
    for heading in ("1. float sanity: PASS", "2. error split", "3. per layer", "recommended --sensitivity-threshold",
                    "why:", "4. target kernels (x86-vnni)", "0 of 4 kernels flagged", "5. distributions"):
        assert heading in text, heading
    assert f"--sensitivity-threshold {report['recommendation']['threshold']:g}:" in text


def test_json_content(analyzed):
    _, report, _ = analyzed
    sanity = report["sanity"]
    assert sanity["passed"] and sanity["finite"] and sanity["bypassed_quantized_nodes"] == 0
    assert float(sanity["bypassed"]["sqnr_db"]) >= 60
    # the float graph after every pass that changed it: folding the BatchNormalization rounds, no more
    assert "fold-batchnorm" in [d["pass"] for d in sanity["passes"]] and sanity["first_drift"] is None
    assert all(float(d["sqnr_db"]) >= 60 for d in sanity["passes"])
    split = report["split"]
    # the spiky input makes activations the dominant error (conftest), weights alone are far better
    assert split["weights_only"]["sqnr_db"] > split["activations_only"]["sqnr_db"] + 10
    assert split["all_int8"]["nsr"] > split["weights_only"]["nsr"]
    assert [r["op"] for r in report["layers"]] == ["Conv", "Conv", "GlobalAveragePool", "Gemm"]
    first = report["layers"][0]
    assert set(first) >= {"quantized_alone", "float_alone", "precision", "params", "macs_share"}
    assert first["quantized_alone"]["nsr"] > report["layers"][3]["quantized_alone"]["nsr"]  # the sensitive one
    rec = report["recommendation"]
    assert 0 < rec["threshold"] <= 0.005 and rec["predicted"]["nsr"] <= rec["threshold"]
    assert len(report["path"]) == len(report["layers"]) + 1
    assert report["kernels"]["profile"] == "x86-vnni" and report["kernels"]["flagged"] == []
    distributions = {d["name"]: d for d in report["distributions"]}
    assert {d["kind"] for d in distributions.values()} == {"activation", "weight"}
    for d in distributions.values():  # every element is counted in the histogram
        assert sum(d["histogram"]["counts"]) == d["elements"]
        assert 0 <= d["clipped"] <= 1 and 0 <= d["utilisation"] <= 1
    assert distributions["x"]["max"] == pytest.approx(400.0)  # the spike (conftest)


def test_recommended_threshold_reproduces_in_compile(analyzed, cnn_path, calib_dir):
    _, report, _ = analyzed
    rec = report["recommendation"]
    model = qcompiler.compile(cnn_path, None, calib=str(calib_dir), target="x86-vnni", calibration="minmax",
                              objective="size", sensitivity_threshold=rec["threshold"])
    mixed = model.plan.reports["mixed_precision"]
    assert mixed["predicted"]["nsr"] == pytest.approx(rec["predicted"]["nsr"], rel=1e-9)
    assert {n: r["precision"] for n, r in mixed["layers"].items()} == {r["name"]: r["precision"] for r in report["layers"]}


def test_html_is_well_formed_self_contained_and_matches_the_json(analyzed):
    _, report, html = analyzed
    assert html.startswith("<!DOCTYPE html>")
    root = ET.fromstring(html.split("\n", 1)[1])  # well-formed (XHTML)
    ns = {"h": "http://www.w3.org/1999/xhtml"}
    assert not re.search(r"""(src|href)\s*=|<link|@import|url\(""", html)
    assert set(re.findall(r"https?://[^\s\"']+", html)) <= {"http://www.w3.org/1999/xhtml", "http://www.w3.org/2000/svg"}
    data = root.find(".//h:script[@id='analysis-data']", ns)
    assert json.loads(data.text) == report
    rows = root.findall(".//h:table[@id='layers']/h:tbody/h:tr", ns)
    assert len(rows) == len(report["layers"])
    names = [row.findall("h:td", ns)[1].text for row in rows]
    ordered = sorted(report["layers"], key=lambda r: float(r["quantized_alone"]["sqnr_db"]))
    assert names == [r["name"] for r in ordered]  # ordered by sensitivity, most sensitive first
    text = "".join(root.itertext())
    assert f"--sensitivity-threshold {report['recommendation']['threshold']:g}" in text
    assert len(root.findall(".//h:svg", {"h": "http://www.w3.org/2000/svg"})) >= 3 + len(report["distributions"])


@pytest.mark.skipif(shutil.which("chromium") is None, reason="chromium is not installed (apt-get install chromium)")
def test_html_renders_in_headless_chromium(analyzed, tmp_path):
    _, report, html = analyzed
    page = tmp_path / "page.html"
    page.write_text(html)
    done = subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                           "--disable-background-networking", "--disable-component-update", "--disable-sync",
                           f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom", page.as_uri()],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Per-layer sensitivity" in done.stdout and report["layers"][0]["name"] in done.stdout


def one_conv(tmp_path: Path) -> tuple[Path, Path]:
    """One 1x1 convolution, 64 input channels of positive weights, inputs in [0, 1]: the u8 activations
    reach 255 and the per-channel s8 weights 127, so adjacent pairs sum past 32767."""
    rng = np.random.default_rng(3)
    proto = onnx.parser.parse_model("""
    <ir_version: 8, opset_import: ["" : 13]>
    g (float[1,64,4,4] x) => (float[1,8,4,4] y) { y = Conv(x, w, b) }""")
    proto.graph.initializer.extend([
        onnx.numpy_helper.from_array(rng.uniform(0.5, 1.0, (8, 64, 1, 1)).astype(np.float32), "w"),
        onnx.numpy_helper.from_array(np.zeros(8, np.float32), "b")])
    path = tmp_path / "conv.onnx"
    onnx.save(proto, str(path))
    calib = tmp_path / "conv_calib"
    calib.mkdir()
    for i in range(3):
        np.savez(calib / f"{i}.npz", x=rng.uniform(0.5, 1.0, (1, 64, 4, 4)).astype(np.float32))
    return path, calib


def _compiled(path: Path, calib: Path, target: str) -> ir.Model:
    return qcompiler.compile(path, None, calib=str(calib), target=target, calibration="minmax", objective="size")


def test_saturation_is_flagged_where_avx2_pairs_overflow_and_not_elsewhere(tmp_path):
    path, calib = one_conv(tmp_path)
    full_range = _compiled(path, calib, "x86-vnni")
    feeds = [dict(np.load(f)) for f in sorted(calib.iterdir())][:2]
    (record,) = compare_layers(full_range, "x86-avx2", feeds)
    assert record["flagged"] and record["saturable"] and record["cause"] == SATURATION
    assert record["over_one_lsb"] > 0.5 and float(record["exact_sqnr_db"]) > 40 > float(record["sqnr_db"])
    assert "7-bit weights" in record["fix"]
    # benign: the same model on VNNI kernels; small activations on AVX2; 7-bit weights on AVX2
    assert not compare_layers(full_range, "x86-vnni", feeds)[0]["flagged"]
    small = [{"x": f["x"] * 0.05} for f in feeds]
    assert not compare_layers(full_range, "x86-avx2", small)[0]["flagged"]
    assert not compare_layers(_compiled(path, calib, "x86-avx2"), "x86-avx2", feeds)[0]["flagged"]


def test_cli_flags_the_saturating_layer_of_a_given_quantized_model(tmp_path, capsys):
    path, calib = one_conv(tmp_path)
    quantized = tmp_path / "conv.vnni.onnx"
    ir.save(_compiled(path, calib, "x86-vnni"), quantized)
    out_json = tmp_path / "conv.json"
    assert main(["analyze", str(path), str(quantized), "--calib", str(calib / "*.npz"), "--target", "x86-avx2",
                 "--calibration", "minmax", "-q", "--json", str(out_json)]) == 0
    text = capsys.readouterr().out
    assert "1 of 1 kernels flagged" in text and "cause: int16 pair saturation" in text
    kernels = json.loads(out_json.read_text())["kernels"]
    assert kernels["profile"] == "x86-avx2" and kernels["model"] == str(quantized) and len(kernels["flagged"]) == 1


def _expect_user_error(capsys, argv, pattern, outputs=()):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("qcompiler: error:")]
    assert len(lines) == 1 and re.search(pattern, lines[0]), err
    assert not any(Path(p).exists() for p in outputs)


def test_bad_inputs(cnn_path, calib_dir, tmp_path, capsys):
    html = tmp_path / "r.html"
    base = ["analyze", str(cnn_path), "--calib", str(calib_dir), *OPTIONS]
    _expect_user_error(capsys, ["analyze", str(tmp_path / "nope.onnx"), "--calib", str(calib_dir), *OPTIONS],
                       r"nope\.onnx: no such file")
    _expect_user_error(capsys, ["analyze", str(cnn_path), "--calib", str(tmp_path / "none*.npz"), *OPTIONS,
                                "--html", str(html)], r"none\*\.npz: no calibration file matches", [html])
    _expect_user_error(capsys, base + ["--html", str(tmp_path / "missing" / "r.html")], r"does not exist")
    _expect_user_error(capsys, base + ["--pipeline", "w4a8"], r"no mixed-precision step")
    _expect_user_error(capsys, base[:4] + ["--target", "sparc", "-q"], r"unknown target 'sparc'")
    _expect_user_error(capsys, ["analyze", str(cnn_path), str(cnn_path), "--calib", str(calib_dir), *OPTIONS,
                                "--html", str(html)], r"not a quantized \(QDQ\) model", [html])


def test_recommendation_rule():
    from qcompiler.analysis import ACCURACY_FLOOR, recommend
    from qcompiler.sensitivity import Evaluation

    configurations = [Evaluation(frozenset(), frozenset({"a", "b"}), {"nsr": 0.00466, "sqnr_db": 23.3, "cosine": 0.998},
                                 10),
                      Evaluation(frozenset({"b"}), frozenset({"a"}), {"nsr": 0.0011, "sqnr_db": 29.6, "cosine": 0.999},
                                 20)]

    def search(threshold):  # mixed-precision's choice: the smallest feasible configuration
        feasible = [c for c in configurations if c.errors["nsr"] <= threshold]
        return min(feasible, key=lambda c: c.size, default=None)

    rec = recommend(search, {"sqnr_db": 20.0})
    assert rec["threshold"] == 0.0047 and rec["configuration"] is configurations[0]  # its error, rounded up
    configurations[0].errors["nsr"] = 0.00499
    assert recommend(search, {"sqnr_db": 20.0})["threshold"] == ACCURACY_FLOOR  # rounding up never passes the floor
    configurations[:] = [c for c in configurations if c.errors["nsr"] > 1]
    none = recommend(search, {"sqnr_db": 12.2})
    assert none["threshold"] == ACCURACY_FLOOR and none["configuration"] is None and "keeps the model float" in none["reason"]
