"""onnxruntime latency measurement, shared by the compile-time latency guard and the benchmarks."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Latency:
    """Milliseconds per run over ``runs`` runs after warm-up."""

    median_ms: float
    p90_ms: float
    min_ms: float
    runs: int
    threads: int


def measure_latency(model: bytes | str, feeds: dict[str, np.ndarray], *, threads: int = 2, runs: int = 10,
                    warmup: int = 2) -> Latency:
    """Run an onnxruntime CPU session (all graph optimizations) ``warmup + runs`` times."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    names = {i.name for i in session.get_inputs()}
    feeds = {k: v for k, v in feeds.items() if k in names}
    for _ in range(warmup):
        session.run(None, feeds)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        session.run(None, feeds)
        times.append((time.perf_counter() - start) * 1000.0)
    return Latency(float(np.median(times)), float(np.percentile(times, 90)), float(np.min(times)), runs, threads)
