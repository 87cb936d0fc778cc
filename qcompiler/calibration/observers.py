"""Streaming range observers: each sees a tensor batch by batch and ends with a range (lo, hi).

Memory per observer is constant: min/max keeps two numbers, the histogram observers keep a fixed
number of bins over ``[-R, R]`` whose range doubles when a batch exceeds it (adjacent bins are
merged in pairs). ``R`` starts at a power of two, so whatever the batching and order, the final grid
is the one for the smallest power of two above ``max|x|``: the histogram, and every range computed
from it, does not depend on how samples are split into batches (up to values on bin edges).

* :class:`MinMaxObserver` — the exact extremes.
* :class:`PercentileObserver` — ``lo``/``hi`` at the given lower/upper percentile of the values
  (McKinstry et al. 2019 use 99.99 %-99.999 %; onnxruntime's default is 99.999).
* :class:`EntropyObserver` — TensorRT's calibration (Migacz 2017, "8-bit Inference with TensorRT"):
  over candidate thresholds ``T`` on the histogram of ``|x|``, clip at ``T``, quantize the clipped
  distribution to 128 levels, expand back, and pick the ``T`` minimizing ``KL(P || Q)``.
* :class:`MSEObserver` — the clipping range minimizing the expected squared quantization error:
  rounding noise ``Δ²/12`` inside the range plus the squared clipping distance outside
  (Banner et al. 2019, "Post-training 4-bit quantization of convolution networks", section 3).

Every observer tracks the exact min/max too; returned ranges never exceed them.
"""

from __future__ import annotations

import numpy as np


class MinMaxObserver:
    """The smallest and largest value seen."""

    def __init__(self) -> None:
        self.lo = np.inf
        self.hi = -np.inf

    def update(self, array: np.ndarray) -> None:
        if array.size:
            self.lo = min(self.lo, float(array.min()))
            self.hi = max(self.hi, float(array.max()))

    def compute_range(self) -> tuple[float, float]:
        if self.lo > self.hi:
            return 0.0, 0.0
        return self.lo, self.hi


class StreamingHistogram(MinMaxObserver):
    """A histogram of ``bins`` bins over ``[-R, R]`` with ``R`` doubling as larger values arrive."""

    def __init__(self, bins: int = 2048) -> None:
        super().__init__()
        if bins % 4:
            raise ValueError("bins must be a multiple of 4")
        self.bins = bins
        self.radius = 0.0
        self.counts = np.zeros(bins, dtype=np.int64)

    def update(self, array: np.ndarray) -> None:
        array = np.asarray(array, dtype=np.float32).ravel()
        if not array.size:
            return
        super().update(array)
        peak = max(abs(self.lo), abs(self.hi))
        if self.radius == 0.0:  # a power of two, so every batching ends on the same bin grid
            self.radius = float(2.0 ** np.ceil(np.log2(peak))) if peak > 0 else 2.0**-30
        while peak > self.radius:
            merged = self.counts.reshape(-1, 2).sum(axis=1)
            self.counts = np.zeros_like(self.counts)
            quarter = self.bins // 4
            self.counts[quarter:quarter + merged.size] = merged
            self.radius *= 2.0
        # np.histogram's general path is 4x slower than binning by arithmetic for uniform bins
        scale = np.float32(self.bins / (2.0 * self.radius))
        index = ((array + np.float32(self.radius)) * scale).astype(np.int64)
        np.clip(index, 0, self.bins - 1, out=index)
        self.counts += np.bincount(index, minlength=self.bins)

    @property
    def edges(self) -> np.ndarray:
        return np.linspace(-self.radius, self.radius, self.bins + 1)

    def _value_at(self, fraction: float) -> float:
        """The value below which ``fraction`` of the samples lie (linear inside a bin)."""
        cumulative = np.cumsum(self.counts)
        target = fraction * cumulative[-1]
        index = int(np.searchsorted(cumulative, target))
        index = min(index, self.bins - 1)
        before = cumulative[index - 1] if index else 0
        inside = self.counts[index]
        width = 2 * self.radius / self.bins
        offset = (target - before) / inside if inside else 0.0
        return float(-self.radius + width * (index + offset))


class PercentileObserver(StreamingHistogram):
    """Range between the ``(100 - p)``-th and ``p``-th percentiles of the values."""

    def __init__(self, percentile: float = 99.999, bins: int = 2048) -> None:
        super().__init__(bins)
        if not 50.0 < percentile <= 100.0:
            raise ValueError(f"percentile must be in (50, 100], got {percentile}")
        self.percentile = percentile

    def compute_range(self) -> tuple[float, float]:
        lo, hi = super().compute_range()
        if self.counts.sum() == 0:
            return lo, hi
        upper = min(hi, self._value_at(self.percentile / 100.0))
        lower = max(lo, self._value_at(1.0 - self.percentile / 100.0))
        return min(lower, upper), max(lower, upper)


