"""Range search: choose quantization ranges by the error they cause, not by a fixed rule.

Two passes, one per kind of tensor:

``search-weight-ranges`` — MSE-optimal per-channel weight clipping. For each output channel ``c`` of a
weight with a symmetric spec (set by ``assign-precision``) and a grid of clipping ratios ``r``::

    r*_c = argmin_r || W_c - Q(clip(W_c, ±r·max|W_c|); scale = r · max|W_c| / q_max) ||²

where ``Q`` rounds half to even, ``q_max`` is 127 (63 on reduce-range targets), and the weight is
stored clipped (``Q`` then never saturates: see :func:`clipped_weight_spec`) (Banner et al. 2019,
"Post-training 4-bit quantization of convolutional networks for rapid-deployment", and the
white paper's MSE range setting, Nagel et al. 2021, arXiv:2106.08295 §3.4). ``r = 1`` (min/max) is
always a candidate, so no channel's error grows.

``calibrate-search`` — activation ranges from a grid of calibration methods, chosen on held-out data
(as transformer-deploy does with its percentile sweep): every ``holdout``-th calibration feed is held
out; histograms are collected once on the other feeds; for each candidate (``minmax``, ``mse``,
``percentile:P``) every marked activation gets the range that candidate reads off its histogram,
the model with those ranges is run (onnxruntime, with Q/DQ inserted) on the held-out feeds and
scored by the relative output error ``mean_o ||Y_o - Ŷ_o||² / ||Y_o||²`` over the graph outputs
(:func:`qcompiler.sensitivity.error_measures`' ``nsr``).
The best candidate is then read off the histograms of all feeds (held-out ones merged in).

Both take a ``region`` (a treatment of ``recognize-structure``): then only the weights and activations
of the regions given it are searched; ``calibrate-search`` gives the others the range of its fixed
``method`` (as ``calibrate`` would), from the same calibration runs.
"""

from __future__ import annotations

from dataclasses import field
from typing import Any

import numpy as np

from qcompiler.assignment import FLOAT_TYPES, OTHER_FLOAT_TYPES
from qcompiler.calibration import METHODS, model_inputs
from qcompiler.calibration.collect import observing_session
from qcompiler.calibration.observers import MSEObserver, PercentileObserver, StreamingHistogram
from qcompiler.errors import UserError
from qcompiler.ir import Model, QuantSpec, channel_shape, fake_quantize, onnxruntime_model
from qcompiler.lowering import lower
from qcompiler.pass_manager import Pass, PassResult, register_pass
from qcompiler.scaleout import session_options
from qcompiler.sensitivity import error_measures

from .structure import require_regions

DEFAULT_RATIOS = tuple(round(1.0 - 0.01 * i, 2) for i in range(50))
DEFAULT_CANDIDATES = ("minmax", "mse", "percentile:99.9", "percentile:99.99", "percentile:99.999",
                      "percentile:99.9999")


# -- weights ---------------------------------------------------------------------------------------


def clipped_weight_spec(weight: np.ndarray, spec: QuantSpec, reduce_range: bool,
                        ratios: tuple[float, ...] = DEFAULT_RATIOS) -> tuple[QuantSpec, np.ndarray, np.ndarray]:
    """The per-channel symmetric spec of ``weight`` whose clipping ratio minimizes each channel's MSE.

    Returns the spec, the chosen ratio per channel and the weight clipped to ``±r·max|W_c|``. The
    clipped weight is what must be quantized: ``QuantizeLinear`` alone would saturate at -128, not at
    the symmetric -127, and on reduce-range targets write 8-bit integers where 7 bits were promised
    (the int16 pair saturation of x86 without VNNI). ``spec`` gives the type and channel axis.
    """
    axis = spec.axis
    reduce_axes = tuple(i for i in range(weight.ndim) if i != axis) if axis is not None else None
    shape = channel_shape(weight.ndim, axis)
    peak = np.abs(weight).max(axis=reduce_axes).astype(np.float64)
    best_error = np.full(peak.shape, np.inf)
    best_ratio = np.ones(peak.shape)
    for ratio in sorted(set(ratios) | {1.0}, reverse=True):
        candidate = QuantSpec.from_range(-ratio * peak, ratio * peak, spec.dtype, symmetric=True, axis=axis,
                                         reduce_range=reduce_range)
        bound = np.reshape(ratio * peak, shape).astype(np.float32)
        error = np.square(fake_quantize(np.clip(weight, -bound, bound), candidate) - weight).sum(axis=reduce_axes)
        better = error < best_error
        best_error = np.where(better, error, best_error)
        best_ratio = np.where(better, ratio, best_ratio)
    chosen = QuantSpec.from_range(-best_ratio * peak, best_ratio * peak, spec.dtype, symmetric=True, axis=axis,
                                  reduce_range=reduce_range)
    bound = np.reshape(best_ratio * peak, shape).astype(np.float32)
    return chosen, best_ratio, np.clip(weight, -bound, bound)


