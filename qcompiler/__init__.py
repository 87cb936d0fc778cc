"""qcompiler: a graph-level ONNX quantization compiler.

Public API::

    import qcompiler
    model = qcompiler.load("model.onnx")
    qcompiler.PassManager(qcompiler.pipelines.canonicalize())(model)
    qcompiler.save(model, "out.onnx")

    qcompiler.compile("model.onnx", "model.int8.onnx", calib="calib_npz_dir/")

Running from a source checkout
------------------------------
``qcompiler.passes`` and ``qcompiler.kernels`` live in the checkout's top-level ``passes/`` and
``kernels/`` folders (pyproject's ``package-dir`` maps them there when the package is installed, so
that no top-level package named ``passes`` or ``kernels`` clashes with other distributions). When
Python imports ``qcompiler`` from the checkout itself instead of from the installed copy (``python -m
qcompiler`` or a script run in the checkout root, or ``PYTHONPATH=.``: the working directory comes
first on ``sys.path`` and shadows site-packages), this package's folder has no ``passes/`` or
``kernels/`` (an editable install imports it from there too). In that case only, the checkout root is
appended to this package's ``__path__``, so that ``qcompiler.passes`` and ``qcompiler.kernels`` resolve
to the same folders the installed package is built from. A side effect: the checkout's other folders
(``tests``, ``benchmarks``, ``qcompiler`` itself) become importable as ``qcompiler.<name>``; nothing
imports them that way, and ``qcompiler.qcompiler`` would be a second copy of the package. Everything else still comes from ``qcompiler/`` (first on ``__path__``), and an installed
package (which has ``qcompiler/passes/`` and ``qcompiler/kernels/``) is left as it is. Extending
``__path__`` is the standard, lazy way for a package to span folders (what ``pkgutil.extend_path``
does); a ``sys.meta_path`` finder mapping the two names would do the same with more code, and
importing the two folders eagerly here would slow down every command.
"""

from pathlib import Path as _Path


def _source_checkout_root() -> str | None:
    """The checkout root when this package is imported from a source checkout (see the docstring)."""
    here = _Path(__file__).resolve().parent
    if (here / "passes").is_dir() or (here / "kernels").is_dir():
        return None  # an installed package
    root = here.parent
    if not all((root / name / "__init__.py").is_file() for name in ("passes", "kernels")):
        return None
    try:
        ours = 'name = "onnx-qcompiler"' in (root / "pyproject.toml").read_text(encoding="utf-8")
    except OSError:
        return None
    return str(root) if ours else None


if (_root := _source_checkout_root()) is not None and _root not in __path__:
    __path__.append(_root)
del _root, _source_checkout_root, _Path

from . import ir, pipelines  # noqa: E402 - after the __path__ set-up above
from .compiler import compile  # noqa: E402
from .qat import finetune  # noqa: E402 - imports torch only when called
from .errors import PassError, QcompilerError, UserError, VerificationError
from .ir import Model, load, save, verify
from .pass_manager import (Instrument, Pass, PassManager, PassRecord, PassRegistry, PassResult, PipelineResult,
                           default_registry, register_pass)

__version__ = "0.1.0"

__all__ = [
    "Instrument",
    "Model",
    "Pass",
    "PassError",
    "PassManager",
    "PassRecord",
    "PassRegistry",
    "PassResult",
    "PipelineResult",
    "QcompilerError",
    "UserError",
    "VerificationError",
    "compile",
    "default_registry",
    "finetune",
    "ir",
    "load",
    "pipelines",
    "register_pass",
    "save",
    "verify",
]
