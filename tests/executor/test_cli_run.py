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


def test_run_checks_feed_shapes_against_the_model_inputs_first(tmp_path, capsys, cnn_qdq):
    model, _ = _files(tmp_path, cnn_qdq)
    for shape in [(2, 3, 8, 9), (3, 8, 8)]:
        np.savez(tmp_path / "bad.npz", x=np.zeros(shape, np.float32))
        assert main(["run", model, "--inputs", str(tmp_path / "bad.npz")]) == 2
        assert capsys.readouterr().err.strip() == (f"qcompiler: error: input 'x' has shape {shape}, the model "
                                                   f"expects (2, 3, 8, 8)")


def test_interpreter_checks_symbolic_dimensions_across_inputs():
    import pytest

    from qcompiler.errors import UserError
    from qcompiler.executor import Interpreter
    from qcompiler.ir.testing import parse

    model = parse("""
    <ir_version: 8, opset_import: ["" : 13]>
    g (float[N,4] a, float[N,4] b) => (float[N,4] y) { y = Add(a, b) }""")
    interpreter = Interpreter(model)
    assert interpreter.run({"a": np.ones((3, 4), np.float32), "b": np.ones((3, 4), np.float32)})["y"].shape == (3, 4)
    with pytest.raises(UserError, match=r"^input 'b' has size 1 on axis 0 \('N'\) but input 'a' has size 3 on axis 0"):
        interpreter.run({"a": np.ones((3, 4), np.float32), "b": np.ones((1, 4), np.float32)})
