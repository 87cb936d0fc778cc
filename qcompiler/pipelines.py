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
resource ``name`` the caller supplies (``qcompiler.options.RESOURCES``: calibration data, the target,
...), never read as a path.

A named pipeline is built from a :class:`~qcompiler.options.CompileOptions` and declares the options it
honours; a TOML pipeline honours the options its ``"@name"`` resources read and those of the named
pipelines it includes. :func:`build` refuses options that were set but are not honoured.
"""

from __future__ import annotations

import dataclasses
import tomllib
import typing
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import PipelineConfigError, UserError
from .ir import Graph
from .options import RESOURCES, CompileOptions
from .pass_manager import Pass, default_registry
from .structure import CONVOLUTIONAL, CUT_OPS, TRANSFORMER, recognize
from .targets import get_target

PipelineFunction = Callable[[CompileOptions], list[Pass]]
Chooser = Callable[[CompileOptions, Graph], tuple[str, str]]


@dataclass(frozen=True)
class NamedPipeline:
    """A registered pipeline: the function that builds its passes, the options it honours and, for a
    model-aware name (``auto``), the chooser that names the pipeline it stands for on a given model."""

    function: PipelineFunction
    honours: frozenset[str]
    choose: Chooser | None = None

    @property
    def summary(self) -> str:
        doc = (self.function.__doc__ or "").strip().splitlines()
        return doc[0] if doc else ""


NAMED_PIPELINES: dict[str, NamedPipeline] = {}

STATIC_INT8_OPTIONS = ("calib", "target", "calibration", "percentile", "per_tensor", "exclude", "objective",
                       "threads", "latency_cache", "sensitivity_threshold", "metric", "int16", "keep_qdq_scales")


def named_pipeline(name: str, honours: tuple[str, ...] = (), choose: Chooser | None = None
                   ) -> Callable[[PipelineFunction], PipelineFunction]:
    """Register ``function(options) -> passes`` under ``name`` (an error if taken), honouring the
    :class:`CompileOptions` fields in ``honours``; ``choose(options, graph) -> (name, why)``, when given,
    names the registered pipeline ``name`` stands for on a model (its own name: ``function``)."""

    def decorate(function: PipelineFunction) -> PipelineFunction:
        if name in NAMED_PIPELINES:
            raise PipelineConfigError(f"pipeline name {name!r} is already registered")
        unknown = set(honours) - set(CompileOptions.__dataclass_fields__)
        if unknown:
            raise PipelineConfigError(f"pipeline {name!r} honours unknown option(s) {sorted(unknown)}")
        NAMED_PIPELINES[name] = NamedPipeline(function, frozenset(honours), choose)
        return function

    return decorate


@named_pipeline("canonicalize")
def canonicalize(options: CompileOptions | None = None) -> list[Pass]:
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


def _latency_guarded(passes: list[Pass], options: CompileOptions) -> list[Pass]:
    """``canonicalize`` + ``passes``, with the float model kept before canonicalization and the whole-model
    ``latency-guard`` after them when the objective is "latency" (dynamic int8, which has no regions): the
    quantized model is measured against the model as given, and a model kept float is given back as it
    came (onnxruntime fuses an exporter's graph at least as well as the canonical one)."""
    from qcompiler import passes as lib

    if options.objective != "latency":
        return canonicalize() + passes
    return [lib.KeepFloatReference()] + canonicalize() + passes + [lib.LatencyGuard(data=options.calib,
                                                                                   threads=options.threads)]


def _placement(options: CompileOptions, float_linear_outputs: bool = False, region: str = "") -> list[Pass]:
    """``latency-placement`` when the objective is "latency" (int8 region by region, where it is faster;
    after calibration and mixed precision, before ``insert-qdq``), nothing for "size"."""
    from qcompiler import passes as lib

    if options.objective != "latency":
        return []
    return [lib.LatencyPlacement(data=options.calib, threads=options.threads, cache=str(options.latency_cache or ""),
                                 exclude=list(options.exclude), per_channel=not options.per_tensor,
                                 float_linear_outputs=float_linear_outputs, region=region)]


def _smoothquant(options: CompileOptions, **smooth: Any) -> list[Pass]:
    """SmoothQuant (none for a QDQ input that keeps its scales: they are of the unsmoothed activations),
    after ``keep-float-reference`` when the objective is latency: when placement keeps no region int8, the
    result is the float model without SmoothQuant's scales."""
    from qcompiler import passes as lib

    if options.keep_qdq_scales:
        return []
    reference = [lib.KeepFloatReference()] if options.objective == "latency" else []
    return reference + [lib.SmoothQuant(data=options.calib, method=options.calibration, explicit=True, **smooth)]


def _source() -> list[Pass]:
    """The passes that bring any source model to float32 without Q/DQ, first in every quantizing pipeline:
    float16/bfloat16 compute upcast (interface kept), a QDQ model's Q/DQ taken out (specs kept in the plan)."""
    from qcompiler import passes as lib

    return [lib.UpcastFloat32(), lib.IngestQDQ()]


def _given_specs(options: CompileOptions) -> list[Pass]:
    """After calibration: a QDQ input's scales instead of the calibrated ones (``keep_qdq_scales``)."""
    from qcompiler import passes as lib

    return [lib.KeepQDQScales()] if options.keep_qdq_scales else []


def _mixed_precision(options: CompileOptions, float_linear_outputs: bool = False,
                     region: str = "") -> tuple[list[Pass], list[Pass]]:
    """(passes before canonicalization, passes after calibration) for the sensitivity threshold (none without)."""
    from qcompiler import passes as lib

    if options.sensitivity_threshold is None:
        return [], []
    return [lib.KeepOriginalModel()], [lib.MixedPrecision(
        data=options.calib, threshold=options.sensitivity_threshold, metric=options.metric,
        exclude=list(options.exclude), per_channel=not options.per_tensor, float_linear_outputs=float_linear_outputs,
        region=region, int16=options.int16)]


def _int8_canonical() -> list[Pass]:
    """After ``canonicalize`` in the static int8 pipelines, two rewrites it leaves out because they change
    the float model in ways only worth it around int8 layers:

    * ``fuse-hardswish`` with ``upgrade``: a hardswish becomes one ``HardSwish`` (opset 14), so
      onnxruntime dequantizes its quantized input once rather than once for each of its two readers;
    * ``fold-batchnorm`` with ``scalars``: a Mul/Add/Sub/Div by a single constant after a Conv (PP-OCR's
      learnable affine blocks) folds into it. ``canonicalize`` keeps them: folding moves a float32
      rounding into the weights, beyond its budget for an unchanged float model. In a model quantized to
      int8 that rounding is far below the quantization error, while an unfolded affine is a float island
      between two int8 layers, with a dequantize/quantize round trip around it.

    ``benchmarks/placement.py`` measures the models."""
    from qcompiler import passes as lib

    return [lib.FuseHardSwish(upgrade=True), lib.FoldBatchNorm(scalars=True)]


def _calibrate(options: CompileOptions) -> Pass:
    from qcompiler import passes as lib

    return lib.Calibrate(data=options.calib, method=options.calibration, percentile=options.percentile)


@named_pipeline("int8", honours=STATIC_INT8_OPTIONS)
def int8(options: CompileOptions) -> list[Pass]:
    """Static int8 post-training quantization for a target: canonicalize, assign, calibrate, QDQ, fold.

    With ``objective="latency"`` each region stays int8 only where onnxruntime runs it faster than in
    float on this machine (``latency-placement``); ``objective="size"`` always keeps int8. A ``sensitivity_threshold``
    keeps in float the layers that do not fit that output-error budget (``mixed-precision``).
    """
    from qcompiler import passes as lib

    first, mixed = _mixed_precision(options)
    return _source() + first + canonicalize() + _int8_canonical() + [
        lib.AssignPrecision(target=get_target(options.target).name, exclude=list(options.exclude),
                            per_channel=not options.per_tensor),
        _calibrate(options),
        *_given_specs(options),
        *mixed,
        *_placement(options),
        lib.InsertQDQ(),
        lib.FoldQuantizedWeights(),
        lib.CheckKernels(data=options.calib),
    ]


@named_pipeline("int8-transformer", honours=tuple(o for o in STATIC_INT8_OPTIONS if o != "percentile"))
def int8_transformer(options: CompileOptions) -> list[Pass]:
    """Static int8 for transformers: SmoothQuant, float linear-layer outputs, searched weight and activation ranges.

    Every linear layer (MatMul/Gemm with a constant weight) and attention MatMul runs in int8; their
    outputs, and so the bias/residual Adds, LayerNorms and GELUs after them, stay float
    (``float_linear_outputs``). ``calibration`` is the range method SmoothQuant's alpha search assumes;
    the activation ranges themselves are chosen by ``calibrate-search`` on held-out calibration feeds.
    """
    from qcompiler import passes as lib

    name = get_target(options.target).name
    first, mixed = _mixed_precision(options, float_linear_outputs=True)
    return _source() + first + canonicalize() + _int8_canonical() + [
        *_smoothquant(options, target=name),
        lib.AssignPrecision(target=name, exclude=list(options.exclude), per_channel=not options.per_tensor,
                            float_linear_outputs=True),
        lib.SearchWeightRanges(),
        lib.CalibrateSearch(data=options.calib),
        *_given_specs(options),
        *mixed,
        *_placement(options, float_linear_outputs=True),
        lib.InsertQDQ(),
        lib.FoldQuantizedWeights(),
    ]


STATIC_ONLY_OPTIONS = ("calibration", "percentile", "latency_cache", "sensitivity_threshold", "metric", "int16",
                       "keep_qdq_scales")
"""The options of ``auto`` that only its static int8 form takes (``dynamic`` honours the others)."""


def choose_auto(options: CompileOptions, graph: Graph) -> tuple[str, str]:
    """What ``auto`` stands for on ``graph``, and why: ``dynamic`` for a transformer-only model, itself otherwise.

    A model made of transformer blocks alone (``qcompiler.structure`` finds attention or LayerNorms, and
    there is no convolution) gets dynamic int8: its linear layers' inputs carry a few outlier channels
    whose per-tensor static ranges round most values to zero, while run-time ranges follow each input
    (``benchmarks/results/transformer_default.md`` measures both on MiniLM-L6 and all-mpnet-base-v2), and
    it compiles in seconds; with calibration data the layers whose inputs are outlier-dominated stay float
    (``dynamic``). An option that only static int8 takes (a range method, a sensitivity threshold, given
    Q/DQ scales) keeps the static form, as do models with convolutions (one static treatment per region).
    """
    transformer = [r for r in recognize(graph) if r.treatment == TRANSFORMER]
    if not transformer:
        return "auto", ""
    convolutions = sum(node.op_type in CUT_OPS for node in graph)
    if convolutions:
        return "auto", (f"static int8 by region: {convolutions} convolution(s) beside the transformer blocks "
                        "(dynamic int8 is for MatMul/Gemm only)")
    static = sorted(options.changed() & set(STATIC_ONLY_OPTIONS))
    if static:
        asked = ", ".join(CompileOptions.describe(o) for o in static)
        return "auto", f"static int8: {asked} given, which only static int8 takes"
    blocks = "; ".join(r.reason for r in transformer)
    return "dynamic", (f"dynamic int8: transformer blocks only ({blocks}), no convolution; activation ranges "
                       "taken at run time")


@named_pipeline("auto", honours=STATIC_INT8_OPTIONS, choose=choose_auto)
def auto(options: CompileOptions) -> list[Pass]:
    """The default, chosen by model: ``dynamic`` if transformer-only, else static int8 region by region.

    :func:`choose_auto` picks ``dynamic`` for transformer-only models. For the others (and as a TOML
    ``include``): ``int8-transformer``'s treatment in the transformer blocks, ``int8``'s everywhere else.

    ``recognize-structure`` finds the regions (attention, LayerNorms; ``qcompiler.structure``) and the
    region-aware passes act on them: in transformer regions SmoothQuant, MSE weight clipping, float
    linear-layer outputs and the activation range method searched on held-out feeds; elsewhere the
    ``calibration`` method and the kernels check of ``int8`` (run when a layer there is quantized). A
    model without transformer structure is compiled exactly as by ``int8``, one without convolutional
    parts as by ``int8-transformer``.
    """
    from qcompiler import passes as lib

    name = get_target(options.target).name
    first, mixed = _mixed_precision(options, float_linear_outputs=True, region=TRANSFORMER)
    return _source() + first + canonicalize() + _int8_canonical() + [
        lib.RecognizeStructure(),
        *_smoothquant(options, target=name, region=TRANSFORMER),
        lib.AssignPrecision(target=name, exclude=list(options.exclude), per_channel=not options.per_tensor,
                            float_linear_outputs=True, region=TRANSFORMER),
        lib.SearchWeightRanges(region=TRANSFORMER),
        lib.CalibrateSearch(data=options.calib, region=TRANSFORMER, method=options.calibration,
                            percentile=options.percentile),
        *_given_specs(options),
        *mixed,
        *_placement(options, float_linear_outputs=True, region=TRANSFORMER),
        lib.InsertQDQ(),
        lib.FoldQuantizedWeights(),
        lib.CheckKernels(data=options.calib, region=CONVOLUTIONAL),
    ]


EMBEDDING_BLOCK = 128
"""Elements per 8-bit block along an embedding row in ``dynamic``: a float scale per 128 weights adds 3 %."""


@named_pipeline("dynamic", honours=("calib", "target", "per_tensor", "exclude", "objective", "threads"))
def dynamic(options: CompileOptions) -> list[Pass]:
    """Dynamic int8, no calibration data: 8-bit MatMul/Gemm weights, their inputs quantized at run time.

    Gemms become MatMul + Add (``gemm-to-matmul``); every linear layer gets per-channel 8-bit weights
    (uint8 where the target's u8 x s8 kernels saturate: ``Target.dynamic_weight_scheme``) and its input
    a ``DynamicQuantizeLinear`` (uint8, the range of every run's tensor); ``lower-dynamic-matmul`` writes
    them as ``MatMulInteger -> Cast -> Mul``, which onnxruntime fuses into ``DynamicQuantizeMatMul`` and
    ``MatMulIntegerToFloat`` (``benchmarks/dynamic_minilm.py`` compares the forms). Conv layers are
    refused unless excluded (``--exclude Conv``). Embedding tables are stored in 8 bits, blocks of
    :data:`EMBEDDING_BLOCK` along a row, as ``GatherBlockQuantized``, which dequantizes only the rows it
    gathers (``--exclude Gather`` keeps them float). ``calib`` is optional: given, the layers whose typical
    token's output SQNR under dynamic int8 is below 25 dB stay float (``qcompiler.dynamic_screen``: outlier
    tokens set the run's range) and the latency guard measures on its first feed
    (``objective="latency"``); without it nothing is measured and every linear layer is quantized.
    """
    from qcompiler import passes as lib

    passes = [lib.GemmToMatMul(),
              lib.AssignDynamic(target=get_target(options.target).name, exclude=list(options.exclude),
                                per_channel=not options.per_tensor, data=options.calib),
              lib.InsertQDQ(),
              lib.FoldQuantizedWeights(),
              lib.LowerDynamicMatMul(),
              lib.WeightRTN(bits=8, block_size=EMBEDDING_BLOCK, linear=False, exclude=list(options.exclude)),
              lib.LowerMatMulNBits()]
    return _source() + (_latency_guarded(passes, options) if options.calib is not None else canonicalize() + passes)


def canonicalize_keeping_batchnorm_stats() -> list[Pass]:
    """``canonicalize`` with ``keep-batchnorm-stats`` just before BatchNorm folding (for HBA and analytic BC)."""
    from qcompiler import passes as lib

    passes = canonicalize()
    position = next(i for i, p in enumerate(passes) if isinstance(p, lib.FoldBatchNorm))
    return passes[:position] + [lib.KeepBatchNormStats()] + passes[position:]


@named_pipeline("int8-dfq", honours=("calib", "target", "calibration", "percentile", "per_tensor", "exclude",
                                      "objective", "threads", "latency_cache"))
def int8_dfq(options: CompileOptions) -> list[Pass]:
    """``int8`` with data-free quantization's weight fixes (Nagel et al. 2019): ReLU6 -> ReLU, cross-layer
    equalization, high-bias absorption, and empirical bias correction after calibration.

    For per-tensor weights on depthwise models (``benchmarks/accuracy_passes.py`` measures it). ReLU6 ->
    ReLU changes the float model where pre-activations exceed 6.
    """
    from qcompiler import passes as lib

    return _source() + canonicalize_keeping_batchnorm_stats() + [
        lib.ReplaceReLU6(),
        lib.CrossLayerEqualization(),
        lib.HighBiasAbsorption(),
        lib.AssignPrecision(target=get_target(options.target).name, exclude=list(options.exclude),
                            per_channel=not options.per_tensor),
        _calibrate(options),
        lib.BiasCorrection(data=options.calib),
        *_placement(options),
        lib.InsertQDQ(),
        lib.FoldQuantizedWeights(),
    ]


@named_pipeline("w4a8", honours=("calib", "target", "calibration", "percentile", "exclude", "objective", "threads",
                                  "latency_cache"))
def w4a8(options: CompileOptions) -> list[Pass]:
    """4-bit per-channel weights (stored in int8, MSE-clipped), 8-bit activations, rounding learned by AdaRound.

    The start ``qcompiler finetune`` trains from, so the graph stays ``canonicalize``'s, without the static
    int8 pipelines' scalar-affine folding and HardSwish (:func:`_int8_canonical`): fine-tuning from a start
    with them scored lower (``benchmarks/results/finetune_ocr_rec_w4a8.md``)."""
    from qcompiler import passes as lib

    return _source() + canonicalize() + [
        lib.AssignPrecision(target=get_target(options.target).name, exclude=list(options.exclude)),
        lib.WeightBits(bits=4),
        _calibrate(options),
        lib.AdaRound(data=options.calib),
        *_placement(options),
        lib.InsertQDQ(),
        lib.FoldQuantizedWeights(),
    ]


WEIGHT_ONLY_OPTIONS = ("calib", "exclude", "weight_bits", "block_size", "symmetric", "weight_method", "weight_format",
                       "float_zero_points", "int8_activations")


@named_pipeline("weight-only", honours=WEIGHT_ONLY_OPTIONS)
def weight_only(options: CompileOptions) -> list[Pass]:
    """Weight-only low-bit quantization (LLMs, transformers): 2/4/8-bit weight blocks, float activations.

    Every MatMul/Gemm with a constant weight and every embedding Gather gets ``weight_bits`` weights in blocks
    of ``block_size`` along the input dimension (0: per output channel), symmetric or not, chosen by
    ``weight_method``: ``rtn`` (round to nearest) or ``hqq`` without data, ``awq`` or ``gptq`` with ``calib``.
    ``weight_format`` ``matmulnbits`` writes the linear layers (a tied output projection included) as
    onnxruntime's MatMulNBits and the embedding tables as its GatherBlockQuantized; ``qdq`` writes every weight
    as a blocked DequantizeLinear of an integer initializer (opset 21; 25 for 2 bits). ``float_zero_points``
    (asymmetric, ``matmulnbits``): a float zero point per block, as HQQ fits them. ``int8_activations``:
    MatMulNBits with ``accuracy_level`` 4 (activations quantized to int8 per block at run time).
    """
    from qcompiler import passes as lib

    if options.weight_method in ("awq", "gptq") and options.calib is None:
        raise UserError(f"weight_method {options.weight_method!r} needs calibration data (--calib DIR of .npz "
                        "feeds); rtn and hqq need none")
    method = {"rtn": [], "hqq": [lib.WeightHQQ()], "awq": [lib.WeightAWQ(data=options.calib)],
              "gptq": [lib.WeightGPTQ(data=options.calib)]}[options.weight_method]
    lowering = ([lib.LowerMatMulNBits(accuracy_level=4 if options.int8_activations else 0)]
                if options.weight_format == "matmulnbits" else [])
    return canonicalize() + [
        lib.UpgradeOpset(target=25 if options.weight_bits == 2 else 21),
        lib.WeightRTN(bits=options.weight_bits, block_size=options.block_size, symmetric=options.symmetric,
                      float_zero_point=options.float_zero_points, exclude=list(options.exclude)),
        *method,
        *lowering,
        lib.InsertQDQ(),
        lib.FoldQuantizedWeights(),
    ]


@dataclass
class Pipeline:
    """A resolved pipeline: its passes, the verification mode it asks for and the options it honours."""

    passes: list[Pass]
    verify: str = "each"
    source: str = ""
    honours: frozenset[str] = frozenset()
    chosen: str = ""  # for a model-aware name: the pipeline it stood for on the model
    reason: str = ""  # ... and why


def resolve(spec: str, options: CompileOptions | None = None, graph: Graph | None = None) -> Pipeline:
    """The pipeline ``spec`` (a named pipeline or a TOML file) for ``options``, and for the model
    ``graph`` when given (a model-aware name such as ``auto`` then chooses); options that were set but
    that the pipeline does not honour are a user error."""
    options = options or CompileOptions()
    if spec in NAMED_PIPELINES:
        named = NAMED_PIPELINES[spec]
        chosen, reason = named.choose(options, graph) if named.choose and graph is not None else (spec, "")
        pipeline = Pipeline(NAMED_PIPELINES[chosen].function(options), source=spec, honours=named.honours,
                            chosen=chosen, reason=reason)
    else:
        path = Path(spec)
        if path.suffix != ".toml" and not path.exists():
            known = ", ".join(sorted(NAMED_PIPELINES))
            raise PipelineConfigError(f"unknown pipeline {spec!r}: not a named pipeline ({known}) nor a .toml file")
        pipeline = load_pipeline(path, options)
    ignored = sorted(options.changed() - pipeline.honours)
    if ignored:
        what = ", ".join(CompileOptions.describe(o) for o in ignored)
        takes = ", ".join(sorted(pipeline.honours)) or "no options"
        raise UserError(f"pipeline {spec!r} does not take {what}; it takes {takes}")
    return pipeline


def load_pipeline(path: str | Path, options: CompileOptions | None = None,
                  resources: dict[str, Any] | None = None) -> Pipeline:
    """Read a TOML pipeline file (format in the module docstring), built for ``options``; ``resources``
    adds ``"@name"`` values of the caller's own (Python callers) to those of the options."""
    path = Path(path)
    options = options or CompileOptions()
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
    honoured: set[str] = set()
    resources = {**options.resources(), **(resources or {})}
    for position, entry in enumerate(table["passes"], 1):
        where = f"{path}: pass #{position}"
        if "include" in entry:
            if set(entry) != {"include"} or entry["include"] not in NAMED_PIPELINES:
                raise PipelineConfigError(f"{where}: 'include' takes one of {sorted(NAMED_PIPELINES)} and nothing else")
            named = NAMED_PIPELINES[entry["include"]]
            passes += named.function(options)
            honoured |= named.honours
            continue
        if "name" not in entry:
            raise PipelineConfigError(f"{where}: missing 'name' (or 'include')")
        fields = {k: v for k, v in entry.items() if k != "name"}
        honoured |= {RESOURCES[v[1:]] for v in fields.values()
                     if isinstance(v, str) and v.startswith("@") and v[1:] in RESOURCES}
        try:
            passes.append(build_pass(entry["name"], fields, resources))
        except PipelineConfigError as exc:
            raise PipelineConfigError(f"{where}: {exc}") from None
    verify = table.get("verify", "each")
    if verify not in ("each", "end", "off"):
        raise PipelineConfigError(f"{path}: verify must be 'each', 'end' or 'off', not {verify!r}")
    return Pipeline(passes, verify, source=str(path), honours=frozenset(honoured))


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
            _check_type(name, key, hints.get(key), value)
        arguments[key] = value
    return cls(**arguments)


def _check_type(name: str, key: str, expected: Any, value: Any) -> None:
    """A TOML value against a pass field's annotation: simple types, and lists of them."""
    if typing.get_origin(expected) is list:
        (item,) = typing.get_args(expected) or (Any,)
        if not isinstance(value, list):
            raise PipelineConfigError(f"pass {name!r} field {key!r} must be a list, got {type(value).__name__} {value!r}")
        for element in value:
            _check_type(name, key, item, element)
        return
    allowed = _SIMPLE_TYPES.get(expected)
    if allowed and (not isinstance(value, allowed) or (expected is not bool and isinstance(value, bool))):
        raise PipelineConfigError(
            f"pass {name!r} field {key!r} must be {expected.__name__}, got {type(value).__name__} {value!r}")
