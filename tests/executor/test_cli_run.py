"""``qcompiler run MODEL --inputs X.npz [--target NAME] [--compare-ort]``."""

from __future__ import annotations

import numpy as np

from qcompiler import ir
from qcompiler.cli import main
from qcompiler.targets import detect_target

from .conftest import feeds


def _files(tmp_path, model):
    ir.save(model, tmp_path / "m.onnx")
    np.savez(tmp_path / "x.npz", **feeds(40, 1)[0])
    return str(tmp_path / "m.onnx"), str(tmp_path / "x.npz")


def test_run_prints_the_outputs_and_the_agreement_with_onnxruntime(tmp_path, capsys, cnn_qdq):
    model, inputs = _files(tmp_path, cnn_qdq)
    assert main(["run", model, "--inputs", inputs, "--compare-ort"]) == 0  # --target auto: this CPU's profile
    out = capsys.readouterr().out
    assert out.startswith(f"profile {detect_target().name}:")
    assert "fused integer kernels" in out and "  y: float32[2, 5]" in out
    assert "agreement with onnxruntime on this CPU" in out
    assert "y_quantized: uint8, 100.000 % bit-exact, max 0 LSB" in out


def test_run_without_comparison(tmp_path, capsys, cnn_qdq):
    model, inputs = _files(tmp_path, cnn_qdq)
    assert main(["run", model, "--inputs", inputs, "--target", "simulate"]) == 0
    out = capsys.readouterr().out
    assert "profile simulate" in out and "agreement" not in out


def test_run_errors_are_one_line(tmp_path, capsys, cnn_qdq):
    model, inputs = _files(tmp_path, cnn_qdq)
    assert main(["run", model, "--inputs", inputs, "--target", "vax"]) == 2
    assert capsys.readouterr().err.strip() == ("qcompiler: error: unknown numerics profile 'vax'; known: auto, "
                                               "simulate, exact, x86-avx2, x86-vnni, arm64")
    np.savez(tmp_path / "bad.npz", z=np.zeros(3))
    assert main(["run", model, "--inputs", str(tmp_path / "bad.npz")]) == 2
    assert "missing input 'x'" in capsys.readouterr().err
    assert main(["run", model, "--inputs", str(tmp_path / "none.npz")]) == 2
    assert "no such inputs file" in capsys.readouterr().err


def test_run_inputs_that_are_not_an_npz_archive(tmp_path, capsys, cnn_qdq):
    model, _ = _files(tmp_path, cnn_qdq)
    text = tmp_path / "text.npz"
    text.write_text("x = 1, 2, 3\n")
    assert main(["run", model, "--inputs", str(text)]) == 2
    err = capsys.readouterr().err
    assert err.strip() == (f"qcompiler: error: {text}: not a .npz archive (it starts with b'x = ', not a zip header); "
                           f"write feeds with np.savez(path, input_name=array)")
    assert "pickle" not in err
