"""Observers against brute-force references, and independence from how samples are batched."""

from __future__ import annotations

import numpy as np
import pytest

from qcompiler.calibration import (EntropyObserver, MinMaxObserver, MSEObserver, PercentileObserver,
                                   StreamingHistogram)
from qcompiler.calibration.observers import _abs_histogram, kl_thresholds

RNG = np.random.default_rng(42)
DATA = np.concatenate([RNG.standard_normal(200_000), RNG.standard_normal(50) * 30]).astype(np.float32)


def feed(observer, data: np.ndarray, batches: int):
    for part in np.array_split(data, batches):
        observer.update(part)
    return observer


def test_minmax_is_exact():
    assert feed(MinMaxObserver(), DATA, 7).compute_range() == (float(DATA.min()), float(DATA.max()))


@pytest.mark.parametrize("percentile", [99.0, 99.9, 99.99])
def test_percentile_matches_numpy(percentile):
    lo, hi = feed(PercentileObserver(percentile), DATA, 1).compute_range()
    width = 2 * max(abs(DATA.min()), abs(DATA.max())) / 2048
    assert abs(hi - np.percentile(DATA, percentile)) <= 2 * width
    assert abs(lo - np.percentile(DATA, 100 - percentile)) <= 2 * width


@pytest.mark.parametrize("make", [lambda: PercentileObserver(99.99), MSEObserver, EntropyObserver])
def test_batching_and_order_do_not_change_the_range(make):
    dense = RNG.laplace(size=200_000).astype(np.float32)  # heavy-tailed, but no sparse outliers
    whole = feed(make(), dense, 1).compute_range()
    shuffled = dense.copy()
    np.random.default_rng(1).shuffle(shuffled)
    small_first = dense[np.argsort(np.abs(dense))]  # small values first: the histogram range must grow
    width = 2 * 2 * max(abs(dense.min()), abs(dense.max())) / 2048  # one bin (the radius is < 2 max|x|)
    for data, batches in ((dense, 16), (shuffled, 16), (small_first, 64)):
        lo, hi = feed(make(), data, batches).compute_range()
        assert abs(lo - whole[0]) <= width and abs(hi - whole[1]) <= width, (lo, hi, whole)


def test_histogram_doubling_keeps_every_count():
    histogram = StreamingHistogram(bins=64)
    histogram.update(np.array([0.1, -0.1], np.float32))
    histogram.update(np.array([3.0, -5.0], np.float32))
    assert histogram.counts.sum() == 4 and histogram.radius >= 5.0


def brute_force_kl(abs_counts: np.ndarray, i: int, levels: int) -> float:
    p = abs_counts[:i].astype(np.float64).copy()
    p[-1] += abs_counts[i:].sum()
    q = np.zeros(i)
    for level in range(levels):
        members = [j for j in range(i) if int(j * levels / i) == level]
        support = [j for j in members if abs_counts[j] > 0]
        for j in support:
            q[j] = abs_counts[members].sum() / len(support)
    p, q = p / p.sum(), q / q.sum()
    mask = p > 0
    return float(np.sum(p[mask] * np.log(p[mask] / np.where(q[mask] > 0, q[mask], 1e-12))))


def test_kl_search_matches_brute_force():
    counts = np.histogram(np.abs(RNG.standard_normal(5000)), bins=64)[0]
    candidates, divergences = kl_thresholds(counts, levels=8, stride=4)
    for i, divergence in zip(candidates, divergences):
        assert divergence == pytest.approx(brute_force_kl(counts, int(i), 8), rel=1e-9, abs=1e-12)


def test_entropy_clips_outliers_and_uses_many_candidates():
    lo, hi = feed(EntropyObserver(), DATA, 4).compute_range()
    assert 2.0 < hi < float(DATA.max()) and -float(DATA.max()) < lo < -2.0
    candidates, _ = kl_thresholds(_abs_histogram(feed(EntropyObserver(), DATA, 1).counts))
    assert candidates.size > 100  # a real search, not onnxruntime's single default candidate


def brute_force_mse(data: np.ndarray, lo: float, hi: float, levels: int = 256) -> float:
    step = (hi - lo) / (levels - 1)
    q = np.clip(np.round((data - lo) / step), 0, levels - 1) * step + lo
    return float(np.mean((q - data) ** 2))


def test_mse_range_is_near_brute_force_optimum():
    data = DATA[:50_000]
    lo, hi = feed(MSEObserver(), data, 3).compute_range()
    full = (float(data.min()), float(data.max()))
    grid = [(full[0] * f, full[1] * f) for f in np.linspace(1.0, 0.05, 100)]
    best = min(brute_force_mse(data, *r) for r in grid)
    assert brute_force_mse(data, lo, hi) <= 1.25 * best
    assert brute_force_mse(data, lo, hi) < brute_force_mse(data, *full)
