"""``qcompiler analyze``: the debugging flow of a quantization engineer, on one model.

The steps of the white paper's debugging flow (Nagel et al. 2021, "A White Paper on Neural Network
Quantization", section 3.7; AIMET's ``QuantAnalyzer.analyze`` implements them), each a question with
a number for an answer. The model is calibrated by the chosen pipeline (``int8`` or
``int8-transformer``, run up to its ``mixed-precision`` step, so everything measured here is what
``qcompiler compile --sensitivity-threshold`` would decide on: same feeds, same ranges, same
configurations; :class:`~qcompiler.sensitivity.Evaluator`). Output errors are measured against the
original FP32 model on the pass's ``samples`` calibration feeds, simulated in onnxruntime
(``qcompiler.sensitivity``: ``nsr``, SQNR, cosine).

1. **Float sanity**: the original model runs in onnxruntime with finite outputs, and the pipeline's
   model with every quantizer bypassed (all layers float) reproduces it: SQNR at least
   ``SANITY_MIN_SQNR_DB`` (float rounding of folded BatchNorms or SmoothQuant scales stays far above
   it; a pipeline bug does not). It catches pipeline bugs, not quantization error; the float graph is
   also measured after every pass, which names the first pass that changed it.
2. **Weights-only vs activations-only**: the all-int8 configuration with only its weight quantizers
   (activation specs dropped, absorbed activations kept as ops) and with only its activation
   quantizers (float weights and biases), to split the error between them (AIMET
   ``check_model_sensitivity_to_quantization``).
3. **Per layer**: each layer quantized alone and kept float alone
   (:func:`~qcompiler.sensitivity.layer_sensitivity`; AIMET ``perform_per_layer_analysis_by_enabling
   / disabling_quantizers``), the accuracy/size path of ``mixed-precision`` and a recommended
   threshold (:func:`recommend`).
4. **Target kernels vs simulation, per layer** (:mod:`qcompiler.executor.layerwise`): the fused integer
   kernels of the target's numerics profile, fed the simulation's inputs, on the all-int8 model or on a
   given quantized model; flagged layers name the cause (int16 pair saturation) and the fix. ORT's
   ``qdq_loss_debug`` compares float and fake-quant tensors only and misses this.
5. **Distributions** (:mod:`qcompiler.distributions`): histogram, range, clipping and utilisation of
   every quantized tensor.

:func:`analyze` returns everything as one JSON-able dict; :func:`format_text` prints it;
``qcompiler.report_html`` renders it as a self-contained HTML page.
"""

from __future__ import annotations

import dataclasses
import glob
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from . import ir
from .calibration.collect import unsupported_operator
from .errors import UserError
from .options import CompileOptions
from .pass_manager import Instrument, PassManager
from .lowering import lower
from .pipelines import NAMED_PIPELINES, resolve
from .progress import advance, bar, bars
from .qdq_input import recover_float
from .sensitivity import Evaluator, error_measures, layer_sensitivity, name_nodes, nsr_db, run_session
from .summary import align_columns, summarize

SANITY_MIN_SQNR_DB = 60.0
"""Float sanity passes when the bypassed model's output SQNR against the original is at least this."""

ACCURACY_FLOOR = 0.005
"""The output error the recommendation allows (nsr; 23 dB SQNR, cosine about 0.9975): the
``--sensitivity-threshold`` commercial compilers recommend starting from."""

SWEEP = (0.0, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1)
"""Thresholds whose configurations the report lists next to the recommended one."""

KERNEL_SAMPLES = 2
"""Calibration feeds the kernel check runs (the executor is slower than onnxruntime)."""


def calibration_source(spec: str) -> Any:
    """``--calib``: a directory of ``.npz`` files or one ``.npz`` (as ``compile`` takes it), or a glob
    pattern of ``.npz`` files (sorted; read lazily, one feed per file)."""
    from .executor.run import load_feeds

    if Path(spec).exists() or not glob.has_magic(spec):
        return spec
    files = sorted(glob.glob(spec))
    if not files:
        raise UserError(f"{spec}: no calibration file matches this pattern")
    return lambda: (load_feeds(path) for path in files)


def _finite(value: float) -> float | str:
    return value if math.isfinite(value) else str(value)