@register_pass("search-weight-ranges")
class SearchWeightRanges(Pass):
    """Clip each weight channel at the ratio of its maximum that minimizes its quantization MSE."""

    ratios: list[float] = field(default_factory=lambda: list(DEFAULT_RATIOS))
    region: str = ""
    needs = ("plan",)

    def requires(self, model: Model) -> None:
        require_regions(self, model, self.region)

    def call(self, model: Model) -> PassResult:
        target = model.plan.target
        changed = False
        clipped = total = 0
        for value in model.graph.initializers.values():
            spec = value.quant
            if spec is None or not spec.symmetric or spec.block_size is not None or value.const.dtype != np.float32:
                continue
            if self.region and not model.plan.value_in_region(value, self.region):
                continue
            reduce_range = target.reduces_weight_range(value.consumers())
            chosen, ratio, weight = clipped_weight_spec(value.const, spec, reduce_range, tuple(self.ratios))
            if chosen != spec:
                value.quant, value.const = chosen, weight
                changed = True
            clipped += int(np.count_nonzero(ratio < 1.0))
            total += ratio.size
        model.plan.reports["search_weight_ranges"] = {"clipped_channels": clipped, "channels": total}
        return PassResult(model, changed)


# -- activations -----------------------------------------------------------------------------------


def candidate_range(histogram: StreamingHistogram, candidate: str) -> tuple[float, float]:
    """The range ``candidate`` (``minmax``, ``mse`` or ``percentile:P``) reads off ``histogram``.

    The histogram's counts, extremes and totals are handed to a fresh observer of the candidate's
    method (all of them read the same power-of-two histogram), whose ``compute_range`` decides.
    """
    reader = _reader(candidate, histogram.bins)
    for attribute in ("lo", "hi", "count", "nonfinite", "exponent", "counts"):
        setattr(reader, attribute, getattr(histogram, attribute))
    return reader.compute_range()


def _reader(candidate: str, bins: int = 8192) -> StreamingHistogram:
    if candidate == "minmax":
        return StreamingHistogram(bins)
    if candidate == "mse":
        return MSEObserver(bins)
    method, _, number = candidate.partition(":")
    try:
        if method == "percentile":
            return PercentileObserver(float(number), bins=bins)
    except ValueError:
        pass
    raise UserError(f"calibrate-search: unknown candidate {candidate!r} "
                    "(minmax, mse or percentile:P with 50 < P <= 100, e.g. percentile:99.99)")


