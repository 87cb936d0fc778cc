"""Pipelines: explicit lists of passes, named in Python or written in a TOML file.

Named pipelines are plain functions returning a list of passes (as TVM's ``relax/pipeline.py``);
``qcompiler.pipelines.canonicalize()`` is the default of ``qcompiler optimize``. A TOML pipeline
file lists passes by registry name with their fields::

    [pipeline]
    verify = "each"            # each | end | off

    [[pipeline.passes]]
    include = "canonicalize"   # splice in a named pipeline

    [[pipeline.passes]]
    name = "upgrade-opset"
    target = 17

Field names and types are checked against the pass dataclass; a value ``"@name"`` is replaced by the
resource ``name`` the caller supplies (e.g. calibration data), never read as a path.
"""

from __future__ import annotations

import dataclasses
import inspect
import tomllib
import typing
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import PipelineConfigError
from .pass_manager import Pass, default_registry

NAMED_PIPELINES: dict[str, Callable[[], list[Pass]]] = {}


def named_pipeline(name: str) -> Callable[[Callable[[], list[Pass]]], Callable[[], list[Pass]]]:
    """Register a function returning a pass list under ``name`` (an error if taken)."""

    def decorate(function: Callable[[], list[Pass]]) -> Callable[[], list[Pass]]:
        if name in NAMED_PIPELINES:
            raise PipelineConfigError(f"pipeline name {name!r} is already registered")
        NAMED_PIPELINES[name] = function
        return function

    return decorate


@named_pipeline("canonicalize")
def canonicalize() -> list[Pass]:
    """Bring any FP32 model into the form the quantization passes expect, without changing its outputs."""
    from qcompiler import passes as lib

    return [
        lib.UpgradeOpset(target=13),
        lib.ConstantToInitializer(),
        lib.RemoveIdentity(),
        lib.RemoveDropout(),
        lib.SumToAdd(),
        lib.FoldConstants(),
        lib.FoldBatchNorm(),
        lib.FuseHardSwish(),
        lib.EliminateDeadNodes(),
        lib.InferShapes(),
    ]


def _latency_guarded(passes: list[Pass], calibration: Any, objective: str, threads: int,
                     prefix: list[Pass] | None = None) -> list[Pass]:
    """``prefix`` (default: ``canonicalize``) + ``passes``, with the float model kept before them and
    ``latency-guard`` after them when ``objective`` is "latency" (int8 kept only where it is faster)."""
    from qcompiler import passes as lib

    prefix = canonicalize() if prefix is None else prefix
    if objective != "latency":
        return prefix + passes
    return prefix + [lib.KeepFloatReference()] + passes + [lib.LatencyGuard(data=calibration, threads=threads)]


def _mixed_precision(threshold: float | None, calibration: Any, target: str, exclude: tuple[str, ...],
                     per_tensor: bool, metric: Any, float_linear_outputs: bool = False) -> tuple[list[Pass], list[Pass]]:
    """(passes before canonicalization, passes after calibration) for a sensitivity threshold (None: none)."""
    from qcompiler import passes as lib

    if threshold is None:
        return [], []
    return [lib.KeepOriginalModel()], [lib.MixedPrecision(
        data=calibration, threshold=threshold, metric=metric, target=target, exclude=list(exclude),
        per_channel=not per_tensor, float_linear_outputs=float_linear_outputs)]


@named_pipeline("int8")
def int8(calibration: Any = None, target: str = "auto", method: str = "mse", percentile: float = 99.999,
         per_tensor: bool = False, exclude: tuple[str, ...] = (), objective: str = "latency", threads: int = 0,
         sensitivity_threshold: float | None = None, metric: Any = None) -> list[Pass]:
    """Static int8 post-training quantization for a target: canonicalize, assign, calibrate, QDQ, fold.

    With ``objective="latency"`` the result stays int8 only where onnxruntime runs it faster than the
    float model (``latency-guard``); ``objective="size"`` always keeps int8. A ``sensitivity_threshold``
    keeps in float the layers that do not fit that output-error budget (``mixed-precision``).
    """
    from qcompiler import passes as lib
    from qcompiler.targets import get_target

    name = get_target(target).name
    first, mixed = _mixed_precision(sensitivity_threshold, calibration, name, exclude, per_tensor, metric)
    return first + _latency_guarded([
        lib.AssignPrecision(target=name, exclude=list(exclude), per_channel=not per_tensor),
        lib.Calibrate(data=calibration, method=method, percentile=percentile, target=name),
        *mixed,
        lib.InsertQDQ(),
        lib.FoldQuantizedWeights(),
        lib.CheckKernels(data=calibration),
    ], calibration, objective, threads)


