"""The exceptions qcompiler raises.

Two families:

* :class:`UserError` and its subclasses describe a mistake in what the user gave us (a missing file,
  a bad pipeline, wrong calibration data). The CLI prints their message on one line and exits with
  status 2, without a traceback. Messages name the file, input or pass involved and what was expected.
* :class:`InternalError` and its subclasses describe a broken invariant inside qcompiler or inside a
  pass (a bug). They keep their traceback.
"""

from __future__ import annotations


class QcompilerError(Exception):
    """Base class of every exception qcompiler raises on purpose."""


class UserError(QcompilerError):
    """A problem with the user's input: printed as one line, exit status 2."""


class ModelLoadError(UserError):
    """A model file is missing, unreadable, not ONNX, truncated or unsupported."""


class ModelSaveError(UserError):
    """An output cannot be written (unwritable directory, refused overwrite)."""


class PipelineConfigError(UserError):
    """A pipeline file or pass name is invalid (unknown pass, bad field, bad TOML)."""


class PipelineOrderError(PipelineConfigError):
    """A pass needs a fact (the quantization plan, activation ranges, ...) that no pass before it provides."""


class UnsupportedModelError(UserError):
    """The model is valid ONNX but uses something a pass cannot handle (e.g. an opset it cannot upgrade)."""


class InternalError(QcompilerError):
    """A broken invariant: a bug in qcompiler or in a pass."""


class VerificationError(InternalError):
    """``verify()`` found IR invariants broken; ``problems`` lists every one of them."""

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        shown = "\n  ".join(self.problems[:20])
        more = f"\n  ... and {len(self.problems) - 20} more" if len(self.problems) > 20 else ""
        super().__init__(f"IR verification failed ({len(self.problems)} problem(s)):\n  {shown}{more}")


class PreconditionError(InternalError):
    """A pass's ``requires()`` rejected the model."""


class PostconditionError(InternalError):
    """A pass's ``ensures()`` found the model not in the promised state."""


class PassError(QcompilerError):
    """A pass failed inside a PassManager; the message names the pass and the ones run before it.

    A :class:`UserError` raised inside a pass is not wrapped: it keeps its one-line message.
    """
