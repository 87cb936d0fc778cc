"""Tensor distributions against their quantization ranges.

AIMET's ``QuantAnalyzer`` exports, per quantizer, the encoding's min/max and a histogram of the
tensor's statistics with the encoding marked (``export_per_layer_stats_histogram``,
``export_per_layer_encoding_min_max_range``), and PPQ's ``variable_analyse`` does the same for
activations; outliers that stretch a range, and ranges that clip, are what they show. Here, for
every value with a :class:`~qcompiler.ir.QuantSpec` in a calibrated model (activations: the float
model's values on the feeds, run in onnxruntime; weights: the constants), in quantization levels
``u = x / scale + zero_point`` (per channel for per-channel weights) against ``[qmin, qmax]``:

* ``clipped``: the share of elements with ``u`` outside ``[qmin - 0.5, qmax + 0.5]`` (saturated by
  QuantizeLinear);
* ``utilisation``: the share of the integer range that the values span,
  ``(min(u_max, qmax) - max(u_min, qmin)) / (qmax - qmin)``; per channel for per-channel weights, with
  the mean reported and the worst channel's as ``worst_channel_utilisation``;
* ``histogram``: ``BINS`` bins over ``[min(x_min, lo), max(x_max, hi)]`` with the range ``[lo, hi]``
  (``lo = (qmin - zero_point) * scale``) marked, in real units; per-channel weights are binned in
  levels ``u`` (one range for all channels). Activations are binned in a second pass over the feeds,
  once their extremes are known, so every element is counted.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from .ir import Model, QuantSpec, channel_shape
from .summary import tensor_reader

BINS = 48


def _levels(x: np.ndarray, spec: QuantSpec) -> np.ndarray:
    scale, zero = spec.scale.astype(np.float64), spec.zero_point.astype(np.float64)
    if spec.axis is not None and scale.size > 1:
        shape = channel_shape(x.ndim, spec.axis)
        scale, zero = scale.reshape(shape), zero.reshape(shape)
    return x.astype(np.float64) / scale + zero


def _utilisation(low: np.ndarray, high: np.ndarray, spec: QuantSpec) -> np.ndarray:
    return np.clip((np.minimum(high, spec.qmax) - np.maximum(low, spec.qmin)) / (spec.qmax - spec.qmin), 0.0, 1.0)


def _weight(name: str, w: np.ndarray, spec: QuantSpec) -> dict[str, Any]:
    u = _levels(w, spec)
    per_channel = spec.axis is not None and spec.scale.size > 1
    if per_channel:
        axes = tuple(i for i in range(w.ndim) if i != spec.axis)
        utilisation = _utilisation(u.min(axis=axes), u.max(axis=axes), spec)
        edges = np.linspace(min(u.min(), spec.qmin), max(u.max(), spec.qmax), BINS + 1)
        counts, _ = np.histogram(u, edges)
        lo, hi, unit = float(spec.qmin), float(spec.qmax), "levels"
    else:
        utilisation = _utilisation(u.min(), u.max(), spec)
        lo, hi = ((np.array([spec.qmin, spec.qmax]) - float(spec.zero_point)) * float(spec.scale)).tolist()
        edges = np.linspace(min(float(w.min()), lo), max(float(w.max()), hi), BINS + 1)
        counts, _ = np.histogram(w.astype(np.float64), edges)
        unit = "real"
    return {"name": name, "kind": "weight", "per_channel": per_channel, "elements": int(w.size),
            "min": float(w.min()), "max": float(w.max()), "range": [lo, hi], "unit": unit,
            "clipped": float(np.mean((u < spec.qmin - 0.5) | (u > spec.qmax + 0.5))),
            "utilisation": float(np.mean(utilisation)), "worst_channel_utilisation": float(np.min(utilisation)),
            "histogram": {"edges": edges.tolist(), "counts": counts.tolist()}}


def _activations(model: Model, specs: dict[str, QuantSpec], feeds: list[dict[str, np.ndarray]],
                 progress: Callable[[int, int], None] | None = None) -> list[dict]:
    by_name = {v.name: v for v in model.graph.values()}
    names = [n for n in specs if n in by_name and by_name[n].const is None]
    inputs = {v.name for v in model.graph.inputs}

    read = tensor_reader(model, [n for n in names if n not in inputs])  # one session for both passes

    def values(feed):
        return {**{n: feed[n] for n in names if n in inputs and n in feed}, **read(feed)}

    total, done = 2 * len(feeds), 0  # two passes over the feeds: ranges, then histograms
    low = {n: np.inf for n in names}
    high = {n: -np.inf for n in names}
    for feed in feeds:
        for name, x in values(feed).items():
            if x.size:
                low[name], high[name] = min(low[name], float(np.min(x))), max(high[name], float(np.max(x)))
        done += 1
        if progress is not None:
            progress(done, total)
    seen = [n for n in names if np.isfinite(low[n])]
    stats = {}
    for name in seen:
        spec = specs[name]
        lo, hi = ((np.array([spec.qmin, spec.qmax]) - float(spec.zero_point)) * float(spec.scale)).tolist()
        stats[name] = {"edges": np.linspace(min(low[name], lo), max(high[name], hi), BINS + 1), "range": [lo, hi],
                       "counts": np.zeros(BINS, np.int64), "clipped": 0, "elements": 0}
    for feed in feeds:
        for name, x in values(feed).items():
            if name not in stats:
                continue
            record, spec = stats[name], specs[name]
            record["counts"] += np.histogram(x.astype(np.float64), record["edges"])[0]
            u = _levels(x, spec)
            record["clipped"] += int(np.sum((u < spec.qmin - 0.5) | (u > spec.qmax + 0.5)))
            record["elements"] += int(x.size)
        done += 1
        if progress is not None:
            progress(done, total)
    result = []
    for name in seen:
        record, spec = stats[name], specs[name]
        span = _levels(np.array([low[name], high[name]]), spec)
        utilisation = float(_utilisation(span[0], span[1], spec))  # one range per tensor: also the worst channel's
        result.append({"name": name, "kind": "activation", "per_channel": False, "elements": record["elements"],
                       "min": low[name], "max": high[name], "range": record["range"], "unit": "real",
                       "clipped": record["clipped"] / max(record["elements"], 1),
                       "utilisation": utilisation, "worst_channel_utilisation": utilisation,
                       "histogram": {"edges": record["edges"].tolist(), "counts": record["counts"].tolist()}})
    return result


def tensor_distributions(model: Model, specs: dict[str, QuantSpec], feeds: list[dict[str, np.ndarray]],
                         progress: Callable[[int, int], None] | None = None) -> list[dict[str, Any]]:
    """Distribution records (see the module docstring) of the quantized values of the float ``model``,
    activations first, each kind in graph order; ``layer`` names the node that produces an activation
    or reads a weight. ``progress(done, total)`` is called after each feed of the two passes over them."""
    by_name = {v.name: v for v in model.graph.values()}
    records = _activations(model, specs, feeds, progress)
    records += [_weight(name, by_name[name].const, spec) for name, spec in specs.items()
                if name in by_name and by_name[name].const is not None and spec.block_size is None]
    for record in records:
        value = by_name[record["name"]]
        node = value.producer() if record["kind"] == "activation" else next(iter(value.consumers()), None)
        record["layer"] = node.name if node is not None else ""
    return records
