"""Layering: the core (``qcompiler`` without ``qcompiler.passes``, and the kernels) never imports the pass
library. Passes build on the core; the core reaches a pass's effect through the plan or a core helper.

Two modules sit above the library by design and are the only ones allowed to import it: the named
pipelines (lists of the library's passes) and the pass registry, which loads the built-in library the
way it loads plugins.
"""

from __future__ import annotations

import ast
from pathlib import Path

import qcompiler
import qcompiler.kernels
import qcompiler.passes


def _imports(path: Path, package: str) -> list[str]:
    """Absolute names of the modules ``path`` (a module of ``package``) imports, function-level ones too."""
    names = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[:len(parts) - node.level + 1])
                module = f"{base}.{node.module}" if node.module else base
            else:
                module = node.module or ""
            names += [module] + [f"{module}.{alias.name}" for alias in node.names]
    return names


def _core_modules():
    passes_dir = Path(qcompiler.passes.__file__).resolve().parent
    for root in (Path(qcompiler.__file__).resolve().parent, Path(qcompiler.kernels.__file__).resolve().parent):
        for path in root.rglob("*.py"):
            if passes_dir in path.resolve().parents:
                continue
            relative = path.relative_to(root).with_suffix("")
            prefix = "qcompiler" if root.name == "qcompiler" else "qcompiler.kernels"
            parts = [prefix, *relative.parts]
            package = ".".join(parts if path.name == "__init__.py" else parts[:-1])
            yield path, package


ABOVE_THE_LIBRARY = {"qcompiler/pipelines.py", "qcompiler/pass_manager.py"}


def test_core_never_imports_the_pass_library():
    offenders = {}
    modules = list(_core_modules())
    assert len(modules) > 40
    for path, package in modules:
        if "/".join(path.parts[-2:]) in ABOVE_THE_LIBRARY:
            continue
        bad = [name for name in _imports(path, package)
               if name == "qcompiler.passes" or name.startswith("qcompiler.passes.")]
        if bad:
            offenders[str(path)] = sorted(set(bad))
    assert not offenders, offenders


def test_the_layering_check_sees_relative_and_function_level_imports(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from .passes.calibrate import Calibrate\n    import qcompiler.passes\n")
    assert {"qcompiler.passes.calibrate", "qcompiler.passes"} <= set(_imports(module, "qcompiler"))