def _abs_histogram(counts: np.ndarray) -> np.ndarray:
    """Fold a histogram over [-R, R] into one over [0, R] of |x|."""
    half = counts.size // 2
    return counts[half:] + counts[:half][::-1]


def kl_thresholds(abs_counts: np.ndarray, levels: int = 128, stride: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """KL(P||Q) for each candidate threshold bin count ``i`` (TensorRT's algorithm).

    ``P`` is the histogram up to bin ``i`` with the mass beyond added to its last bin; ``Q`` merges
    ``P``'s bins into ``levels`` groups and spreads each group's mass evenly over its non-empty bins.
    Returns (candidate bin counts, divergences).
    """
    candidates = np.arange(levels, abs_counts.size + 1, stride)
    if candidates.size == 0 or candidates[-1] != abs_counts.size:
        candidates = np.append(candidates, abs_counts.size)
    divergences = np.empty(candidates.size)
    for position, i in enumerate(candidates):
        p = abs_counts[:i].astype(np.float64).copy()
        p[-1] += abs_counts[i:].sum()
        group = np.floor(np.arange(i) * levels / i).astype(np.int64)
        nonzero = (abs_counts[:i] > 0).astype(np.float64)
        group_mass = np.bincount(group, weights=abs_counts[:i].astype(np.float64), minlength=levels)
        group_support = np.bincount(group, weights=nonzero, minlength=levels)
        q = np.where(nonzero > 0, group_mass[group] / np.maximum(group_support[group], 1), 0.0)
        p_sum, q_sum = p.sum(), q.sum()
        if p_sum == 0 or q_sum == 0:
            divergences[position] = np.inf
            continue
        p, q = p / p_sum, q / q_sum
        mask = p > 0
        q_safe = np.where(q[mask] > 0, q[mask], 1e-12)
        divergences[position] = float(np.sum(p[mask] * np.log(p[mask] / q_safe)))
    return candidates, divergences


class EntropyObserver(StreamingHistogram):
    """Threshold minimizing the KL divergence between the float and quantized distributions of |x|."""

    def __init__(self, bins: int = 2048, levels: int = 128) -> None:
        super().__init__(bins)
        self.levels = levels

    def compute_range(self) -> tuple[float, float]:
        lo, hi = super().compute_range()
        abs_counts = _abs_histogram(self.counts)
        if abs_counts.sum() == 0:
            return lo, hi
        candidates, divergences = kl_thresholds(abs_counts, self.levels)
        best = candidates[int(np.argmin(divergences))]
        threshold = best * self.radius / abs_counts.size
        return max(lo, -threshold), min(hi, threshold)


class MSEObserver(StreamingHistogram):
    """Clipping range minimizing expected quantization MSE for ``levels`` uniform levels."""

    def __init__(self, bins: int = 2048, levels: int = 256, steps: int = 100) -> None:
        super().__init__(bins)
        self.levels, self.steps = levels, steps

    def expected_mse(self, lo: float, hi: float) -> float:
        """Expected squared error of quantizing the histogram's values to [lo, hi] (bin centres)."""
        edges = self.edges
        centres = (edges[:-1] + edges[1:]) / 2
        step = (hi - lo) / (self.levels - 1) if hi > lo else 0.0
        clipped = np.clip(centres, lo, hi)
        error = (centres - clipped) ** 2 + np.where((centres >= lo) & (centres <= hi), step * step / 12.0, 0.0)
        total = self.counts.sum()
        return float(np.dot(self.counts, error) / total) if total else 0.0

    def compute_range(self) -> tuple[float, float]:
        lo, hi = super().compute_range()
        if self.counts.sum() == 0 or lo == hi:
            return lo, hi
        best, best_error = (lo, hi), self.expected_mse(lo, hi)
        for fraction in np.linspace(1.0, 0.05, self.steps)[1:]:
            candidate = (lo * fraction, hi * fraction)
            error = self.expected_mse(*candidate)
            if error < best_error:
                best, best_error = candidate, error
        return best


OBSERVERS = {"minmax": MinMaxObserver, "percentile": PercentileObserver, "entropy": EntropyObserver,
             "mse": MSEObserver}


def make_observer_factory(method: str, *, percentile: float = 99.999):
    """A zero-argument-per-tensor factory ``f(tensor_name) -> observer`` for a method name."""
    if method not in OBSERVERS:
        raise ValueError(f"unknown calibration method {method!r}; choose one of {', '.join(OBSERVERS)}")
    if method == "percentile":
        return lambda name: PercentileObserver(percentile)
    return lambda name: OBSERVERS[method]()
