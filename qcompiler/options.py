"""``CompileOptions``: the one description of what a compile can be asked for.

Every option is a field with its command-line flag and help text in the field's metadata, so the
``qcompiler compile`` arguments (:func:`add_arguments`, :meth:`CompileOptions.from_args`), the Python API
(``qcompiler.compile(..., **options)``) and the TOML pipelines' ``"@name"`` resources
(:meth:`CompileOptions.resources`) are all built from this class. Values are checked when the object is
made; a pipeline declares the options it honours, and one that was set but is not honoured is an
error (``qcompiler.pipelines.build``), never silently dropped.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from .calibration import METHODS
from .calibration.observers import valid_percentile
from .errors import UserError

OBJECTIVES = ("latency", "size")
WEIGHT_METHODS = ("rtn", "hqq", "awq", "gptq")
WEIGHT_FORMATS = ("matmulnbits", "qdq")
WEIGHT_BITS = (2, 4, 8)


def _option(default: Any, flag: str, help: str, **argparse_options: Any) -> Any:  # noqa: A002 - argparse's word
    return field(default=default, metadata={"flag": flag, "help": help, **argparse_options})


@dataclass(frozen=True)
class CompileOptions:
    """What to compile for; see each field's help (``qcompiler compile --help`` prints the same text)."""

    calib: Any = _option(None, "--calib", "calibration data: a directory of .npz files (keys = input names) or one "
                         ".npz; optional for schemes that need none", metavar="DATA")
    target: str = _option("auto", "--target", "auto (this CPU), x86-avx2, x86-vnni or arm64")
    calibration: str = _option("mse", "--calibration", "activation range method (default mse: the most accurate on "
                               "the realmodels set)", choices=METHODS)
    percentile: float = _option(99.999, "--percentile", "for --calibration percentile, in (50, 100]", type=float)
    per_tensor: bool = _option(False, "--per-tensor", "per-tensor instead of per-channel weights",
                               action="store_true")
    exclude: tuple[str, ...] = _option((), "--exclude", "keep nodes (name, shell pattern) or an op type in float; "
                                       "repeatable", action="append", metavar="NAME|OPTYPE")
    objective: str = _option("latency", "--objective", "latency: int8 region by region, where onnxruntime runs "
                             "it faster on this machine (default); size: int8 everywhere allowed", choices=OBJECTIVES)
    threads: int = _option(0, "--threads", "onnxruntime threads the latency is measured with (default 0: "
                           "onnxruntime's default, one per physical core, as a deployment gets it)", type=int,
                           metavar="N")
    latency_cache: str | None = _option(
        None, "--latency-cache", "file of the latency measurements (by CPU, ISA, onnxruntime version, threads); "
        "measured regions are reused from it, so the same file gives the same output (default: "
        "$XDG_CACHE_HOME/qcompiler/latency-cache.json)", metavar="FILE")
    sensitivity_threshold: float | None = _option(
        None, "--sensitivity-threshold", "keep in float the layers whose int8 error does not fit T: the mean over "
        "outputs of ||y_int8 - y_fp32||^2 / ||y_fp32||^2 on calibration feeds (0: outputs identical to the input "
        "model; start with 0.005, an output SQNR of 23 dB); default: all int8", type=float, metavar="T")
    int16: bool | None = _option(
        None, "--int16", "with --sensitivity-threshold: a layer int8 cannot keep may take 16-bit activations "
        "(A16W8: int8 weights, so a smaller file than float) before it stays float; on CPU targets such a layer "
        "computes in float, so it is not faster (default: only where the target runs 16 bits fast)",
        action="store_const", const=True)
    metric: Any = field(default=None, metadata={"help": "with sensitivity_threshold, an error callback "
                                                        "metric(reference, outputs) -> float (Python only)"})
    keep_qdq_scales: bool = _option(False, "--keep-qdq-scales", "a model that already has Q/DQ nodes (QAT, another "
                                    "quantizer) keeps their scales where qcompiler quantizes too, instead of "
                                    "calibrated ones (default: re-quantize from the float weights it recovers)",
                                    action="store_true")
    weight_bits: int = _option(4, "--bits", "weight-only: bits per weight, 2, 4 or 8 (default 4)", type=int,
                               choices=WEIGHT_BITS)
    block_size: int = _option(128, "--block-size", "weight-only: weights per block along the input dimension, a "
                              "power of two >= 16 (default 128); 0: one scale per output channel", type=int,
                              metavar="B")
    symmetric: bool = _option(True, "--asymmetric", "weight-only: asymmetric blocks (a zero point per block) "
                              "instead of symmetric ones", action="store_false")
    weight_method: str = _option("rtn", "--method", "weight-only algorithm: rtn, hqq (both need no data), awq or "
                                 "gptq (need --calib); default rtn", choices=WEIGHT_METHODS)
    weight_format: str = _option("matmulnbits", "--weight-format", "weight-only output: matmulnbits "
                                 "(onnxruntime's com.microsoft::MatMulNBits, default) or qdq (standard opset-21 "
                                 "blocked DequantizeLinear + MatMul)", choices=WEIGHT_FORMATS)
    float_zero_points: bool = _option(False, "--float-zero-points", "weight-only, asymmetric, matmulnbits: a float "
                                      "zero point per block (MatMulNBits takes them; HQQ fits them best) instead of "
                                      "an integer one; embedding tables keep integer ones", action="store_true")
    int8_activations: bool = _option(False, "--int8-activations", "weight-only, matmulnbits: MatMulNBits quantizes "
                                     "its activations to int8 per block (accuracy_level 4: onnxruntime's integer "
                                     "kernels, faster at decode) instead of computing in float", action="store_true")

    def __post_init__(self) -> None:
        exclude = (self.exclude,) if isinstance(self.exclude, str) else tuple(self.exclude or ())
        if not all(isinstance(p, str) for p in exclude):
            raise UserError(f"exclude takes node names, shell patterns or op types (strings), not {self.exclude!r}")
        object.__setattr__(self, "exclude", exclude)
        if self.calibration not in METHODS:
            raise UserError(f"unknown calibration method {self.calibration!r}; choose one of {', '.join(METHODS)}")
        if self.objective not in OBJECTIVES:
            raise UserError(f"objective must be 'latency' or 'size', not {self.objective!r}")
        if not valid_percentile(self.percentile):
            raise UserError(f"percentile must be in (50, 100], not {self.percentile!r}")
        if not isinstance(self.per_tensor, bool):
            raise UserError(f"per_tensor must be True or False, not {self.per_tensor!r}")
        if self.latency_cache is not None and not isinstance(self.latency_cache, (str, os.PathLike)):
            raise UserError(f"latency_cache must be a file path, not {self.latency_cache!r}")
        if not isinstance(self.keep_qdq_scales, bool):
            raise UserError(f"keep_qdq_scales must be True or False, not {self.keep_qdq_scales!r}")
        if not isinstance(self.threads, int) or isinstance(self.threads, bool) or self.threads < 0:
            raise UserError(f"threads must be 0 (onnxruntime's default) or a positive count, not {self.threads!r}")
        threshold = self.sensitivity_threshold
        if threshold is not None and not (isinstance(threshold, (int, float)) and not isinstance(threshold, bool)
                                          and math.isfinite(threshold) and threshold >= 0):
            raise UserError(f"sensitivity threshold must be a number >= 0, not {threshold!r}")
        if self.metric is not None and threshold is None:
            raise UserError("a metric is only used with a sensitivity threshold")
        if self.int16 is not None and not isinstance(self.int16, bool):
            raise UserError(f"int16 must be True or False, not {self.int16!r}")
        if self.int16 and threshold is None:
            raise UserError("int16 (16-bit activations where int8 is too lossy) needs a sensitivity threshold: "
                            "give --sensitivity-threshold T")
        self._check_weight_only()

    def _check_weight_only(self) -> None:
        if self.weight_bits not in WEIGHT_BITS or isinstance(self.weight_bits, bool):
            raise UserError(f"weight_bits must be one of {WEIGHT_BITS} (onnxruntime's MatMulNBits runs 2, 4 and 8 "
                            f"bits), not {self.weight_bits!r}")
        size = self.block_size
        if isinstance(size, bool) or not isinstance(size, int) or (size and (size < 16 or size & (size - 1))):
            raise UserError(f"block_size must be 0 (per output channel) or a power of two >= 16, not {size!r}")
        if not isinstance(self.symmetric, bool):
            raise UserError(f"symmetric must be True or False, not {self.symmetric!r}")
        if self.weight_method not in WEIGHT_METHODS:
            raise UserError(f"unknown weight_method {self.weight_method!r}; choose one of {', '.join(WEIGHT_METHODS)}")
        if self.weight_format not in WEIGHT_FORMATS:
            raise UserError(f"unknown weight_format {self.weight_format!r}; choose one of {', '.join(WEIGHT_FORMATS)}")
        if self.float_zero_points and (self.symmetric or self.weight_format != "matmulnbits"):
            raise UserError("float_zero_points: a float zero point is asymmetric (--asymmetric) and only MatMulNBits "
                            "takes it (weight_format 'matmulnbits')")
        if self.int8_activations and self.weight_format != "matmulnbits":
            raise UserError("int8_activations is MatMulNBits' accuracy_level 4: it needs weight_format 'matmulnbits'")

    def changed(self) -> set[str]:
        """The fields set to something other than their default."""
        return {f.name for f in dataclasses.fields(self) if getattr(self, f.name) != f.default}

    def resources(self) -> dict[str, Any]:
        """The ``"@name"`` values a TOML pipeline may use, by name (see :data:`RESOURCES`)."""
        return {name: getattr(self, option) for name, option in RESOURCES.items()}

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> CompileOptions:
        """The options of a parsed command line built with :func:`add_arguments`."""
        given = {f.name: getattr(args, f.name, None) for f in dataclasses.fields(cls) if "flag" in f.metadata}
        return cls(**{name: value for name, value in given.items() if value is not None})

    @staticmethod
    def describe(option: str) -> str:
        """``name (--flag)`` for messages."""
        flag = CompileOptions.__dataclass_fields__[option].metadata.get("flag")
        return f"{option} ({flag})" if flag else option


