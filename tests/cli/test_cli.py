"""The qcompiler command line: subcommands, the README's custom-pass example, and every bad input.

Each bad-input case checks the one-line message, exit status 2, no traceback, an unchanged input file
and no output left behind.
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnx
import pytest

from qcompiler import ir
from qcompiler.cli import main
from qcompiler.ir import external_data
from qcompiler.ir.testing import run_onnxruntime

README = Path(__file__).resolve().parents[2] / "README.md"

MODEL_TEXT = """
<ir_version: 8, opset_import: ["" : 11], producer_name: "test">
agraph (float[N,4] x) => (float[N,4] y) {
  w = Constant <value = float[4] {1.0, 2.0, 3.0, 4.0}> ()
  a = Mul(x, w)
  b = Identity(a)
  c = Cast <to = 1> (b)
  y = Relu(c)
}
"""


@pytest.fixture
def model_path(tmp_path: Path) -> Path:
    proto = onnx.parser.parse_model(MODEL_TEXT)
    proto.metadata_props.add(key="character", value="abc\ndef")
    path = tmp_path / "model.onnx"
    onnx.save(proto, str(path))
    return path


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def run_cli(*argv: str) -> tuple[int, str, str]:
    """Run ``python -m qcompiler`` in a subprocess: (status, stdout, stderr)."""
    done = subprocess.run([sys.executable, "-m", "qcompiler", *argv], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": os.environ.get("PYTHONPATH", "")}, timeout=120)
    return done.returncode, done.stdout, done.stderr


def test_show_prints_summary_and_ir(model_path, capsys):
    assert main(["show", str(model_path)]) == 0
    out = capsys.readouterr().out
    assert "inputs:\n  x: float[N,4]" in out
    assert "ops: Constant 1, Mul 1, Identity 1, Cast 1, Relu 1" in out
    assert "metadata: character" in out
    assert "= Relu(%c)" in out


def test_passes_lists_registered_passes_and_pipelines(capsys):
    assert main(["passes"]) == 0
    out = capsys.readouterr().out
    for name in ("fold-batchnorm", "fold-constants", "upgrade-opset", "canonicalize"):
        assert name in out


def test_optimize_writes_canonical_model_and_keeps_input(model_path, tmp_path, capsys):
    before = digest(model_path)
    out_path = tmp_path / "out.onnx"
    dump = tmp_path / "dump"
    status = main(["optimize", str(model_path), "-o", str(out_path), "--time-passes", "--dump-ir", str(dump), "--check"])
    assert status == 0
    assert digest(model_path) == before
    captured = capsys.readouterr()
    assert "[10/10] infer-shapes" in captured.err and "fold-constants" in captured.err
    table = captured.err[captured.err.index("pass "):].splitlines()
    assert table[0].split() == ["pass", "seconds", "share", "peak", "MB", "modified"]
    if sys.platform == "linux":  # the peak resident memory of each pass, in MB: at least the interpreter's
        assert all(float(line.split()[3]) > 10 for line in table[1:-1])
    result = ir.load(out_path)
    assert result.opset == 13
    assert [n.op_type for n in result.graph] == ["Mul", "Cast", "Relu"]
    assert result.metadata == {"character": "abc\ndef"}
    feeds = {"x": np.arange(8, dtype=np.float32).reshape(2, 4) - 4}
    np.testing.assert_array_equal(run_onnxruntime(result, feeds)[0], run_onnxruntime(ir.load(model_path), feeds)[0])
    assert sorted(p.name for p in dump.iterdir())[:2] == ["00_input.txt", "01_upgrade-opset.txt"]


def test_python_dash_m_entry_point(model_path):
    status, out, err = run_cli("show", str(model_path), "--summary")
    assert status == 0, err
    assert "opsets: ai.onnx 11" in out


def _expect_user_error(capsys, argv, pattern, *, inputs=(), outputs=()):
    digests = {p: digest(p) for p in inputs}
    status = main(argv)
    err = capsys.readouterr().err
    assert status == 2
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("qcompiler: error:")]
    assert len(lines) == 1, err
    assert re.search(pattern, lines[0]), lines[0]
    for path, value in digests.items():
        assert digest(path) == value
    for path in outputs:
        assert not Path(path).exists()
    return lines[0]


def test_missing_model_file(tmp_path, capsys):
    missing = tmp_path / "nope.onnx"
    _expect_user_error(capsys, ["optimize", str(missing), "-o", str(tmp_path / "o.onnx")],
                       r"nope\.onnx: no such file", outputs=[tmp_path / "o.onnx"])


def test_not_an_onnx_file(tmp_path, capsys):
    bogus = tmp_path / "notes.onnx"
    bogus.write_text("this is not a model\n" * 10)
    _expect_user_error(capsys, ["optimize", str(bogus), "-o", str(tmp_path / "o.onnx")],
                       r"notes\.onnx: not (a readable )?(an )?ONNX model", inputs=[bogus], outputs=[tmp_path / "o.onnx"])


def test_truncated_model_file(model_path, tmp_path, capsys):
    truncated = tmp_path / "truncated.onnx"
    data = model_path.read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    _expect_user_error(capsys, ["show", str(truncated)], r"truncated\.onnx: not", inputs=[truncated])


def test_unknown_named_pipeline(model_path, tmp_path, capsys):
    _expect_user_error(capsys, ["optimize", str(model_path), "-o", str(tmp_path / "o.onnx"), "--pipeline", "fastest"],
                       r"unknown pipeline 'fastest'", inputs=[model_path], outputs=[tmp_path / "o.onnx"])


def test_unknown_pass_in_pipeline_file(model_path, tmp_path, capsys):
    toml = tmp_path / "p.toml"
    toml.write_text('[pipeline]\n[[pipeline.passes]]\nname = "fold-everything"\n')
    line = _expect_user_error(capsys, ["optimize", str(model_path), "-o", str(tmp_path / "o.onnx"), "--pipeline", str(toml)],
                              r"p\.toml: pass #1: unknown pass 'fold-everything'", inputs=[model_path, toml],
                              outputs=[tmp_path / "o.onnx"])
    assert "fold-batchnorm" in line  # the message lists what exists


@pytest.mark.parametrize("content, pattern", [
    ("[pipeline\n", r"invalid TOML"),
    ("[other]\n", r"expected a \[pipeline\] table"),
    ('[pipeline]\n[[pipeline.passes]]\nname = "upgrade-opset"\ntarget = "13"\n', r"field 'target' must be int"),
    ('[pipeline]\n[[pipeline.passes]]\nname = "upgrade-opset"\nlevel = 3\n', r"has no field 'level'; valid fields: target"),
    ('[pipeline]\nverify = "sometimes"\n[[pipeline.passes]]\nname = "infer-shapes"\n', r"verify must be"),
])
def test_bad_pipeline_file(model_path, tmp_path, capsys, content, pattern):
    toml = tmp_path / "bad.toml"
    toml.write_text(content)
    _expect_user_error(capsys, ["optimize", str(model_path), "-o", str(tmp_path / "o.onnx"), "--pipeline", str(toml)],
                       pattern, inputs=[model_path], outputs=[tmp_path / "o.onnx"])


def test_missing_pipeline_file(model_path, tmp_path, capsys):
    _expect_user_error(capsys, ["optimize", str(model_path), "-o", str(tmp_path / "o.onnx"),
                                "--pipeline", str(tmp_path / "absent.toml")],
                       r"absent\.toml: no such pipeline file", inputs=[model_path])


def test_int16_without_a_threshold_is_one_line(model_path, tmp_path, capsys):
    _expect_user_error(capsys, ["compile", str(model_path), "-o", str(tmp_path / "o.onnx"), "--int16"],
                       r"int16 .* needs a sensitivity threshold", inputs=[model_path], outputs=[tmp_path / "o.onnx"])


def test_unwritable_output(model_path, tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    target = blocker / "out.onnx"  # its "directory" is a regular file
    _expect_user_error(capsys, ["optimize", str(model_path), "-o", str(target)], r"out\.onnx: directory .* does not exist",
                       inputs=[model_path, blocker])


def test_output_is_a_directory(model_path, tmp_path, capsys):
    _expect_user_error(capsys, ["optimize", str(model_path), "-o", str(tmp_path)], r"is a directory", inputs=[model_path])


def test_output_equal_to_input_needs_overwrite(model_path, capsys):
    _expect_user_error(capsys, ["optimize", str(model_path), "-o", str(model_path)],
                       r"is the input model.*--overwrite", inputs=[model_path])
    assert main(["optimize", str(model_path), "-o", str(model_path), "--overwrite", "-q"]) == 0
    assert ir.load(model_path).opset == 13


def test_unknown_plugin_module(model_path, tmp_path, capsys):
    _expect_user_error(capsys, ["optimize", str(model_path), "-o", str(tmp_path / "o.onnx"), "--plugin", "no_such_plugin_xyz"],
                       r"plugin module 'no_such_plugin_xyz' not found", inputs=[model_path], outputs=[tmp_path / "o.onnx"])


def test_failed_write_leaves_no_partial_file(model_path, tmp_path, capsys, monkeypatch):
    out_path = tmp_path / "o.onnx"

    def broken_fsync(descriptor):  # the file is written, then the disk turns out to be full
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(external_data.os, "fsync", broken_fsync)
    _expect_user_error(capsys, ["optimize", str(model_path), "-o", str(out_path), "-q"], r"No space left on device",
                       inputs=[model_path], outputs=[out_path])
    assert [p.name for p in tmp_path.iterdir()] == ["model.onnx"]


def test_dump_ir_into_an_existing_file_or_under_one(model_path, tmp_path, capsys):
    afile = tmp_path / "afile"
    afile.write_text("keep me\n")
    out = tmp_path / "o.onnx"
    _expect_user_error(capsys, ["optimize", str(model_path), "-o", str(out), "--dump-ir", str(afile), "-q"],
                       r"^qcompiler: error: --dump-ir .*afile: is a file, expected a directory \(new, or holding only "
                       r"earlier IR dumps\)$", inputs=[model_path, afile], outputs=[out])
    _expect_user_error(capsys, ["optimize", str(model_path), "-o", str(out), "--dump-ir", str(afile / "sub"), "-q"],
                       r"^qcompiler: error: --dump-ir .*afile/sub: cannot create or clear it \(Not a directory\)$",
                       inputs=[model_path, afile], outputs=[out])
    (tmp_path / "dump").mkdir()
    (tmp_path / "dump" / "notes.md").write_text("mine\n")
    _expect_user_error(capsys, ["optimize", str(model_path), "-o", str(out), "--dump-ir", str(tmp_path / "dump")],
                       r"not an empty directory of IR dumps", outputs=[out])


def test_subprocess_user_error_has_no_traceback(tmp_path):
    status, _, err = run_cli("show", str(tmp_path / "missing.onnx"))
    assert status == 2
    assert err.strip().splitlines() == [f"qcompiler: error: {tmp_path / 'missing.onnx'}: no such file"]


# -- the README's custom pass example ------------------------------------------------------------


def _readme_block(language: str, marker: str) -> str:
    blocks = re.findall(rf"```{language}\n(.*?)```", README.read_text(), flags=re.S)
    matching = [b for b in blocks if marker in b]
    assert matching, f"README has no {language} block containing {marker!r}"
    return matching[0]


@pytest.fixture
def readme_plugin(tmp_path: Path) -> Path:
    plugin_dir = tmp_path / "plugins"
    plugin_dir.mkdir()
    (plugin_dir / "my_passes.py").write_text(_readme_block("python", "# my_passes.py"))
    (plugin_dir / "my_pipeline.toml").write_text(_readme_block("toml", "# my_pipeline.toml"))
    return plugin_dir


CAST_MODEL = """
<ir_version: 8, opset_import: ["" : 13]>
agraph (float[2,3] x) => (float[2,3] y) {
  c = Cast <to = 1> (x)
  y = Relu(c)
}
"""


def test_readme_custom_pass_runs_from_toml_and_plugin(readme_plugin, tmp_path):
    model = tmp_path / "cast.onnx"
    onnx.save(onnx.parser.parse_model(CAST_MODEL), str(model))
    out = tmp_path / "out.onnx"
    env = {**os.environ, "PYTHONPATH": str(readme_plugin)}
    done = subprocess.run([sys.executable, "-m", "qcompiler", "optimize", str(model), "-o", str(out),
                           "--plugin", "my_passes", "--pipeline", str(readme_plugin / "my_pipeline.toml")],
                          capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "remove-no-op-cast ... " in done.stderr and "changed" in done.stderr.split("remove-no-op-cast")[1]
    assert [n.op_type for n in ir.load(out).graph] == ["Relu"]
    listing = subprocess.run([sys.executable, "-m", "qcompiler", "passes", "--plugin", "my_passes"],
                             capture_output=True, text=True, env=env, timeout=120)
    assert "remove-no-op-cast" in listing.stdout and "Remove Cast nodes whose input" in listing.stdout


def test_custom_pass_through_entry_point(readme_plugin, tmp_path):
    dist = readme_plugin / "my_passes-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: my-passes\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[qcompiler.passes]\nmy_passes = my_passes\n")
    env = {**os.environ, "PYTHONPATH": str(readme_plugin)}
    listing = subprocess.run([sys.executable, "-m", "qcompiler", "passes"], capture_output=True, text=True,
                             env=env, timeout=120)
    assert listing.returncode == 0, listing.stderr
    assert "remove-no-op-cast" in listing.stdout


def test_registering_a_taken_name_is_an_error():
    from qcompiler import Pass, PassRegistry
    from qcompiler.errors import PipelineConfigError

    registry = PassRegistry()

    @registry.register("twice")
    class First(Pass):
        """First."""

    with pytest.raises(PipelineConfigError, match="'twice' is already registered"):
        @registry.register("twice")
        class Second(Pass):
            """Second."""


def test_toml_include_and_resources(tmp_path):
    from qcompiler.pipelines import load_pipeline

    toml = tmp_path / "p.toml"
    toml.write_text(textwrap.dedent("""
        [pipeline]
        verify = "end"
        [[pipeline.passes]]
        include = "canonicalize"
        [[pipeline.passes]]
        name = "upgrade-opset"
        target = "@opset"
    """))
    pipeline = load_pipeline(toml, resources={"opset": 17})
    assert pipeline.verify == "end"
    assert [p.display_name() for p in pipeline.passes][-2:] == ["infer-shapes", "upgrade-opset"]
    assert pipeline.passes[-1].target == 17


def test_readme_quantization_scheme_runs_from_toml_and_plugin(tmp_path):
    plugin_dir = tmp_path / "plugins"
    plugin_dir.mkdir()
    (plugin_dir / "blocked_scheme.py").write_text(_readme_block("python", "# blocked_scheme.py"))
    (plugin_dir / "blocked_pipeline.toml").write_text(_readme_block("toml", "# blocked_pipeline.toml"))
    proto = onnx.parser.parse_model("""
    <ir_version: 8, opset_import: ["" : 13]>
    g (float[2,64] x) => (float[2,16] y) { y = MatMul(x, w) }""")
    rng = np.random.default_rng(2)
    proto.graph.initializer.append(onnx.numpy_helper.from_array(rng.standard_normal((64, 16)).astype(np.float32), "w"))
    model, out = tmp_path / "mm.onnx", tmp_path / "out.onnx"
    onnx.save(proto, str(model))
    done = subprocess.run([sys.executable, "-m", "qcompiler", "optimize", str(model), "-o", str(out), "--plugin",
                           "blocked_scheme", "--pipeline", str(plugin_dir / "blocked_pipeline.toml")],
                          capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(plugin_dir)}, timeout=120)
    assert done.returncode == 0, done.stderr
    written = onnx.load(str(out))
    dequantize = [n for n in written.graph.node if n.op_type == "DequantizeLinear"]
    assert [{a.name: a.i for a in n.attribute}.get("block_size") for n in dequantize] == [32]
    x = rng.standard_normal((2, 64)).astype(np.float32)
    want, got = run_onnxruntime(proto, {"x": x})[0], run_onnxruntime(written, {"x": x})[0]
    assert 0 < np.sum((got - want) ** 2) < 1e-3 * np.sum(want ** 2)
