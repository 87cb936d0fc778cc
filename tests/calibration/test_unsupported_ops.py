"""A node onnxruntime (or the executor) has no kernel for is a user error naming the node and its operator:
``collect`` (so calibrate and every pass that calibrates), ``qcompiler compile``, ``run`` and ``analyze``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from qcompiler.calibration import MinMaxObserver, collect
from qcompiler.cli import main
from qcompiler.errors import UnsupportedModelError

CUSTOM = """
<ir_version: 8, opset_import: ["" : 13, "com.example" : 1]>
g (float[N,8] x) => (float[N,4] y) {
  h = MatMul(x, w)
  f = com.example.Frobnicate(h)
  y = Relu(f)
}
"""

BFLOAT16_SQRT = """
<ir_version: 8, opset_import: ["" : 13]>
g (float[N,8] x) => (float[N,4] y) {
  h = MatMul(x, w)
  t = Cast <to = 16> (h)
  s = Sqrt(t)
  b = Cast <to = 1> (s)
  y = Relu(b)
}
"""


def model(text: str) -> onnx.ModelProto:
    proto = onnx.parser.parse_model(text)
    for index, node in enumerate(proto.graph.node):
        node.name = f"n{index}"
    weights = np.random.default_rng(0).standard_normal((8, 4)).astype(np.float32)
    proto.graph.initializer.append(onnx.numpy_helper.from_array(weights, "w"))
    return proto


def feeds(count: int = 2) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(1)
    return [{"x": rng.standard_normal((4, 8)).astype(np.float32)} for _ in range(count)]


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    paths = {}
    for name, text in (("custom", CUSTOM), ("bf16", BFLOAT16_SQRT)):
        paths[name] = tmp_path / f"{name}.onnx"
        onnx.save(model(text), str(paths[name]))
    (tmp_path / "calib").mkdir()
    for index, feed in enumerate(feeds()):
        np.savez(tmp_path / "calib" / f"b{index}.npz", **feed)
    paths["calib"] = tmp_path / "calib"
    paths["x"] = tmp_path / "x.npz"
    np.savez(paths["x"], **feeds(1)[0])
    return paths


@pytest.mark.parametrize("text, message", [
    (CUSTOM, r"^onnxruntime has no kernel for node 'n1' \(com\.example::Frobnicate, opset 1\), and calibration runs "
             r"the model in it: Fatal error: com\.example:Frobnicate\(-1\) is not a registered function/op$"),
    (BFLOAT16_SQRT, r"^onnxruntime has no kernel for node 'n2' \(ai\.onnx::Sqrt, opset 13\), and calibration runs "
                    r"the model in it: Could not find an implementation for Sqrt\(13\) node with name 'n2'$"),
])
def test_collect_names_the_node_onnxruntime_cannot_run(text, message):
    with pytest.raises(UnsupportedModelError, match=message):
        collect(model(text), ["h"], feeds(), lambda name: MinMaxObserver())


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err and "internal error" not in err, err
    lines = [line for line in err.splitlines() if line.startswith("qcompiler: error:")]
    assert len(lines) == 1, err
    return lines[0]


def test_compile_is_a_user_error_naming_the_node(files, tmp_path, capsys):
    out = tmp_path / "o.onnx"
    assert main(["compile", str(files["custom"]), "-o", str(out), "--calib", str(files["calib"]), "-q"]) == 2
    line = _one_error_line(capsys)
    assert "node 'n1' (com.example::Frobnicate, opset 1)" in line and "calibration" in line
    assert not out.exists()


def test_run_is_a_user_error_naming_the_node(files, capsys):
    assert main(["run", str(files["custom"]), "--inputs", str(files["x"])]) == 2
    assert _one_error_line(capsys) == (
        "qcompiler: error: the executor has no kernel for node 'n1' (com.example::Frobnicate, opset 1): neither "
        "qcompiler's kernels nor onnx.reference implement it (Node type 'Frobnicate' from domain 'com.example' is "
        "unknown, known functions: [].)")
    # the executor runs the bfloat16 Sqrt (onnx.reference), onnxruntime does not: the comparison says so
    assert main(["run", str(files["bf16"]), "--inputs", str(files["x"]), "--compare-ort"]) == 2
    assert "onnxruntime has no kernel for node 'n2' (ai.onnx::Sqrt, opset 13), and the comparison" in _one_error_line(capsys)


def test_analyze_is_a_user_error_naming_the_node(files, capsys):
    assert main(["analyze", str(files["custom"]), "--calib", str(files["calib"]), "--target", "x86-vnni", "-q"]) == 2
    assert "node 'n1' (com.example::Frobnicate, opset 1), and the analysis" in _one_error_line(capsys)