def jsonable(data: Any) -> Any:
    """``data`` with non-finite floats as strings (``"inf"``; JSON has no infinity) and numpy scalars as numbers."""
    if isinstance(data, dict):
        return {k: jsonable(v) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [jsonable(v) for v in data]
    if isinstance(data, (float, np.floating)):
        return _finite(float(data))
    if isinstance(data, np.integer):
        return int(data)
    return data


class FloatDrift(Instrument):
    """After every pass that modifies the model, the output error of its float graph (specs are only
    decisions until ``insert-qdq``) against the original model: which pass changed the float model."""

    def __init__(self, feeds: list[dict], reference: list):
        self.feeds, self.reference, self.steps = feeds, reference, []

    def after(self, pass_: Any, model: ir.Model, record: Any) -> None:
        if record.modified:
            errors = error_measures(self.reference, run_session(ir.to_proto(model), self.feeds))
            self.steps.append({"pass": record.name, "sqnr_db": errors["sqnr_db"], "nsr": errors["nsr"]})


def load_float(model_path: str) -> tuple[ir.Model, dict | None]:
    """The model at ``model_path``; a QDQ model as the float model it quantizes, its specs in the plan
    (:func:`qcompiler.qdq_input.recover_float`), with what was recovered (None for a float model)."""
    model = ir.load(model_path)
    recovered = recover_float(model)
    return model, (recovered if recovered["weights"] or recovered["activations"] else None)


def _calibrated(model_path: str, pipeline_name: str, options: CompileOptions, metric: Any
                ) -> tuple[ir.Model, Any, list[dict]]:
    """The model after the pipeline's passes before ``mixed-precision``, that pass (configured with
    ``metric``), and the float drift after each of those passes (:class:`FloatDrift`). A QDQ model is
    analyzed as the float model it quantizes, in its own configuration (its scales kept)."""
    model, recovered = load_float(model_path)
    if recovered is not None:
        model.plan.reports["ingest_qdq"] = recovered
        options = dataclasses.replace(options, keep_qdq_scales=True)
    named = NAMED_PIPELINES.get(pipeline_name)
    if named is not None and "sensitivity_threshold" not in named.honours:
        position, pipeline = None, None
    else:
        pipeline = resolve(pipeline_name, dataclasses.replace(options, objective="size", metric=metric,
                                                              sensitivity_threshold=ACCURACY_FLOOR))
        position = next((i for i, p in enumerate(pipeline.passes) if p.name == "mixed-precision"), None)
    if position is None:
        raise UserError(f"pipeline {pipeline_name!r} has no mixed-precision step to analyze; use int8 or "
                        f"int8-transformer")
    mixed = pipeline.passes[position]
    feeds = mixed.feeds(model)
    proto = ir.to_proto(model)
    try:
        reference = run_session(proto, feeds)
    except Exception as exc:  # onnxruntime's exceptions have no common public base class
        error = unsupported_operator(proto, exc, use="the analysis runs the model in it")
        if error is None:
            raise
        raise error from None
    drift = FloatDrift(feeds, reference)
    PassManager(pipeline.passes[:position], instruments=[drift], verify="end")(model)
    name_nodes(model)
    return model, mixed, drift.steps


class _Counting:
    """``evaluator``, with each ``evaluate`` and ``measure`` call moving a progress bar one step (the
    analysis's loops run in ``qcompiler.sensitivity`` and ``mixed_precision``, which know no bars)."""

    def __init__(self, evaluator: Evaluator, progress_bar: Any):
        self._evaluator, self._bar = evaluator, progress_bar

    def evaluate(self, float_layers: Any) -> Any:
        result = self._evaluator.evaluate(float_layers)
        self._bar.update(1)
        return result

    def measure(self, model: ir.Model) -> Any:
        result = self._evaluator.measure(model)
        self._bar.update(1)
        return result

    def evaluate_all(self, configurations: Any) -> Any:
        results = self._evaluator.evaluate_all(configurations)
        self._bar.update(len(results))
        return results

    def __getattr__(self, name: str) -> Any:
        return getattr(self._evaluator, name)


def per_layer_evaluations(layers: int) -> int:
    """``evaluate`` calls of the per-layer step for ``layers`` layers: ``explore`` (each layer quantized
    alone, then the path of ``layers + 1`` configurations) and ``layer_sensitivity`` (each layer
    quantized alone and kept float alone). Configurations already evaluated come from the cache."""
    return layers + (layers + 1) + 2 * layers


def sanity(evaluator: Evaluator, layers: list[str], drift: list[dict]) -> dict[str, Any]:
    """Step 1 (see the module docstring), with the first pass whose float graph falls below
    ``SANITY_MIN_SQNR_DB`` (``drift``: :class:`FloatDrift`'s steps)."""
    finite = all(np.all(np.isfinite(a)) for outputs in evaluator.reference for a in outputs
                 if np.issubdtype(np.asarray(a).dtype, np.floating))
    bypassed = evaluator.evaluate(layers)
    sqnr = bypassed.errors["sqnr_db"]
    return {"feeds": len(evaluator.feeds), "outputs": len(evaluator.reference[0]), "finite": bool(finite),
            "bypassed": bypassed.errors, "bypassed_quantized_nodes": len(bypassed.quantized_nodes),
            "min_sqnr_db": SANITY_MIN_SQNR_DB, "passes": drift,
            "first_drift": next((d["pass"] for d in drift if d["sqnr_db"] < SANITY_MIN_SQNR_DB), None),
            "passed": bool(finite and sqnr >= SANITY_MIN_SQNR_DB and not bypassed.quantized_nodes)}


def split_error(evaluator: Evaluator, keep: str) -> dict[str, float]:
    """The all-int8 configuration's error with only its ``weights`` or only its ``activations`` quantized."""
    model = evaluator.build(())
    for value in model.graph.values():
        if (value.const is not None) != (keep == "weights"):
            value.quant = None
    if keep == "weights":
        model.plan.absorbed.clear()  # its activation is not quantized: the Relu/Clip runs as an op
    return evaluator.measure(model)[0]


def _ceil_2(value: float) -> float:
    """``value`` rounded up to two significant digits."""
    if value <= 0:
        return 0.0
    step = 10.0 ** (math.floor(math.log10(value)) - 1)
    return float(f"{math.ceil(value / step - 1e-9) * step:.2g}")


def recommend(search: Callable[[float], Any], all_int8: dict[str, float]) -> dict[str, Any]:
    """The recommended ``--sensitivity-threshold``.

    Rule: the smallest configuration ``mixed-precision`` finds within the accuracy floor
    (``ACCURACY_FLOOR``, nsr 0.005 = 23 dB output SQNR), and as threshold that configuration's own
    error rounded up to two significant digits (never past the floor, which has two): compiling with it gives that
    configuration (the search never depends on the threshold), and the number says what is
    spent. When no configuration with int8 layers is within the floor, the floor itself is
    recommended (it keeps the model float) and the per-layer table says what to fix first.
    ``search(T)`` is ``mixed-precision``'s choice at ``T`` (None: the original model).
    """
    chosen = search(ACCURACY_FLOOR)
    if chosen is None:
        return {"threshold": ACCURACY_FLOOR, "floor": ACCURACY_FLOOR, "configuration": None,
                "reason": (f"no configuration with int8 layers reaches {nsr_db(ACCURACY_FLOOR):.0f} dB output SQNR on the "
                           f"calibration feeds (all int8: {all_int8['sqnr_db']:.1f} dB), so this threshold keeps the "
                           f"model float; fix the most sensitive layers first (per-layer table), or allow more "
                           f"error with a larger threshold")}
    threshold = _ceil_2(chosen.errors["nsr"])
    final = search(threshold)
    return {"threshold": threshold, "floor": ACCURACY_FLOOR, "configuration": final,
            "reason": (f"the smallest model mixed-precision finds with output SQNR >= {nsr_db(ACCURACY_FLOOR):.0f} dB "
                       f"(nsr <= {ACCURACY_FLOOR}, cosine about {1 - ACCURACY_FLOOR / 2:.4f}: the recommended start "
                       f"of commercial compilers) has nsr {chosen.errors['nsr']:.3g} "
                       f"({chosen.errors['sqnr_db']:.1f} dB, cosine {chosen.errors['cosine']:.4f}); the threshold "
                       f"is that error rounded up, so compiling with it reproduces that configuration")}


def _layer_table(evaluator: Evaluator, layers: list[str], sensitivity: dict, quantized: frozenset[str],
                 original: ir.Model) -> list[dict]:
    """Per-layer records: op, sensitivities, precision at the recommended threshold, parameters and
    multiply-accumulates (from the summary of the all-int8 model)."""
    summary = summarize(lower(evaluator.build(())), evaluator.feeds[0], original)
    by_name = {r["name"]: r for r in summary["layers"]}
    records = []
    for name in layers:
        row = by_name.get(name, {"op": next(n.op_type for n in evaluator.base.graph if n.name == name),
                                 "params": 0, "macs": 0, "macs_share": 0.0})
        records.append({"name": name, "op": row["op"], **sensitivity[name],
                        "precision": "int8" if name in quantized else "float", "params": row["params"],
                        "macs": row["macs"], "macs_share": row["macs_share"]})
    return records


def _configuration(records: list[dict], chosen: Any, evaluator: Evaluator, original_size: int) -> dict[str, Any]:
    """Totals of a configuration ``mixed-precision`` keeps (None: the original model)."""
    quantized = chosen.quantized_nodes if chosen is not None else frozenset()
    total = sum(r["macs"] for r in records)
    int8 = sum(r["macs"] for r in records if r["name"] in quantized)
    return {"layers": len(records), "int8_layers": sum(r["name"] in quantized for r in records), "macs": total,
            "int8_macs_share": int8 / total if total else 0.0,
            "size": chosen.size if chosen is not None else original_size, "original_size": original_size,
            "predicted": chosen.errors if chosen is not None else error_measures(evaluator.reference,
                                                                                  evaluator.reference)}


def _kernels(model: ir.Model, target: str, feeds: list[dict], source: str) -> dict[str, Any]:
    from .executor.layerwise import MAX_OFF_SHARE, MIN_SQNR_DB, compare_layers
    from .executor.profiles import get_profile

    profile = get_profile(target)
    with bar(len(feeds), "kernel check", unit="feed") as step:
        records = compare_layers(model, profile, feeds, progress=advance(step))
    return {"profile": profile.name, "description": profile.description, "model": source, "samples": len(feeds),
            "max_off_share": MAX_OFF_SHARE, "min_sqnr_db": MIN_SQNR_DB, "kernels": records,
            "flagged": [r["name"] for r in records if r["flagged"]]}


def analyze(model_path: str, calib: Any, *, quantized: str | None = None, target: str = "auto",
            pipeline: str = "int8", calibration: str = "mse", per_tensor: bool = False, exclude: tuple[str, ...] = (),
            metric: Any = None, progress: Callable[[str], None] | None = None, executor: Any = None
            ) -> dict[str, Any]:
    """Run the five steps of the module docstring on the FP32 ONNX file ``model_path``.

    ``quantized``: a QDQ model to check the kernels of (default: the all-int8 model analyzed here).
    ``target``, ``pipeline``, ``calibration``, ``per_tensor``, ``exclude`` and ``metric`` mean what they
    mean to ``qcompiler.compile``, so the recommended threshold reproduces with the same options.
    ``progress(message)`` is called as each step starts; with it, long loops also show progress bars
    on stderr (:mod:`qcompiler.progress`). ``executor``: where calibration shares and the per-layer
    configurations run (as for ``qcompiler.compile``: None, "auto", a Ray address or an executor); the
    report's numbers do not depend on it.
    """
    from .scaleout import executor_for, using

    with bars(progress is not None), using(executor_for(executor)):  # tqdm bars for the long steps, unless quiet (qcompiler.progress)
        return _analyze(model_path, calib, quantized=quantized, target=target, pipeline=pipeline,
                        calibration=calibration, per_tensor=per_tensor, exclude=exclude, metric=metric,
                        say=progress or (lambda message: None))


def _analyze(model_path: str, calib: Any, *, quantized: str | None, target: str, pipeline: str, calibration: str,
             per_tensor: bool, exclude: tuple[str, ...], metric: Any, say: Callable[[str], None]) -> dict[str, Any]:
    from .distributions import tensor_distributions
    from .mixed_precision import choose, explore
    from .targets import get_target

    start = time.perf_counter()
    target_name = get_target(target).name
    quantized_model = ir.load(quantized) if quantized is not None else None
    if quantized_model is not None and not any(n.op_type == "DequantizeLinear" for n in quantized_model.graph):
        raise UserError(f"{quantized}: no DequantizeLinear node, not a quantized (QDQ) model")
    say(f"calibrating with the {pipeline} pipeline")
    model, mixed, drift = _calibrated(model_path, pipeline, CompileOptions(
        calib=calib, target=target_name, calibration=calibration, per_tensor=per_tensor, exclude=tuple(exclude)),
        metric)
    layers = mixed.layers(model)
    if not layers:
        raise UserError(f"{model_path}: no layer has an int8 kernel on {target_name}; nothing to analyze")
    evaluator = mixed.evaluator(model)
    original, _ = load_float(model_path)
    say(f"float sanity and weights/activations split on {len(evaluator.feeds)} feed(s)")
    report: dict[str, Any] = {"model": str(model_path), "pipeline": pipeline, "target": target_name,
                              "calibration": calibration, "samples": len(evaluator.feeds)}
    if "ingest_qdq" in model.plan.reports:
        report["given_qdq"] = {**model.plan.reports["ingest_qdq"], **model.plan.reports.get("keep_qdq_scales", {})}
    with bar(4, "evaluations", unit="model") as step:
        counted = _Counting(evaluator, step)
        report["sanity"] = sanity(counted, layers, drift)
        all_int8 = counted.evaluate(())
        report["split"] = {"weights_only": split_error(counted, "weights"),
                           "activations_only": split_error(counted, "activations"), "all_int8": all_int8.errors}
    say(f"per-layer sensitivity of {len(layers)} layers (2 evaluations each)")
    original_size = model.plan.original_model.nbytes

    def search(threshold: float):
        return choose(evaluator, layers, "nsr", threshold, original_size)

    # the searches first: they must see the configurations the pass sees, not the float-alone ones too
    with bar(per_layer_evaluations(len(layers)), "per-layer evaluations", unit="config") as step:
        path, _ = explore(_Counting(evaluator, step), layers, "nsr")
        recommendation = recommend(search, all_int8.errors)
        chosen = recommendation.pop("configuration")
        sweep = {t: search(t) for t in SWEEP}
        sensitivity = layer_sensitivity(_Counting(evaluator, step), layers)
    report["layers"] = _layer_table(evaluator, layers, sensitivity,
                                    chosen.quantized_nodes if chosen is not None else frozenset(), original)
    recommendation.update(_configuration(report["layers"], chosen, evaluator, original_size))
    report["recommendation"] = recommendation
    report["path"] = path
    report["thresholds"] = [{"threshold": t, **_configuration(report["layers"], c, evaluator, original_size)}
                            for t, c in sweep.items()]
    say(f"target kernels ({target_name}) vs simulation per layer")
    checked = quantized_model if quantized_model is not None else lower(evaluator.build(()))
    report["kernels"] = _kernels(checked, target_name, evaluator.feeds[:KERNEL_SAMPLES],
                                 str(quantized) if quantized is not None else "the all-int8 model analyzed here")
    say("tensor distributions")
    with bar(2 * len(evaluator.feeds), "distributions", unit="feed") as step:
        report["distributions"] = tensor_distributions(evaluator.base, evaluator.specs, evaluator.feeds,
                                                       progress=advance(step))
    report["seconds"] = time.perf_counter() - start
    report["evaluations"] = evaluator.evaluations
    return jsonable(report)


def _num(value: Any, digits: int = 1) -> str:
    return str(value) if isinstance(value, str) else f"{value:.{digits}f}"


def _given_lines(given: dict | None) -> list[str]:
    """What the analysis says about a QDQ input model (:func:`load_float`)."""
    if given is None:
        return []
    return [f"input model carries Q/DQ: analyzed as its float model ({given['weights']} dequantized constants, "
            f"{given['activations']} activation Q/DQ pairs removed) with its own scales on "
            f"{given.get('kept', 0)} quantized values; {len(given.get('calibrated', []))} values it left float "
            f"are calibrated, {given.get('given_unused', 0)} of its quantized values stay float here"]


def format_text(report: dict[str, Any]) -> str:
    """The analysis as text tables (what ``qcompiler analyze`` prints)."""
    s, split, rec, kernels = report["sanity"], report["split"], report["recommendation"], report["kernels"]
    lines = [f"analysis of {report['model']}: pipeline {report['pipeline']}, target {report['target']}, "
             f"{report['samples']} calibration feed(s)", *_given_lines(report.get("given_qdq")), "",
             f"1. float sanity: {'PASS' if s['passed'] else 'FAIL'}: outputs {'finite' if s['finite'] else 'NOT finite'}; "
             f"all quantizers bypassed vs original: SQNR {_num(s['bypassed']['sqnr_db'])} dB "
             f"(needs >= {s['min_sqnr_db']:.0f} dB)"
             + (f"; the float model first drifts in pass {s['first_drift']}" if s["first_drift"] else ""), "",
             "2. error split (output SQNR dB / cosine vs FP32):"]
    lines += ["   " + line for line in align_columns([("quantized", "", "SQNR dB", "cosine")] + [
        (label, "", _num(split[key]["sqnr_db"]), f"{split[key]['cosine']:.5f}")
        for label, key in (("weights only", "weights_only"), ("activations only", "activations_only"),
                           ("both (all int8)", "all_int8"))])]
    kernel_by_name = {k["name"]: k for k in kernels["kernels"]}
    lines += ["", "3. per layer (SQNR dB of the output with the layer quantized alone / kept float alone; "
              "precision at the recommended threshold):"]
    rows = [("layer", "op", "alone dB", "float-alone dB", "precision", "MACs %", "kernel dB", "flag")]
    for r in sorted(report["layers"], key=lambda r: float(r["quantized_alone"]["sqnr_db"])):
        kernel = kernel_by_name.get(r["name"])
        rows.append((r["name"], r["op"], _num(r["quantized_alone"]["sqnr_db"]),
                     _num(r["float_alone"]["sqnr_db"]), r["precision"], f"{100 * r['macs_share']:.1f}",
                     _num(kernel["sqnr_db"]) if kernel else "", "FLAG" if kernel and kernel["flagged"] else ""))
    lines += ["   " + line for line in align_columns(rows)]
    p = rec["predicted"]
    lines += ["", f"   recommended --sensitivity-threshold {rec['threshold']:g}: {rec['int8_layers']}/{rec['layers']} "
              f"layers int8, {100 * rec['int8_macs_share']:.1f}% of MACs, {rec['size']:,} bytes "
              f"(FP32 {rec['original_size']:,}); predicted output SQNR {_num(p['sqnr_db'])} dB, cosine {p['cosine']:.4f}",
              f"   why: {rec['reason']}", "   other thresholds (what compile keeps):"]
    lines += ["   " + line for line in align_columns([("threshold", "", "int8 layers", "MACs int8 %", "size", "SQNR dB",
                                                 "cosine")] + [
        (f"{t['threshold']:g}", "", f"{t['int8_layers']}/{t['layers']}", f"{100 * t['int8_macs_share']:.1f}",
         f"{t['size']:,}", _num(t["predicted"]["sqnr_db"]), f"{t['predicted']['cosine']:.4f}")
        for t in report["thresholds"]])]
    lines += ["",
              f"4. target kernels ({kernels['profile']}) vs simulation, identical inputs per layer, on "
              f"{kernels['model']} ({kernels['samples']} feed(s)): {len(kernels['flagged'])} of "
              f"{len(kernels['kernels'])} kernels flagged (SQNR < {kernels['min_sqnr_db']:.0f} dB or more than "
              f"{100 * kernels['max_off_share']:.1f}% of elements > 1 LSB off)"]
    for k in kernels["kernels"]:
        if k["flagged"]:
            off = "" if k["over_one_lsb"] is None else f", {100 * k['over_one_lsb']:.2f}% > 1 LSB (max {k['max_lsb']:g})"
            lines += [f"   FLAG {k['name']} ({k['kernel']}): SQNR {_num(k['sqnr_db'])} dB{off}; exact accumulation "
                      f"{_num(k['exact_sqnr_db'])} dB", f"        cause: {k['cause']}", f"        fix: {k['fix']}"]
    dists = report["distributions"]
    worst = sorted(dists, key=lambda d: (-d["clipped"], d["utilisation"]))[:8]
    lines += ["", f"5. distributions of {len(dists)} quantized tensors (most clipped / least used range first):"]
    lines += ["   " + line for line in align_columns([("tensor", "kind", "min", "max", "range", "clipped %", "used %")] + [
        (d["name"], d["kind"], f"{d['min']:.4g}", f"{d['max']:.4g}",
         f"[{d['range'][0]:.4g}, {d['range'][1]:.4g}]" + (" lv" if d["unit"] == "levels" else ""),
         f"{100 * d['clipped']:.3f}", f"{100 * d['utilisation']:.1f}") for d in worst])]
    lines.append(f"\n{report['evaluations']} model evaluations in {report['seconds']:.1f}s")
    return "\n".join(lines)