@named_pipeline("int8-transformer")
def int8_transformer(calibration: Any = None, target: str = "auto", method: str = "mse", per_tensor: bool = False,
                     exclude: tuple[str, ...] = (), objective: str = "latency", threads: int = 0,
                     sensitivity_threshold: float | None = None, metric: Any = None) -> list[Pass]:
    """Static int8 for transformers: SmoothQuant, float linear-layer outputs, searched weight and activation ranges.

    Every linear layer (MatMul/Gemm with a constant weight) and attention MatMul runs in int8; their
    outputs, and so the bias/residual Adds, LayerNorms and GELUs after them, stay float
    (``float_linear_outputs``). ``method`` is the range method SmoothQuant's alpha search assumes; the
    activation ranges themselves are chosen by ``calibrate-search`` on held-out calibration feeds.
    """
    from qcompiler import passes as lib
    from qcompiler.targets import get_target

    name = get_target(target).name
    first, mixed = _mixed_precision(sensitivity_threshold, calibration, name, exclude, per_tensor, metric,
                                    float_linear_outputs=True)
    return first + _latency_guarded([
        lib.SmoothQuant(data=calibration, method=method, target=name, explicit=True),
        lib.AssignPrecision(target=name, exclude=list(exclude), per_channel=not per_tensor, float_linear_outputs=True),
        lib.SearchWeightRanges(),
        lib.CalibrateSearch(data=calibration, target=name),
        *mixed,
        lib.InsertQDQ(),
        lib.FoldQuantizedWeights(),
    ], calibration, objective, threads)


def canonicalize_keeping_batchnorm_stats() -> list[Pass]:
    """``canonicalize`` with ``keep-batchnorm-stats`` just before BatchNorm folding (for HBA and analytic BC)."""
    from qcompiler import passes as lib

    passes = canonicalize()
    position = next(i for i, p in enumerate(passes) if isinstance(p, lib.FoldBatchNorm))
    return passes[:position] + [lib.KeepBatchNormStats()] + passes[position:]


@named_pipeline("int8-dfq")
def int8_dfq(calibration: Any = None, target: str = "auto", method: str = "mse", percentile: float = 99.999,
             per_tensor: bool = False, exclude: tuple[str, ...] = (), objective: str = "latency",
             threads: int = 0) -> list[Pass]:
    """``int8`` with data-free quantization's weight fixes (Nagel et al. 2019): ReLU6 -> ReLU, cross-layer
    equalization, high-bias absorption, and empirical bias correction after calibration.

    For per-tensor weights on depthwise models (MobileNetV2 digits: per-tensor 65.0 % -> 99.8 %, equal to
    per-channel; ``benchmarks/accuracy_passes.py``). ReLU6 -> ReLU changes the float model where
    pre-activations exceed 6.
    """
    from qcompiler import passes as lib
    from qcompiler.targets import get_target

    name = get_target(target).name
    return _latency_guarded([
        lib.ReplaceReLU6(),
        lib.CrossLayerEqualization(),
        lib.HighBiasAbsorption(),
        lib.AssignPrecision(target=name, exclude=list(exclude), per_channel=not per_tensor),
        lib.Calibrate(data=calibration, method=method, percentile=percentile, target=name),
        lib.BiasCorrection(data=calibration),
        lib.InsertQDQ(),
        lib.FoldQuantizedWeights(),
    ], calibration, objective, threads, prefix=canonicalize_keeping_batchnorm_stats())


@named_pipeline("w4a8")
def w4a8(calibration: Any = None, target: str = "auto", method: str = "mse", percentile: float = 99.999,
         exclude: tuple[str, ...] = (), objective: str = "latency", threads: int = 0) -> list[Pass]:
    """4-bit per-channel weights (stored in int8, MSE-clipped), 8-bit activations, rounding learned by AdaRound."""
    from qcompiler import passes as lib
    from qcompiler.targets import get_target

    name = get_target(target).name
    return _latency_guarded([
        lib.AssignPrecision(target=name, exclude=list(exclude)),
        lib.WeightBits(bits=4),
        lib.Calibrate(data=calibration, method=method, percentile=percentile, target=name),
        lib.AdaRound(data=calibration),
        lib.InsertQDQ(),
        lib.FoldQuantizedWeights(),
    ], calibration, objective, threads)


