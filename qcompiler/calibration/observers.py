"""Streaming range observers: each sees a tensor batch by batch and ends with a range ``(lo, hi)``.

Every observer has ``update(array)`` (any shape; float, or anything numpy casts to float),
``merge(other)`` (fold in an observer of the same kind that saw other batches) and
``compute_range() -> (lo, hi)``. Memory per observer is constant.

* :class:`MinMaxObserver` — the exact extremes (per tensor, or per channel with ``axis``).
* :class:`PercentileObserver` — the lower/upper percentile of the values, or a percentile of ``|x|``
  with ``symmetric=True`` (McKinstry et al. 2019, "Discovering low-precision networks close to
  full-precision networks for efficient embedded inference", use 99.99-99.999 %; onnxruntime's
  default is 99.999).
* :class:`EntropyObserver` — TensorRT's calibration (Migacz 2017, "8-bit Inference with TensorRT",
  GTC): over every candidate threshold ``T`` of the histogram (from ``max|x|/16``), clip at ``T``,
  quantize the clipped distribution to 128 levels (256 for a one-signed tensor), expand back, and
  keep the ``T`` that minimizes ``KL(P || Q)``; with the zero-bin fix of NVIDIA's
  pytorch-quantization.
* :class:`MSEObserver` — the clipping range minimizing the expected squared quantization error:
  rounding noise ``Δ²/12`` inside the range plus the squared clipping distance outside (Banner et
  al. 2019, "Post-training 4-bit quantization of convolutional networks for rapid-deployment",
  section 3; Sung et al. 2015, "Resiliency of deep neural networks under quantization").

**The histogram** (:class:`StreamingHistogram`, the base of the last three) has a fixed number of
bins over ``[-R, R]``, with ``R`` always a power of two: the smallest one at least ``max|x|`` seen
so far. When a batch holds a larger value, ``R`` grows by doubling and adjacent bins merge in pairs
(exactly: the coarse grid is a sub-grid of the fine one). A value's bin is ``floor(x * B / 2R)``,
computed exactly in floating point (the scale is a power of two). So the final counts are the same,
count for count, whatever the batching and order of the samples: they are those of a histogram
over the final ``R`` built in one go. The price of the symmetric power-of-two grid is resolution:
between a quarter (one-signed tensor, ``max|x|`` just above a power of two) and all of the bins
cover the data, hence the default of 8192 bins (at worst 2048 over the data, TensorRT's
resolution; 64 KiB per tensor).

**Non-finite values** (NaN, ±Inf) in activations are not counted in any statistic; ``nonfinite``
says how many were skipped. Huge finite values (the ``-3.4e38`` that attention masks add) are
kept: they make min/max and the histogram ranges useless for that tensor, as they would be for any
quantizer; such tensors should not be quantized.

All returned ranges lie within the observed ``[min, max]``; none of them is widened to include
zero (the quantizer does that: :meth:`qcompiler.ir.QuantSpec.from_range`). :class:`MSEObserver`
models that widening in its search, since it changes the step size.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

_CHUNK = 1 << 20  # elements checked and binned at once: bounds the temporaries of one update
_MIN_EXP = -100  # smallest histogram radius 2**-100 (all-zero tensors, denormals)


def _bin(values: np.ndarray, counts: np.ndarray, scale: float) -> None:
    """``counts[floor(x * scale) + half] += 1``, clamped to the bins (``x == R`` lands in the last).

    Exact: ``scale`` is a power of two, so ``x * scale`` and its floor are exact in float64, and in
    float32 too when ``scale >= 1`` (no underflow); float32 then halves the memory traffic (about
    2 ns per value, as fast as a numba loop, without importing numba).
    """
    half = counts.size // 2
    dtype = np.float32 if values.dtype == np.float32 and scale >= 1.0 else np.float64
    scaled = np.multiply(values, np.asarray(scale, dtype=dtype), dtype=dtype)
    np.floor(scaled, out=scaled)
    np.clip(scaled, -half, half - 1, out=scaled)
    scaled += half  # integers below 2**24: exact in float32
    counts += np.bincount(scaled.astype(np.intp), minlength=counts.size)


class Observer:
    """Base class: the exact extremes and counts every observer keeps."""

    def __init__(self) -> None:
        self.lo = math.inf
        self.hi = -math.inf
        self.count = 0  # finite values seen
        self.nonfinite = 0  # NaN/Inf values skipped

    def update(self, array: Any) -> None:
        raise NotImplementedError

    def merge(self, other: Observer) -> None:
        if type(other) is not type(self):
            raise TypeError(f"cannot merge a {type(other).__name__} into a {type(self).__name__}")
        self.lo, self.hi = min(self.lo, other.lo), max(self.hi, other.hi)
        self.count += other.count
        self.nonfinite += other.nonfinite

    def compute_range(self) -> tuple[float, float]:
        raise NotImplementedError

    def extremes(self) -> tuple[float, float]:
        """The smallest and largest finite value seen; (0, 0) before any."""
        return (0.0, 0.0) if self.count == 0 else (float(self.lo), float(self.hi))

    def _finite_chunks(self, array: Any):
        """``(chunk, min, max)``: flat float chunks of ``array`` without its non-finite values.

        Updates the observed min/max, ``count`` and ``nonfinite`` as a side effect.
        """
        flat = np.asarray(array)
        if flat.dtype.kind != "f" or flat.dtype.itemsize < 4:
            flat = flat.astype(np.float32)  # float16/bfloat16/ints: bin in float32
        flat = flat.reshape(-1)
        for start in range(0, flat.size, _CHUNK):
            chunk = flat[start:start + _CHUNK]
            lo, hi = chunk.min(), chunk.max()
            if not (np.isfinite(lo) and np.isfinite(hi)):  # a NaN propagates into min and max
                finite = np.isfinite(chunk)
                self.nonfinite += int(chunk.size - np.count_nonzero(finite))
                chunk = chunk[finite]
                if not chunk.size:
                    continue
                lo, hi = chunk.min(), chunk.max()
            self.lo, self.hi = min(self.lo, float(lo)), max(self.hi, float(hi))
            self.count += int(chunk.size)
            yield chunk, float(lo), float(hi)


class MinMaxObserver(Observer):
    """The smallest and largest value seen; per channel along ``axis`` when it is given.

    With ``axis``, :meth:`compute_range` returns two float64 arrays of one value per channel.
    Algorithm: running minimum and maximum (what every quantizer calls "min/max" or "max"
    calibration; Jacob et al. 2018, "Quantization and training of neural networks for efficient
    integer-arithmetic-only inference", section 3.1, before the EMA they use during training).
    """

    def __init__(self, axis: int | None = None) -> None:
        super().__init__()
        self.axis = axis
        self.channel_lo: np.ndarray | None = None
        self.channel_hi: np.ndarray | None = None

    def update(self, array: Any) -> None:
        if self.axis is None:
            for _ in self._finite_chunks(array):
                pass
            return
        values = np.asarray(array)
        if values.dtype.kind != "f":
            values = values.astype(np.float32)
        values = np.moveaxis(values, self.axis, 0).reshape(values.shape[self.axis], -1)
        finite = np.isfinite(values)
        bad = values.size - int(np.count_nonzero(finite))
        if bad:
            self.nonfinite += bad
            lo = np.where(finite, values, np.inf).min(axis=1)
            hi = np.where(finite, values, -np.inf).max(axis=1)
        else:
            lo, hi = values.min(axis=1), values.max(axis=1)
        lo, hi = lo.astype(np.float64), hi.astype(np.float64)
        if self.channel_lo is None:
            self.channel_lo, self.channel_hi = lo, hi
        else:
            if lo.shape != self.channel_lo.shape:
                raise ValueError(f"per-channel observer saw {lo.size} channels on axis {self.axis}, "
                                 f"{self.channel_lo.size} before")
            np.minimum(self.channel_lo, lo, out=self.channel_lo)
            np.maximum(self.channel_hi, hi, out=self.channel_hi)
        self.count += values.size - bad
        if values.size - bad:
            self.lo = min(self.lo, float(lo.min()))
            self.hi = max(self.hi, float(hi.max()))

    def merge(self, other: Observer) -> None:
        super().merge(other)
        assert isinstance(other, MinMaxObserver)
        if self.axis != other.axis:
            raise ValueError(f"cannot merge min/max observers over axes {self.axis} and {other.axis}")
        if other.channel_lo is not None:
            if self.channel_lo is None:
                self.channel_lo, self.channel_hi = other.channel_lo.copy(), other.channel_hi.copy()
            else:
                np.minimum(self.channel_lo, other.channel_lo, out=self.channel_lo)
                np.maximum(self.channel_hi, other.channel_hi, out=self.channel_hi)

    def compute_range(self) -> tuple[Any, Any]:
        if self.axis is None:
            return self.extremes()
        if self.channel_lo is None:
            return np.zeros(0), np.zeros(0)
        lo = np.where(np.isfinite(self.channel_lo), self.channel_lo, 0.0)  # all-NaN channel: (0, 0)
        hi = np.where(np.isfinite(self.channel_hi), self.channel_hi, 0.0)
        return lo, hi


class StreamingHistogram(Observer):
    """A histogram of ``bins`` bins over ``[-R, R]``, ``R`` a power of two that doubles as needed.

    ``compute_range`` returns the observed min/max; the subclasses choose a range from the counts.
    See the module docstring for why the counts do not depend on batching.
    """

    def __init__(self, bins: int = 8192) -> None:
        super().__init__()
        if bins < 4 or bins & (bins - 1):
            raise ValueError(f"bins must be a power of two >= 4, got {bins}")
        self.bins = bins
        self.exponent = _MIN_EXP  # R = 2**exponent
        self.counts = np.zeros(bins, dtype=np.int64)

    @property
    def radius(self) -> float:
        return math.ldexp(1.0, self.exponent)

    @property
    def bin_width(self) -> float:
        return math.ldexp(2.0, self.exponent) / self.bins

    @property
    def edges(self) -> np.ndarray:
        return (np.arange(self.bins + 1) - self.bins // 2) * self.bin_width

    def _grow(self, exponent: int) -> None:
        """Re-bin onto ``[-2**exponent, 2**exponent]`` by merging groups of 2**k bins."""
        k = exponent - self.exponent
        if k <= 0:
            return
        half = self.bins // 2
        if (1 << min(k, 62)) * 2 > self.bins:  # everything lands in the two bins around zero
            negative, positive = self.counts[:half].sum(), self.counts[half:].sum()
            self.counts[:] = 0
            self.counts[half - 1], self.counts[half] = negative, positive
        else:
            merged = self.counts.reshape(-1, 1 << k).sum(axis=1)
            self.counts[:] = 0
            self.counts[half - merged.size // 2:half + merged.size // 2] = merged
        self.exponent = exponent

    def update(self, array: Any) -> None:
        half = self.bins // 2
        for chunk, lo, hi in self._finite_chunks(array):
            peak = max(-lo, hi)
            if peak > self.radius:
                mantissa, exponent = math.frexp(peak)  # peak = mantissa * 2**exponent, 0.5 <= m < 1
                self._grow(exponent - 1 if mantissa == 0.5 else exponent)
            scale = math.ldexp(1.0, int(math.log2(half)) - self.exponent)  # half / R, a power of two
            _bin(chunk, self.counts, scale)

    def merge(self, other: Observer) -> None:
        assert isinstance(other, StreamingHistogram)
        if other.bins != self.bins:
            raise ValueError(f"cannot merge histograms of {other.bins} and {self.bins} bins")
        super().merge(other)
        counts = other.counts
        if other.exponent > self.exponent:
            self._grow(other.exponent)
        elif other.exponent < self.exponent:
            copy = StreamingHistogram(other.bins)
            copy.counts, copy.exponent = other.counts.copy(), other.exponent
            copy._grow(self.exponent)
            counts = copy.counts
        self.counts += counts

    def compute_range(self) -> tuple[float, float]:
        return self.extremes()

    # -- views of the counts the subclasses search over -------------------------------------------

    def abs_counts(self) -> np.ndarray:
        """Counts of ``|x|`` over ``[0, R]``: ``bins // 2`` bins of the same width."""
        half = self.bins // 2
        return self.counts[half:] + self.counts[:half][::-1]

    def one_sided_counts(self) -> np.ndarray | None:
        """Counts over ``[0, R]`` of ``x`` (all >= 0) or of ``-x`` (all <= 0); None if signed."""
        half = self.bins // 2
        if self.lo >= 0:
            return self.counts[half:].copy()
        if self.hi <= 0:  # -x for x in [-w, 0) is in (0, w]: bin 0 of the mirrored half
            mirrored = self.counts[:half][::-1].copy()
            mirrored[0] += self.counts[half:].sum()  # the zeros
            return mirrored
        return None

    def quantile(self, fraction: float, counts: np.ndarray | None = None, start: float | None = None) -> float:
        """The value below which ``fraction`` of the counted values lie (linear inside a bin).

        ``counts`` defaults to the histogram and ``start`` to its left edge ``-R``.
        """
        counts = self.counts if counts is None else counts
        start = -self.radius if start is None else start
        cumulative = np.cumsum(counts)
        total = cumulative[-1]
        if total == 0:
            return 0.0
        target = fraction * total
        index = min(int(np.searchsorted(cumulative, target, side="left")), counts.size - 1)
        before = cumulative[index - 1] if index else 0
        inside = counts[index]
        offset = (target - before) / inside if inside else 0.0
        return float(start + self.bin_width * (index + min(max(offset, 0.0), 1.0)))


def valid_percentile(percentile: float) -> bool:
    """Whether ``percentile`` can bound a range from above: in (50, 100] (the median or less cannot)."""
    return isinstance(percentile, (int, float)) and not isinstance(percentile, bool) and 50.0 < percentile <= 100.0


class PercentileObserver(StreamingHistogram):
    """Range at percentiles of the values, read off the streaming histogram.

    Asymmetric (default): ``lo`` at the ``100 - percentile`` and ``hi`` at the ``percentile``
    percentile of ``x`` (or at ``lower``/``percentile`` when ``lower`` is given). Symmetric: the
    ``percentile`` percentile ``T`` of ``|x|`` and ``(-T, T)`` (onnxruntime's ``symmetric=True``
    method). Both are clipped to the observed min/max. Accurate to about one bin width (values are
    assumed uniform inside a bin). Source: McKinstry et al. 2019 (see the module docstring).
    """

    def __init__(self, percentile: float = 99.999, *, symmetric: bool = False, lower: float | None = None,
                 bins: int = 8192) -> None:
        super().__init__(bins)
        if not valid_percentile(percentile):
            raise ValueError(f"percentile must be in (50, 100], got {percentile}")
        if lower is not None and not 0.0 <= lower < percentile:
            raise ValueError(f"lower percentile must be in [0, {percentile}), got {lower}")
        if symmetric and lower is not None:
            raise ValueError("a symmetric percentile range takes no lower percentile")
        self.percentile, self.symmetric = percentile, symmetric
        self.lower = 100.0 - percentile if lower is None else lower

    def compute_range(self) -> tuple[float, float]:
        lo, hi = self.extremes()
        if self.count == 0 or lo == hi:
            return lo, hi
        if self.symmetric:
            threshold = self.quantile(self.percentile / 100.0, self.abs_counts(), 0.0)
            return max(lo, -threshold), min(hi, threshold)
        upper = min(max(self.quantile(self.percentile / 100.0), lo), hi)
        lower = min(max(self.quantile(self.lower / 100.0), lo), hi)
        return min(lower, upper), max(lower, upper)


def _group_terms(mass: np.ndarray, support: np.ndarray) -> np.ndarray:
    """``M log(M / S)`` of groups of mass ``M`` over ``S`` non-empty bins; 0 where ``M = 0``."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(mass > 0, mass * np.log(mass / np.where(support > 0, support, 1.0)), 0.0)


def kl_divergences(counts: np.ndarray, levels: int) -> tuple[np.ndarray, np.ndarray]:
    """``KL(P || Q)`` for every candidate threshold of TensorRT's entropy calibration.

    ``counts`` is a histogram of magnitudes whose last bin is not empty. A candidate keeps the first
    ``i`` bins (``levels <= i <= len(counts)``): ``P`` is those bins with the mass beyond (the
    outliers) added to bin ``i - 1``; ``Q`` merges the ``i`` bins (without the outliers) into
    ``levels`` groups (bin ``j`` in group ``floor(j * levels / i)``) and spreads each group's mass
    evenly over its non-empty bins. Both are normalized. A candidate whose bin ``i - 1`` is empty
    while outliers exist has ``P > 0 = Q`` there: divergence ``inf``.

    Vectorized over all candidates in ``O(candidates * levels)``: inside a group of mass ``M`` over
    ``S`` non-empty bins, ``sum c log(c / (M/S)) = sum c log c - M log(M/S)``, read off prefix sums.
    Returns ``(candidates i, divergences)``.
    """
    counts = np.asarray(counts, dtype=np.float64)
    n = counts.size
    candidates = np.arange(min(levels, n), n + 1)
    total = counts.sum()
    with np.errstate(divide="ignore", invalid="ignore"):
        c_log_c = np.where(counts > 0, counts * np.log(np.where(counts > 0, counts, 1.0)), 0.0)
    prefix_mass = np.concatenate([[0.0], np.cumsum(counts)])
    prefix_support = np.concatenate([[0.0], np.cumsum(counts > 0)])
    prefix_clogc = np.concatenate([[0.0], np.cumsum(c_log_c)])
    groups = min(levels, n)
    index = np.int32 if (groups + 1) * (n + 1) < 2**30 else np.int64  # int32 divides ~3x faster on AVX2
    g = np.arange(groups + 1, dtype=index)
    bounds = (g[None, :] * candidates.astype(index)[:, None] + index(groups - 1)) // index(groups)  # ceil(g i / L)
    # A group is a run of bins [lo, lo + w) with w <= ceil(n / L). With few distinct runs (n < L**2,
    # as for the histograms the observer builds) each run's term M log(M / S) is computed once and
    # gathered: O(n * n / L) logs instead of O(C * L) (numpy's float64 log costs ~13 ns an element on
    # an AVX2-only EPYC). The same operations on the same operands either way: the same divergences.
    widest = -(-n // groups)
    if (n + 1) * (widest + 1) < bounds.size:
        lo = np.arange(n + 1)[:, None]
        ends = np.minimum(lo + np.arange(widest + 1), n)
        run_mass, run_support = prefix_mass[ends] - prefix_mass[lo], prefix_support[ends] - prefix_support[lo]
        # the run [lo, hi) is row lo, column hi - lo of the table: flat index lo * widest + hi
        group_terms = _group_terms(run_mass, run_support).take(bounds[:, :-1] * index(widest) + bounds[:, 1:])
        last_run = (bounds[:, -2], bounds[:, -1] - bounds[:, -2])
        mass_last, support_last = run_mass[last_run], run_support[last_run]
    else:
        mass = np.diff(prefix_mass[bounds], axis=1)
        support = np.diff(prefix_support[bounds], axis=1)
        group_terms = _group_terms(mass, support)
        mass_last, support_last = mass[:, -1], support[:, -1]
    kept = prefix_mass[candidates]  # sum of Q before normalization
    divergence_sum = prefix_clogc[candidates] - group_terms.sum(axis=1)
    # the outliers join the last kept bin: replace c log(c/q) by (c+O) log((c+O)/q) there
    last = counts[candidates - 1]
    outliers = total - kept
    q_last = mass_last / np.maximum(support_last, 1.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        correction = np.where(
            outliers > 0,
            (last + outliers) * np.log((last + outliers) / np.where(q_last > 0, q_last, 1.0))
            - np.where(last > 0, last * np.log(np.where(last > 0, last, 1.0) / np.where(q_last > 0, q_last, 1.0)),
                       0.0),
            0.0)
        divergences = (divergence_sum + correction) / total + np.log(kept / total)
    divergences = np.where((outliers > 0) & (last == 0), np.inf, divergences)
    return candidates, np.maximum(divergences, 0.0)


class EntropyObserver(StreamingHistogram):
    """TensorRT's entropy calibration: the threshold minimizing ``KL(P || Q)`` (Migacz 2017).

    A tensor with values of both signs is treated symmetrically, as TensorRT does: the search runs
    on the histogram of ``|x|`` with ``levels`` (128) quantization levels, and the range is
    ``(-T, T)`` clipped to the observed min/max. A one-signed tensor (post-ReLU, sigmoid) runs on
    its own values with ``unsigned_levels`` (256: the codes of uint8 over ``[0, T]``), as NVIDIA's
    pytorch-quantization does (``1 << (num_bits - 1 + unsigned)``).

    Candidates: every bin edge ``T`` from ``max|x| / 16`` up to ``max|x|`` (TensorRT: bins 128 to
    2048 of a 2048-bin histogram over ``[0, max|x|]``; onnxruntime's defaults, 128 bins for 128
    levels, leave a single candidate, so its "entropy" equals min/max). ``T`` is the upper edge of
    the last kept bin; ties go to the largest ``T``. As in pytorch-quantization's
    ``_compute_amax_entropy``, the first bin's count is replaced by the second's: the spike of exact
    zeros after a ReLU would otherwise dominate ``P``. One guard of ours: a candidate must keep at
    least half of the values unclipped (see :meth:`threshold`).

    KL ignores how far clipped values move, so it can clip hard on skewed tensors (hardswish
    outputs, whose negative half piles up at -0.375): :class:`MSEObserver` is the safer default.
    """

    def __init__(self, bins: int = 8192, levels: int = 128, unsigned_levels: int = 256) -> None:
        super().__init__(bins)
        self.levels, self.unsigned_levels = levels, unsigned_levels

    def threshold(self) -> tuple[float, np.ndarray, np.ndarray]:
        """``(T, candidate thresholds, their divergences)`` on the magnitude histogram searched.

        Excluded candidates have divergence ``inf``: below ``max|x| / 16``, or clipping more than
        half of the values (no outlier clipping: without this, a one-signed tensor away from zero,
        such as a LayerNorm variance in [1.2, 10], clips everything into its first non-empty bin,
        where ``P`` and ``Q`` are the same point mass and ``KL = 0``).
        """
        one_sided = self.one_sided_counts()
        counts, levels = (self.abs_counts(), self.levels) if one_sided is None else (one_sided, self.unsigned_levels)
        used = int(np.flatnonzero(counts)[-1]) + 1
        counts = counts[:used].copy()
        if counts.size > 1:
            counts[0] = counts[1]  # the spike of exact zeros (ReLU) would dominate P: NVIDIA's fix
        candidates, divergences = kl_divergences(counts, levels)
        kept = np.cumsum(counts)[candidates - 1]
        valid = (kept >= 0.5 * counts.sum()) & (candidates * 16 >= used)
        divergences = np.where(valid, divergences, np.inf)
        best = int(candidates[divergences.size - 1 - int(np.argmin(divergences[::-1]))])  # the last minimum
        return best * self.bin_width, candidates * self.bin_width, divergences

    def compute_range(self) -> tuple[float, float]:
        lo, hi = self.extremes()
        if self.count == 0 or lo == hi:
            return lo, hi
        threshold = self.threshold()[0]
        return max(lo, -threshold), min(hi, threshold)


class MSEObserver(StreamingHistogram):
    """The range minimizing the expected squared error of uniform quantization with ``levels`` levels.

    For a candidate ``[a, b]`` the error of the values binned in the histogram (taken as uniform
    inside each bin of width ``w``) is::

        E(a, b) = sum_{bins inside} c * Δ²/12  +  sum_{bins outside} c * ((m - clip(m, a, b))² + w²/12)

    with ``Δ = (b - a) / (levels - 1)`` and ``m`` the bin centre: rounding noise inside, clipping
    error outside (Banner et al. 2019, Sung et al. 2015). Candidates are bin edges and always contain
    zero (``a <= 0 <= b``), as the quantizer widens every range to include it. Every term is read
    off prefix sums of ``c``, ``c·m`` and ``c·m²``.

    Asymmetric (default, uint8, 256 levels): a coarse grid over ``(a, b)`` (at most 96 x 96 edges)
    then every edge pair within one coarse step of the best. ``symmetric=True`` (int8 over
    ``[-127, 127]``: 255 levels): every ``T`` of ``(-T, T)``. The range is clipped to the observed
    min/max.
    """

    def __init__(self, bins: int = 8192, levels: int | None = None, *, symmetric: bool = False) -> None:
        super().__init__(bins)
        self.symmetric = symmetric
        self.levels = levels if levels is not None else (255 if symmetric else 256)

    def _prefix(self, counts: np.ndarray, centres: np.ndarray) -> tuple[np.ndarray, ...]:
        c = counts.astype(np.float64)
        zero = np.zeros(1)
        return (np.concatenate([zero, np.cumsum(c)]), np.concatenate([zero, np.cumsum(c * centres)]),
                np.concatenate([zero, np.cumsum(c * centres * centres)]))

    def expected_mse(self, lo_edges: np.ndarray, hi_edges: np.ndarray) -> np.ndarray:
        """``E(a, b)`` / count for edge indices ``lo_edges <= bins // 2 <= hi_edges`` (broadcast)."""
        width = self.bin_width
        centres = (np.arange(self.bins) - self.bins // 2 + 0.5) * width
        s0, s1, s2 = self._prefix(self.counts, centres)
        k, j = np.asarray(lo_edges), np.asarray(hi_edges)
        a = (k - self.bins // 2) * width
        b = (j - self.bins // 2) * width
        below = s2[k] - 2 * a * s1[k] + a * a * s0[k] + s0[k] * width * width / 12
        above_s0, above_s1, above_s2 = s0[-1] - s0[j], s1[-1] - s1[j], s2[-1] - s2[j]
        above = above_s2 - 2 * b * above_s1 + b * b * above_s0 + above_s0 * width * width / 12
        step = (b - a) / (self.levels - 1)
        inside = (s0[j] - s0[k]) * step * step / 12
        return (below + above + inside) / max(s0[-1], 1.0)

    def _symmetric_threshold(self) -> float:
        counts = self.abs_counts()
        width = self.bin_width
        used = int(np.flatnonzero(counts)[-1]) + 1
        centres = (np.arange(counts.size) + 0.5) * width
        s0, s1, s2 = self._prefix(counts, centres)
        t_index = np.arange(1, used + 1)
        t = t_index * width
        over0, over1, over2 = s0[-1] - s0[t_index], s1[-1] - s1[t_index], s2[-1] - s2[t_index]
        clip = over2 - 2 * t * over1 + t * t * over0 + over0 * width * width / 12
        step = 2 * t / (self.levels - 1)
        error = clip + s0[t_index] * step * step / 12
        return float(t[int(np.argmin(error))])

    def compute_range(self) -> tuple[float, float]:
        lo, hi = self.extremes()
        if self.count == 0 or lo == hi:
            return lo, hi
        if self.symmetric:
            threshold = self._symmetric_threshold()
            return max(lo, -threshold), min(hi, threshold)
        half = self.bins // 2
        nonzero = np.flatnonzero(self.counts)
        first, last = min(int(nonzero[0]), half), max(int(nonzero[-1]) + 1, half)
        lo_axis = np.arange(first, half + 1)  # edges a: from below the minimum up to zero
        hi_axis = np.arange(half, last + 1)  # edges b: from zero up to above the maximum
        best = self._grid_search(lo_axis, hi_axis)
        a, b = (best[0] - half) * self.bin_width, (best[1] - half) * self.bin_width
        return max(lo, a), min(hi, b)

    def _grid_search(self, lo_axis: np.ndarray, hi_axis: np.ndarray, coarse: int = 96) -> tuple[int, int]:
        def search(ks: np.ndarray, js: np.ndarray) -> tuple[int, int]:
            kk, jj = np.meshgrid(ks, js, indexing="ij")
            error = self.expected_mse(kk, jj)
            error = np.where(jj > kk, error, np.inf)  # an empty range is no candidate
            position = np.unravel_index(int(np.argmin(error)), error.shape)
            return int(kk[position]), int(jj[position])

        def thin(axis: np.ndarray) -> tuple[np.ndarray, int]:
            step = max(1, -(-axis.size // coarse))
            picked = axis[::step]
            return (picked if picked[-1] == axis[-1] else np.append(picked, axis[-1])), step

        lo_grid, lo_step = thin(lo_axis)
        hi_grid, hi_step = thin(hi_axis)
        k, j = search(lo_grid, hi_grid)
        if lo_step == 1 and hi_step == 1:
            return k, j
        near = lambda axis, centre, step: axis[(axis >= centre - step) & (axis <= centre + step)]  # noqa: E731
        return search(near(lo_axis, k, lo_step), near(hi_axis, j, hi_step))


OBSERVERS = {"minmax": MinMaxObserver, "percentile": PercentileObserver, "entropy": EntropyObserver,
             "mse": MSEObserver}


def make_observer_factory(method: str, **options: Any):
    """A factory ``f(tensor_name) -> observer`` for a method name of :data:`OBSERVERS`.

    ``options`` go to the observer's constructor (e.g. ``percentile=99.99``, ``bins=4096``,
    ``symmetric=True``); options that the method does not take are ignored, so callers can pass
    ``percentile`` whatever the method.
    """
    if method not in OBSERVERS:
        raise ValueError(f"unknown calibration method {method!r}; choose one of {', '.join(OBSERVERS)}")
    cls = OBSERVERS[method]
    import inspect

    accepted = set(inspect.signature(cls).parameters)
    kwargs = {key: value for key, value in options.items() if key in accepted}
    return lambda name: cls(**kwargs)