RESOURCES = {"calibration": "calib", "target": "target", "method": "calibration", "percentile": "percentile",
             "per_tensor": "per_tensor", "exclude": "exclude", "objective": "objective", "threads": "threads",
             "latency_cache": "latency_cache",
             "sensitivity_threshold": "sensitivity_threshold", "metric": "metric", "int16": "int16",
             "bits": "weight_bits",
             "block_size": "block_size", "symmetric": "symmetric"}
"""TOML resource names (``data = "@calibration"``) -> the option they read."""


def add_arguments(parser: argparse.ArgumentParser, only: Iterable[str] | None = None) -> None:
    """Add the command-line flags of :class:`CompileOptions` (or of the fields in ``only``) to ``parser``;
    defaults are left to the dataclass, so an option not given is not 'changed'."""
    for f in dataclasses.fields(CompileOptions):
        if "flag" not in f.metadata or (only is not None and f.name not in only):
            continue
        extra = {k: v for k, v in f.metadata.items() if k not in ("flag", "help")}
        default = [] if extra.get("action") == "append" else (False if extra.get("action") == "store_true" else None)
        # store_false (--asymmetric): None when not given, so the dataclass default stays unchanged
        parser.add_argument(f.metadata["flag"], dest=f.name, help=f.metadata["help"], default=default, **extra)