@dataclass
class Pipeline:
    """A resolved pipeline: its passes and the verification mode it asks for."""

    passes: list[Pass]
    verify: str = "each"
    source: str = ""


def call_named(name: str, resources: dict[str, Any]) -> list[Pass]:
    """Build a named pipeline, passing it the resources its function takes by name."""
    function = NAMED_PIPELINES[name]
    accepted = inspect.signature(function).parameters
    return function(**{k: v for k, v in resources.items() if k in accepted})


def resolve(spec: str, resources: dict[str, Any] | None = None) -> Pipeline:
    """A named pipeline, or a TOML pipeline file when ``spec`` is a path to one."""
    if spec in NAMED_PIPELINES:
        return Pipeline(call_named(spec, resources or {}), source=spec)
    path = Path(spec)
    if path.suffix == ".toml" or path.exists():
        return load_pipeline(path, resources)
    known = ", ".join(sorted(NAMED_PIPELINES))
    raise PipelineConfigError(f"unknown pipeline {spec!r}: not a named pipeline ({known}) nor a .toml file")


def load_pipeline(path: str | Path, resources: dict[str, Any] | None = None) -> Pipeline:
    """Read a TOML pipeline file (format in the module docstring)."""
    path = Path(path)
    try:
        document = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise PipelineConfigError(f"{path}: no such pipeline file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise PipelineConfigError(f"{path}: cannot read pipeline file ({exc})") from None
    except tomllib.TOMLDecodeError as exc:
        raise PipelineConfigError(f"{path}: invalid TOML ({exc})") from None
    table = document.get("pipeline")
    if not isinstance(table, dict) or not isinstance(table.get("passes"), list) or not table["passes"]:
        raise PipelineConfigError(f"{path}: expected a [pipeline] table with at least one [[pipeline.passes]] entry")
    unknown = set(table) - {"passes", "verify"}
    if unknown:
        raise PipelineConfigError(f"{path}: unknown [pipeline] key(s) {sorted(unknown)}; valid: passes, verify")
    passes: list[Pass] = []
    for position, entry in enumerate(table["passes"], 1):
        where = f"{path}: pass #{position}"
        if "include" in entry:
            if set(entry) != {"include"} or entry["include"] not in NAMED_PIPELINES:
                raise PipelineConfigError(f"{where}: 'include' takes one of {sorted(NAMED_PIPELINES)} and nothing else")
            passes += call_named(entry["include"], resources or {})
            continue
        if "name" not in entry:
            raise PipelineConfigError(f"{where}: missing 'name' (or 'include')")
        fields = {k: v for k, v in entry.items() if k != "name"}
        try:
            passes.append(build_pass(entry["name"], fields, resources or {}))
        except PipelineConfigError as exc:
            raise PipelineConfigError(f"{where}: {exc}") from None
    verify = table.get("verify", "each")
    if verify not in ("each", "end", "off"):
        raise PipelineConfigError(f"{path}: verify must be 'each', 'end' or 'off', not {verify!r}")
    return Pipeline(passes, verify, source=str(path))


_SIMPLE_TYPES = {int: (int,), float: (int, float), str: (str,), bool: (bool,)}


def build_pass(name: str, fields: dict[str, Any], resources: dict[str, Any]) -> Pass:
    """Instantiate the registered pass ``name`` with ``fields``, checking names and simple types."""
    cls = default_registry.get(name)
    declared = {f.name: f for f in dataclasses.fields(cls) if f.init}
    hints = typing.get_type_hints(cls)
    arguments = {}
    for key, value in fields.items():
        if key not in declared:
            valid = ", ".join(sorted(declared)) or "(none)"
            raise PipelineConfigError(f"pass {name!r} has no field {key!r}; valid fields: {valid}")
        if isinstance(value, str) and value.startswith("@"):
            if value[1:] not in resources:
                raise PipelineConfigError(f"pass {name!r} field {key!r}: no resource named {value!r} was supplied")
            value = resources[value[1:]]
        else:
            expected = hints.get(key)
            allowed = _SIMPLE_TYPES.get(expected)
            if allowed and (not isinstance(value, allowed) or (expected is not bool and isinstance(value, bool))):
                raise PipelineConfigError(
                    f"pass {name!r} field {key!r} must be {expected.__name__}, got {type(value).__name__} {value!r}")
        arguments[key] = value
    return cls(**arguments)
