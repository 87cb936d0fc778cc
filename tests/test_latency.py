"""Latencies measured in alternation, and ratios paired round by round."""

from __future__ import annotations

import numpy as np
import pytest

from qcompiler.ir import to_proto
from qcompiler.ir.testing import parse
from qcompiler.latency import Latency, measure_latencies, paired_ratio


def test_every_round_keeps_its_median():
    model = to_proto(parse("""
    <ir_version: 8, opset_import: ["" : 13]>
    g (float[4,64] x) => (float[4,64] y) {
      y = Relu(x)
    }""")).SerializeToString()
    feed = {"x": np.ones((4, 64), np.float32)}
    timings = measure_latencies([model, model], feed, threads=1, runs=3, min_seconds=0.0, rounds=4)
    for timing in timings:
        assert len(timing.round_ms) == 4 and timing.runs == 12
        assert timing.min_ms <= min(timing.round_ms) <= timing.median_ms <= max(timing.round_ms)


def _rounds(*ms: float) -> Latency:
    return Latency(float(np.median(ms)), max(ms), min(ms), len(ms), 2, tuple(ms))


def test_a_slow_phase_that_starts_mid_round_does_not_move_the_paired_ratio():
    """The machine slows 3x from the middle of round 3 on: the medians of all runs say B is 3.3x slower than
    A, the rounds say 1.1x, as it is."""
    a = _rounds(1.0, 1.0, 1.0, 3.0, 3.0)
    b = _rounds(1.1, 1.1, 3.3, 3.3, 3.3)
    c = _rounds(2.0, 2.0, 6.0, 6.0, 6.0)
    assert b.median_ms / a.median_ms == pytest.approx(3.3)
    assert paired_ratio(b, [a]) == pytest.approx(1.1)
    assert paired_ratio(b, [c, a]) == pytest.approx(1.1)  # the faster of the others
    with pytest.raises(ValueError):
        paired_ratio(b, [_rounds(1.0, 1.0)])  # not measured together


def test_a_model_that_ties_with_the_faster_of_two_others_reads_as_fast_as_it():
    """C runs as fast as A, B is slower but faster than A in two rounds: against the faster of A and B in
    each round (a minimum of noisy values), C would read 5 % slower; against A, the faster model, it ties."""
    a = _rounds(1.0, 1.0, 1.3, 1.0, 1.3)
    b = _rounds(1.2, 1.2, 0.95, 1.2, 0.95)
    c = _rounds(1.0, 1.3, 1.0, 1.3, 1.0)
    assert np.median([x / min(y, z) for x, y, z in zip(c.round_ms, a.round_ms, b.round_ms)]) == pytest.approx(1 / 0.95)
    assert paired_ratio(c, [a, b]) == pytest.approx(1.0)
    assert paired_ratio(c, [b, a]) == pytest.approx(1.0)