@register_pass("calibrate-search")
class CalibrateSearch(Pass):
    """Calibrate activations with the range method that gives the smallest output error on held-out feeds."""

    data: Any = None
    candidates: list[str] = field(default_factory=lambda: list(DEFAULT_CANDIDATES))
    holdout: int = 4
    region: str = ""  # search only this treatment's activations; the others get ``method``'s range
    method: str = "mse"
    percentile: float = 99.999
    needs = ("plan",)
    provides = ("ranges",)

    def requires(self, model: Model) -> None:
        if self.data is None:
            raise UserError("calibrate-search: no calibration data given (--calib DIR or a '@calibration' resource)")
        if self.holdout < 2:
            raise UserError(f"calibrate-search: holdout must be >= 2 (every n-th feed held out), not {self.holdout}")
        if not self.candidates:
            raise UserError("calibrate-search: no candidates")
        for candidate in self.candidates:
            _reader(candidate)
        if self.method not in METHODS:
            raise UserError(f"calibrate-search: unknown method {self.method!r}; choose one of {', '.join(METHODS)}")
        require_regions(self, model, self.region)

    def call(self, model: Model) -> PassResult:
        from qcompiler.calibration import make_observer_factory, open_calibration
        from qcompiler.calibration.staged import collect_model

        graph, plan = model.graph, model.plan
        pending = list(plan.pending)
        if not pending:
            plan.set_ranges({})  # pass-through outputs still take their source's spec
            return PassResult(model, False)
        searched = {v.name for v in pending if not self.region or plan.value_in_region(v, self.region)}
        fixed = make_observer_factory(self.method, percentile=self.percentile)
        names = [v.name for v in pending]
        data = open_calibration(self.data, model_inputs(model))
        if not searched:  # nothing to search: calibrate with the fixed method
            observers = collect_model(model, names, data, fixed)
            plan.set_ranges({v: observers[v.name].compute_range() for v in pending},
                            {v: observers[v.name].extremes() for v in pending})
            plan.reports["calibrate_search"] = {"searched": 0, "method": self.method}
            return PassResult(model, True)
        fit, held = _split(data, self.holdout)
        held_feeds = [feed for _, feed in held.items()]
        observer = lambda name: StreamingHistogram() if name in searched else fixed(name)  # noqa: E731
        observers = collect_model(model, names, fit, observer)
        # the error is measured on the float outputs, not on shapes, masks or indices a model also returns
        outputs = [v.name for v in graph.outputs if v.dtype in FLOAT_TYPES + OTHER_FLOAT_TYPES]
        held_observers = collect_model(model, names, held_feeds, observer)
        reference = _run(model, held_feeds, outputs)
        for name in names:
            if name not in searched:
                observers[name].merge(held_observers[name])
        ranges = {name: observers[name].compute_range() for name in names if name not in searched}
        errors = {}
        for candidate in self.candidates:
            trial = model.clone()
            trial.plan.set_ranges({v: ranges[v.name] if v.name in ranges else
                                   candidate_range(observers[v.name], candidate) for v in trial.plan.pending})
            errors[candidate] = error_measures(reference, _run_quantized(trial, held_feeds, outputs))["nsr"]
        best = min(self.candidates, key=lambda c: errors[c])  # ties: the earlier candidate
        for name in searched:
            observers[name].merge(held_observers[name])
        plan.set_ranges({v: ranges[v.name] if v.name in ranges else candidate_range(observers[v.name], best)
                         for v in pending}, {v: observers[v.name].extremes() for v in pending})
        plan.reports["calibrate_search"] = {"best": best, "errors": errors, "searched": len(searched),
                                            "method": self.method}
        return PassResult(model, True)


def _split(data: Any, every: int) -> tuple[Any, Any]:
    """(fit, held-out) calibration sets: feed ``i`` is held out when ``i % every == every - 1``."""
    from qcompiler.calibration import CalibrationSet

    def part(held: bool):
        return lambda: ((where, feed) for i, (where, feed) in enumerate(data.items())
                        if (i % every == every - 1) == held)

    length = data.length
    held_count = None if length is None else length // every
    if length is not None and held_count == 0:
        raise UserError(f"calibrate-search: {length} calibration feed(s) leave none held out "
                        f"(every {every}th feed is); give at least {every} feeds")
    return (CalibrationSet(part(False), data.inputs, None if length is None else length - held_count,
                           f"{data.description} (fit part)"),
            CalibrationSet(part(True), data.inputs, held_count, f"{data.description} (held-out part)"))


def _run_quantized(model: Model, feeds: list[dict[str, np.ndarray]], names: list[str]) -> list[list[np.ndarray]]:
    """The outputs ``names`` of ``model`` with Q/DQ inserted for its specs, on every feed."""
    lower(model, fold=False)
    return _run(model, feeds, names)


def _run(model: Model, feeds: list[dict[str, np.ndarray]], names: list[str]) -> list[list[np.ndarray]]:
    """The outputs ``names`` of ``model`` on every feed, in one onnxruntime session."""
    with onnxruntime_model(model) as source:
        session = observing_session(source, session_options(), ["CPUExecutionProvider"])
    return [session.run(names, feed) for feed in feeds]
