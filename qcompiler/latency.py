"""onnxruntime latency measurement, shared by the compile-time latency guard and the benchmarks."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Latency:
    """Milliseconds per run over ``runs`` runs after warm-up; ``round_ms``: the median of each round, when
    measured in rounds (:func:`measure_latencies`), for ratios paired round by round (:func:`paired_ratio`)."""

    median_ms: float
    p90_ms: float
    min_ms: float
    runs: int
    threads: int
    round_ms: tuple[float, ...] = ()


def paired_ratio(latency: Latency, others: list[Latency]) -> float:
    """The median over rounds of ``latency``'s round median over the faster model's of ``others`` in the same
    round, of latencies measured together (:func:`measure_latencies`): a machine whose speed changes for seconds at
    a time (a virtual CPU taken away now and then) shifts whole rounds, and with them each model's median
    of all runs, unevenly among the models; within a round they ran seconds apart, so the ratio holds.

    The faster of ``others`` is one model for all rounds: the one whose own paired ratio to the first is the
    lowest. Taking the faster in each round instead would compare against the minimum of noisy values,
    which is biased low: against two models that run exactly as fast as ``latency``, it would read slower."""
    if len(others) > 1:
        others = [min(others, key=lambda other: paired_ratio(other, others[:1]))]
    (other,) = others
    rounds = zip(latency.round_ms, other.round_ms, strict=True)
    return float(np.median([mine / theirs for mine, theirs in rounds]))


def latency_feed(model: bytes | str, feed: dict[str, np.ndarray], *, threads: int = 2,
                 slow_seconds: float = 1.0) -> tuple[dict[str, np.ndarray], float | None]:
    """The feed a compile-time latency comparison runs: ``feed``, or its first sample when one run of
    ``model`` on the whole feed takes over ``slow_seconds`` (then also that run's seconds, else None).

    A large encoder on a batched calibration feed would otherwise spend minutes of a compile on timing
    runs (``benchmarks/results/transformer_default.md``). One sample keeps the shapes
    per sample, and the comparison is a ratio of two models on the same feed. Only a feed whose inputs
    all share their first dimension (the batch) is cut; the model must then accept the cut feed, which
    one run checks, else the whole feed is kept.
    """
    from .bench.session import open_session

    batch = {v.shape[0] if v.ndim else None for v in feed.values()}
    if len(batch) != 1 or (size := batch.pop()) is None or size < 2:
        return feed, None
    session = open_session(model, threads)
    names = {i.name for i in session.get_inputs()}
    fed = {k: v for k, v in feed.items() if k in names}
    start = time.perf_counter()
    session.run(None, fed)
    seconds = time.perf_counter() - start
    if seconds <= slow_seconds:
        return feed, None
    sample = {k: v[:1] for k, v in feed.items()}
    try:
        session.run(None, {k: v for k, v in sample.items() if k in names})
    except Exception:  # onnxruntime's errors share no base class: a fixed batch dimension, say
        return feed, None
    return sample, seconds


def measure_latency(model: bytes | str, feeds: dict[str, np.ndarray], *, threads: int = 2,
                    runs: int = 20) -> Latency:
    """Latency of one model: one warm-up run, then the median of ``runs`` runs."""
    return measure_latencies([model], feeds, threads=threads, runs=runs, min_seconds=0.0, rounds=1)[0]


def measure_latencies(models: list[bytes | str], feeds: dict[str, np.ndarray], *, threads: int = 2,
                      runs: int = 5, min_seconds: float = 0.2, rounds: int = 3) -> list[Latency]:
    """Latency of several models measured in alternation, so drift of the machine hits all alike.

    Each of ``rounds`` rounds runs every model for at least ``runs`` runs and ``min_seconds``; the
    result per model is the median over all its runs. Before that, each model is warmed up, untimed,
    for one run and at least one round's time: a 10 µs model measured right after its session was
    created otherwise reads up to 1.7x faster or slower than it runs (digits_mlp, first calls in a
    fresh process).
    """
    from .bench.session import open_session

    sessions = []
    for model in models:
        session = open_session(model, threads)
        names = {i.name for i in session.get_inputs()}
        fed = {k: v for k, v in feeds.items() if k in names}
        warm_until = time.perf_counter() + min_seconds / rounds
        session.run(None, fed)
        while time.perf_counter() < warm_until:
            session.run(None, fed)
        sessions.append((session, fed))
    times: list[list[float]] = [[] for _ in models]
    round_ms: list[list[float]] = [[] for _ in models]
    for _ in range(rounds):
        for (session, fed), record, medians in zip(sessions, times, round_ms):
            start_round = time.perf_counter()
            count = 0
            while count < runs or time.perf_counter() - start_round < min_seconds / rounds:
                start = time.perf_counter()
                session.run(None, fed)
                record.append((time.perf_counter() - start) * 1000.0)
                count += 1
            medians.append(float(np.median(record[-count:])))
    return [Latency(float(np.median(t)), float(np.percentile(t, 90)), float(np.min(t)), len(t), threads, tuple(r))
            for t, r in zip(times, round_ms)]
