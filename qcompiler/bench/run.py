"""``qcompiler bench``: latency, throughput, size, memory and output agreement of ONNX models.

For each model, in this order:

1. onnxruntime opens it (CPU, ``threads`` intra-op threads, one inter-op thread, all optimizations);
2. with several models, each runs on every feed and its outputs are compared with the first model's
   (:mod:`qcompiler.bench.agreement`), output by output, matched by name;
3. its peak memory: a separate process opens the session and runs the first feed once, and reports its
   own high-water mark (:mod:`qcompiler.bench.memory`): ``peak`` is that process's peak resident size,
   ``session`` the part above what it held after importing onnxruntime;
4. latency on the first feed (resized to ``batch`` rows when asked): one warm-up run per model, then
   three rounds in which every model runs at least ``runs / 3`` times and ``min_seconds / 3`` seconds,
   models in alternation so that drift of the machine hits all alike (:mod:`qcompiler.latency`);
   median, 90th percentile and minimum over all runs; throughput = batch rows per second at the median.

The result is a JSON-ready dict (see :func:`bench`); :mod:`qcompiler.bench.report` prints it.
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ..calibration.data import open_calibration
from ..errors import ModelLoadError
from .agreement import Agreement
from .inputs import BenchInputError, common_inputs, feed_batch, open_feeds, random_feed, with_batch
from .memory import ChildError, run_child
from .report import machine
from .session import open_session

SESSION_SCRIPT = str(Path(__file__).with_name("session.py"))


def _open(path: str, threads: int):
    try:
        return open_session(path, threads)
    except Exception as exc:
        raise ModelLoadError(f"{path}: onnxruntime cannot load it: {str(exc).strip().splitlines()[0][:300]}") from None


def _run(session, path: str, feed: dict[str, np.ndarray], where: str) -> dict[str, np.ndarray]:
    try:
        return dict(zip([o.name for o in session.get_outputs()], session.run(None, feed)))
    except Exception as exc:
        raise BenchInputError(f"{path}: onnxruntime failed on {where}: "
                              f"{str(exc).strip().splitlines()[0][:300]}") from None


def _agreement(paths: list[str], threads: int, feeds: Any, say: Callable[[str], None]) -> list[dict]:
    """Per model after the first: {output name: agreement numbers} over all feeds."""
    sessions = [_open(path, threads) for path in paths]
    names = [o.name for o in sessions[0].get_outputs()]
    for path, session in zip(paths[1:], sessions[1:]):
        missing = sorted(set(names) - {o.name for o in session.get_outputs()})
        if missing:
            raise BenchInputError(f"{path}: has no output(s) {missing} of {paths[0]}: cannot compare their outputs")
    stats = [{name: Agreement() for name in names} for _ in paths[1:]]
    total = getattr(feeds, "length", None)
    step = max(1, (total or 10) // 10)
    for index, (where, feed) in enumerate(feeds.items()):
        if index % step == 0:
            say(f"agreement: feed {index + 1}/{total or '?'}")
        reference = _run(sessions[0], paths[0], feed, where)
        for path, session, per_output in zip(paths[1:], sessions[1:], stats):
            outputs = _run(session, path, feed, where)
            for name, accumulator in per_output.items():
                if outputs[name].shape != reference[name].shape:
                    raise BenchInputError(f"{path}: output {name!r} has shape {list(outputs[name].shape)} on "
                                          f"{where}, {paths[0]} gives {list(reference[name].shape)}")
                accumulator.update(reference[name], outputs[name])
    return [{name: _rounded_agreement(a.result()) for name, a in per_output.items()} for per_output in stats]


def _rounded_agreement(numbers: dict) -> dict:
    sqnr = numbers["sqnr_db"]
    return {"sqnr_db": None if sqnr is None else round(sqnr, 2), "cos_mean": round(numbers["cos_mean"], 6),
            "cos_min": round(numbers["cos_min"], 6), "top1": round(numbers["top1"], 4),
            "max_abs": float(f"{numbers['max_abs']:.4g}")}


def _memory(path: str, feed_file: str, threads: int) -> dict:
    try:
        child = run_child(f"{SESSION_SCRIPT}:run_once", os.path.abspath(path), feed_file, threads)
    except ChildError as exc:
        raise BenchInputError(f"{path}: the memory measurement failed: {exc}") from None
    return {"peak": round(child.peak_mb, 1), "session": round(child.peak_mb - child.start_mb, 1)}


def bench(models: list[str], *, inputs: str | None = None, calib: Any = None, threads: int = 2, runs: int = 30,
          batch: int | None = None, min_seconds: float = 1.0, memory: bool = True,
          progress: Callable[[str], None] | None = None) -> dict:
    """Benchmark ``models`` (paths); returns a JSON-ready dict.

    ``{"machine", "threads", "runs", "batch", "inputs", "models": [{"model", "size_mb", "latency_ms":
    {"median", "p90", "min", "runs"}, "throughput_per_s", "speedup", "memory_mb": {"peak", "session"} | None,
    "agreement": {output: {"sqnr_db", "cos_mean", "cos_min", "top1", "max_abs"}} | None}]}``; ``speedup``
    is the first model's median over this one's, agreement is None for the first model. Raises
    :class:`~qcompiler.errors.UserError` for missing models, models with different inputs, and feeds
    that do not fit them.
    """
    import onnxruntime

    from ..latency import measure_latencies

    onnxruntime.set_default_logger_severity(3)  # the latency sessions: errors only
    say = progress or (lambda message: None)
    if not models:
        raise BenchInputError("no model to benchmark")
    if batch is not None and batch < 1:
        raise BenchInputError(f"--batch {batch}: must be at least 1")
    if runs < 1 or threads < 1:
        raise BenchInputError("--runs and --threads must be at least 1")
    specs = common_inputs(models)
    feeds, description = open_feeds(specs, inputs, calib)
    first = next(iter(feeds)) if feeds is not None else random_feed(specs, batch or 1)
    timed_feed = with_batch(first, specs, batch) if batch is not None else first
    rows = feed_batch(timed_feed)
    agreement = [None] * len(models)
    if len(models) > 1:
        compared = feeds if feeds is not None else open_calibration([first], specs)
        agreement[1:] = _agreement(models, threads, compared, say)
    else:
        _open(models[0], threads)  # a model onnxruntime cannot load is a user error, before measuring
    memory_mb = [None] * len(models)
    if memory:
        with tempfile.TemporaryDirectory() as scratch:
            feed_file = os.path.join(scratch, "feed.npz")
            np.savez(feed_file, **timed_feed)
            for index, path in enumerate(models):
                say(f"memory: {path} ({index + 1}/{len(models)})")
                memory_mb[index] = _memory(path, feed_file, threads)
    per_round = math.ceil(runs / 3)
    say(f"latency: {len(models)} model(s) in alternation, 3 rounds of >= {per_round} runs and "
        f">= {min_seconds / 3:.2f} s each, {threads} thread(s), batch {rows}")
    latencies = measure_latencies(list(models), timed_feed, threads=threads, runs=per_round,
                                  min_seconds=min_seconds, rounds=3)
    results = []
    for index, (path, latency) in enumerate(zip(models, latencies)):
        results.append({
            "model": path,
            "size_mb": round(os.path.getsize(path) / 2**20, 3),
            "latency_ms": {"median": round(latency.median_ms, 4), "p90": round(latency.p90_ms, 4),
                           "min": round(latency.min_ms, 4), "runs": latency.runs},
            "throughput_per_s": round(rows * 1000.0 / latency.median_ms, 1),
            "speedup": round(latencies[0].median_ms / latency.median_ms, 3),
            "memory_mb": memory_mb[index],
            "agreement": agreement[index],
        })
    return {"machine": machine(), "threads": threads, "runs": runs, "batch": rows, "inputs": description,
            "models": results}

