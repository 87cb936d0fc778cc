"""qcompiler: a graph-level ONNX quantization compiler.

Public API::

    import qcompiler
    model = qcompiler.load("model.onnx")
    qcompiler.PassManager(qcompiler.pipelines.canonicalize())(model)
    qcompiler.save(model, "out.onnx")

    qcompiler.compile("model.onnx", "model.int8.onnx", calib="calib_npz_dir/")
"""

from . import ir, pipelines
from .compiler import compile
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
    "ir",
    "load",
    "pipelines",
    "register_pass",
    "save",
    "verify",
]
