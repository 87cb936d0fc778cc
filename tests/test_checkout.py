"""The README's commands run from the checkout root, where ``./qcompiler`` shadows the installed package.

``python -m qcompiler`` and a script run in the checkout root put the root first on ``sys.path``, so
Python imports the checkout's ``qcompiler/``, whose ``passes`` and ``kernels`` subpackages live in the
top-level ``passes/`` and ``kernels/`` folders (see ``qcompiler/__init__.py``). Each command runs twice:
as the user's environment has it, and with ``python -S`` (site-packages on ``PYTHONPATH`` but no
``.pth`` hooks), where nothing but the checkout can provide ``qcompiler.passes``, which is what a
non-editable ``pip install .`` looks like from the root whatever this environment's install mode.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import sysconfig
from pathlib import Path

import numpy as np
import onnx
import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"

MODEL_TEXT = """
<ir_version: 8, opset_import: ["" : 13]>
agraph (float[N,8] x) => (float[N,4] y) {
  h = MatMul(x, w)
  y = Relu(h)
}
"""


def _python(mode: str) -> tuple[list[str], dict[str, str]]:
    env = dict(os.environ)
    if mode == "plain":
        env.pop("PYTHONPATH", None)
        return [sys.executable], env
    paths = dict.fromkeys(sysconfig.get_paths()[key] for key in ("purelib", "platlib"))
    env["PYTHONPATH"] = os.pathsep.join(paths)
    return [sys.executable, "-S"], env


def _run_in_root(mode: str, *args: str) -> subprocess.CompletedProcess:
    command, env = _python(mode)
    return subprocess.run([*command, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("mode", ["plain", "no-site-hooks"])
def test_python_dash_m_passes_from_the_checkout_root(mode):
    done = _run_in_root(mode, "-m", "qcompiler", "passes")
    assert done.returncode == 0, done.stderr
    assert "fold-constants" in done.stdout and "canonicalize" in done.stdout
    where = _run_in_root(mode, "-c", "import qcompiler, qcompiler.passes, qcompiler.kernels; "
                                     "print(qcompiler.__file__); print(qcompiler.passes.__file__)")
    assert where.returncode == 0, where.stderr
    package, passes = where.stdout.split()
    assert Path(package) == ROOT / "qcompiler" / "__init__.py"  # the checkout shadows the installed package
    assert Path(passes) == ROOT / "passes" / "__init__.py"


@pytest.mark.parametrize("mode", ["plain", "no-site-hooks"])
def test_readme_python_snippet_from_the_checkout_root(mode, tmp_path):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    snippet = next(b for b in blocks if "import qcompiler\n" in b and "qcompiler.compile(" in b)
    rng = np.random.default_rng(0)
    proto = onnx.parser.parse_model(MODEL_TEXT)
    proto.graph.initializer.append(onnx.numpy_helper.from_array(rng.standard_normal((8, 4)).astype(np.float32), "w"))
    onnx.save(proto, str(tmp_path / "model.onnx"))
    (tmp_path / "calib_npz").mkdir()
    for i in range(2):
        np.savez(tmp_path / "calib_npz" / f"batch_{i}.npz", x=rng.standard_normal((4, 8)).astype(np.float32))
    for name in ("model.onnx", "model.canonical.onnx", "model.int8.onnx", "calib_npz/"):
        assert f'"{name}"' in snippet
        snippet = snippet.replace(f'"{name}"', repr(str(tmp_path / name)))  # files outside the checkout
    done = _run_in_root(mode, "-c", snippet)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "model.canonical.onnx").is_file() and (tmp_path / "model.int8.onnx").is_file()


def test_every_package_of_the_checkout_is_installed_by_pip_install():
    """``pip install .`` (non-editable, as CI runs it) installs only the packages pyproject.toml lists: a new
    subpackage missing there imports in an editable install and fails everywhere else."""
    import tomllib

    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    folders = {"qcompiler": ROOT / "qcompiler", "qcompiler.passes": ROOT / "passes",
               "qcompiler.kernels": ROOT / "kernels"}
    found = {prefix + "".join("." + part for part in init.parent.relative_to(folder).parts)
             for prefix, folder in folders.items() for init in folder.rglob("__init__.py")
             if "__pycache__" not in init.parts}
    assert found <= listed, f"add {sorted(found - listed)} to [tool.setuptools] packages in pyproject.toml"
