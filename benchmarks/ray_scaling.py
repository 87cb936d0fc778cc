"""Scale-out on a local Ray cluster: ``analyze`` and calibration with 1 and 2 Ray workers, and the local path.

Starts one local Ray cluster (``--cpus``, default: every core), then, alternating the candidates in each
repetition (the median of ``--repeats`` is reported, so a burst of load from elsewhere hits every
candidate alike):

* **analyze**: ``qcompiler.analyze`` of the model with ``executor=None`` (the local path: this process,
  configurations evaluated on one thread per CPU), and with a :class:`RayExecutor` of 1 and of 2 workers
  (one CPU per task); every onnxruntime session runs on one thread (``qcompiler.scaleout.SESSION_THREADS``).
  Every report must equal the local one (``seconds`` aside). The time of each step (calibration, float
  sanity, per-layer, kernels, distributions) is kept, from the ``progress`` callback.
* **calibration**: the activations of the ``int8`` plan observed (MSE histograms) on ``--samples`` feeds:
  ``qcompiler.calibration.collect`` in this process against ``collect_sharded`` with 1 and 2 workers;
  the merged observers must give the same ranges. The kit has 64 text lines for ocr_rec_ppocrv4: the
  256 samples are those files, each listed 4 times (links in a temporary folder).
* **inputs of the planning page** (``docs/scale-out.md``): bytes of the shipped evaluator state, time of
  its ``ray.put``, median seconds of one configuration's task, evaluations per analysis.

Usage (from the checkout root; ``pip install '.[ray]'``)::

    python benchmarks/ray_scaling.py [--model /root/realmodels/ocr_rec_ppocrv4.onnx]
        [--calib /root/realmodels/data/calib_npz/ocr_rec_ppocrv4] [--repeats 3] [--samples 256]
        [--skip analyze|calibration] [--json benchmarks/results/ray_scaling.json]

Timings are only comparable within one run (side by side); the load average before and after is
recorded with them, because a shared machine makes every number noisier.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import pickle
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def _timed_analyze(model: str, calib: str, target: str, executor) -> tuple[float, dict, dict[str, float]]:
    from qcompiler.analysis import analyze

    marks: list[tuple[str, float]] = []
    start = time.perf_counter()
    with open(os.devnull, "w") as quiet, contextlib.redirect_stderr(quiet):  # the step marks, not the bars
        report = analyze(model, calib, target=target, executor=executor,
                         progress=lambda message: marks.append((message.split(" ")[0], time.perf_counter())))
    end = time.perf_counter()
    steps = {name: (marks[i + 1][1] if i + 1 < len(marks) else end) - t for i, (name, t) in enumerate(marks)}
    return end - start, report, steps


def bench_analyze(args, executors: dict) -> dict:
    rows: dict[str, list[float]] = {name: [] for name in executors}
    steps: dict[str, list[dict]] = {name: [] for name in executors}
    reference = None
    for repeat in range(args.repeats):
        order = list(executors) if repeat % 2 == 0 else list(reversed(executors))
        for name in order:
            seconds, report, marks = _timed_analyze(args.model, args.calib, args.target, executors[name])
            report.pop("seconds")
            if reference is None:
                reference = report
            elif report != reference:
                sys.exit(f"analyze with {name} gave a different report than the first run")
            rows[name].append(seconds)
            steps[name].append(marks)
            print(f"analyze {name:>8}: {seconds:7.1f} s   steps {json.dumps({k: round(v, 1) for k, v in marks.items()})}",
                  flush=True)
    return {"seconds": rows, "median": {n: statistics.median(v) for n, v in rows.items()}, "steps": steps,
            "evaluations": reference["evaluations"], "layers": len(reference["layers"]), "identical": True}


def bench_calibration(args, executors: dict) -> dict:
    from qcompiler import ir
    from qcompiler.assignment import assign
    from qcompiler.calibration import collect, make_observer_factory, model_inputs
    from qcompiler.calibration.data import npz_files
    from qcompiler.pass_manager import PassManager
    from qcompiler.pipelines import canonicalize
    from qcompiler.scaleout.calibration import collect_sharded
    from qcompiler.targets import get_target

    model = ir.load(args.model)
    PassManager(canonicalize())(model)
    assign(model, target=get_target(args.target), exclude=[], per_channel=True)
    proto, names = ir.to_proto(model), [v.name for v in model.plan.pending]
    files = npz_files(Path(args.calib))
    rows: dict[str, list[float]] = {name: [] for name in executors}
    with tempfile.TemporaryDirectory(prefix="ray-scaling-") as folder:
        for i in range(args.samples):  # the kit's files repeated to reach --samples feeds
            os.symlink(files[i % len(files)], Path(folder) / f"feed_{i:05d}.npz")
        reference = None
        for repeat in range(args.repeats):
            order = list(executors) if repeat % 2 == 0 else list(reversed(executors))
            for name in order:
                start = time.perf_counter()
                if executors[name] is None:
                    observers = collect(proto, names, folder, make_observer_factory("mse"))
                else:
                    observers = collect_sharded(executors[name], proto, names, folder, model_inputs(model), "mse",
                                                99.999)
                seconds = time.perf_counter() - start
                ranges = [observers[n].compute_range() for n in names]
                if reference is None:
                    reference = ranges
                elif not all(np.array_equal(a, b) for a, b in zip(ranges, reference)):
                    sys.exit(f"calibration with {name} gave different ranges")
                rows[name].append(seconds)
                print(f"calibration {name:>8}: {seconds:7.1f} s ({args.samples} feeds, {len(names)} tensors)", flush=True)
    return {"samples": args.samples, "tensors": len(names), "seconds": rows,
            "median": {n: statistics.median(v) for n, v in rows.items()}, "identical": True}


def bench_configurations(args, executors: dict) -> dict:
    """The step ``analyze`` farms out, alone: the first ``--configurations`` per-layer configurations (each
    layer quantized alone) measured by each candidate from an empty cache; the errors must be identical."""
    from qcompiler.analysis import _calibrated
    from qcompiler.options import CompileOptions
    from qcompiler.scaleout import using

    with using(executors["ray-2"]):  # the calibration shards; not timed
        model, mixed, _ = _calibrated(args.model, "int8", CompileOptions(calib=args.calib, target=args.target), None)
    evaluator = mixed.evaluator(model)
    layers = mixed.layers(model)
    configurations = [frozenset(layers) - {name} for name in layers[:args.configurations]]
    rows: dict[str, list[float]] = {name: [] for name in executors}
    reference = None
    for repeat in range(args.repeats):
        order = list(executors) if repeat % 2 == 0 else list(reversed(executors))
        for name in order:
            evaluator.cache, evaluator.keys, evaluator.evaluations, evaluator.remote = {}, {}, 0, None
            start = time.perf_counter()
            with using(executors[name]):
                errors = [e.errors for e in evaluator.evaluate_all(configurations)]
            rows[name].append(time.perf_counter() - start)
            if reference is None:
                reference = errors
            elif errors != reference:
                first = next(i for i, (a, b) in enumerate(zip(errors, reference)) if a != b)
                sys.exit(f"configurations measured with {name} differ from the first run's: configuration {first}: "
                         f"{errors[first]} against {reference[first]}")
            print(f"configurations {name:>8}: {rows[name][-1]:7.1f} s ({len(configurations)} of {3 * len(layers) + 1} "
                  f"per analysis)", flush=True)
    return {"configurations": len(configurations), "layers": len(layers), "seconds": rows,
            "median": {n: statistics.median(v) for n, v in rows.items()}, "identical": True}


def planning_inputs(args, executor) -> dict:
    """Bytes shipped per analysis, the ray.put time, and the median time of one configuration's task."""
    from qcompiler.analysis import _calibrated
    from qcompiler.options import CompileOptions
    from qcompiler.scaleout.sensitivity import Replica
    from qcompiler.sensitivity import quantizable_layers

    model, mixed, _ = _calibrated(args.model, "int8", CompileOptions(calib=args.calib, target=args.target), None)
    evaluator = mixed.evaluator(model)
    layers = quantizable_layers(model)
    replica = Replica.of(evaluator)
    payload = pickle.dumps(replica, protocol=5)
    start = time.perf_counter()
    handle = executor.share(replica)
    put_seconds = time.perf_counter() - start
    configurations = [frozenset(layers) - {name} for name in layers[:8]]
    times = executor.map(_timed_measure, configurations, handle)
    start = time.perf_counter()
    rebuilt = Replica.of(evaluator).evaluator()  # what a worker does once: the model from its bytes
    from_proto_seconds = time.perf_counter() - start
    parts = [_evaluation_parts(rebuilt, configuration) for configuration in configurations[:3]]
    feed_bytes = sum(a.nbytes for feed in evaluator.feeds for a in feed.values())
    return {"replica_bytes": len(payload), "model_bytes": len(replica.base), "feed_bytes": feed_bytes,
            "reference_bytes": sum(np.asarray(a).nbytes for out in evaluator.reference for a in out),
            "put_seconds": put_seconds, "task_seconds_median": statistics.median(times),
            "task_seconds": times, "layers": len(layers), "feeds": len(evaluator.feeds),
            "from_proto_seconds": from_proto_seconds,
            "evaluation_parts": {k: statistics.median(p[k] for p in parts) for k in parts[0]}}


def _evaluation_parts(evaluator, configuration) -> dict[str, float]:
    """One configuration's evaluation split into its parts (seconds; in this process, 1 thread)."""
    import onnxruntime as ort

    from qcompiler import ir
    from qcompiler.lowering import lower

    marks = [time.perf_counter()]
    model = evaluator.build(configuration)
    marks.append(time.perf_counter())
    data = ir.to_proto(lower(model)).SerializeToString()
    marks.append(time.perf_counter())
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
    marks.append(time.perf_counter())
    for feed in evaluator.feeds:
        session.run(None, feed)
    marks.append(time.perf_counter())
    return {"build": marks[1] - marks[0], "lower_serialize": marks[2] - marks[1], "session": marks[3] - marks[2],
            "run_per_feed": (marks[4] - marks[3]) / len(evaluator.feeds), "bytes": len(data)}


def _timed_measure(replica, configuration):
    from qcompiler.scaleout.sensitivity import measure

    replica.evaluator()  # built once per worker: not part of a configuration's cost
    start = time.perf_counter()
    measure(replica, configuration)
    return time.perf_counter() - start


def _warm(_shared, _item) -> int:
    """A task that imports what the measured tasks import (so no candidate pays a worker's start-up)."""
    import qcompiler.scaleout.calibration
    import qcompiler.scaleout.sensitivity  # noqa: F401

    time.sleep(1.0)  # both tasks in flight at once: one per worker process
    return os.getpid()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="/root/realmodels/ocr_rec_ppocrv4.onnx")
    parser.add_argument("--calib", default="/root/realmodels/data/calib_npz/ocr_rec_ppocrv4")
    parser.add_argument("--target", default="x86-avx2")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--samples", type=int, default=256)
    parser.add_argument("--cpus", type=int, default=os.cpu_count())
    parser.add_argument("--configurations", type=int, default=0, metavar="K",
                        help="also time the farmed-out step alone on K configurations (a quick check)")
    parser.add_argument("--skip", action="append", default=[], choices=("analyze", "calibration", "planning"))
    parser.add_argument("--json", default="benchmarks/results/ray_scaling.json")
    args = parser.parse_args()

    import ray

    from qcompiler.ir.serde import write_atomically
    from qcompiler.scaleout.ray_executor import RayExecutor

    load_before = os.getloadavg()
    start = time.perf_counter()
    ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False)
    result = {"model": args.model, "target": args.target, "cpus": args.cpus, "repeats": args.repeats,
              "ray_init_seconds": time.perf_counter() - start, "loadavg_before": load_before}
    executors = {"local": None, "ray-1": RayExecutor(workers=1), "ray-2": RayExecutor(workers=2)}
    result["worker_pids"] = executors["ray-2"].map(_warm, range(args.cpus))
    result["warm_up_seconds"] = time.perf_counter() - start
    if "calibration" not in args.skip:
        result["calibration"] = bench_calibration(args, executors)
    if args.configurations:
        result["configurations"] = bench_configurations(args, executors)
    if "analyze" not in args.skip:
        result["analyze"] = bench_analyze(args, executors)
    if "planning" not in args.skip:
        result["planning"] = planning_inputs(args, executors["ray-2"])
    result["loadavg_after"] = os.getloadavg()
    for part in ("calibration", "configurations", "analyze"):
        if part in result:
            median = result[part]["median"]
            result[part]["speedup_2_over_1"] = median["ray-1"] / median["ray-2"]
            print(f"{part}: local {median['local']:.1f} s, ray 1 worker {median['ray-1']:.1f} s, 2 workers "
                  f"{median['ray-2']:.1f} s: {result[part]['speedup_2_over_1']:.2f}x (2 vs 1 worker)")
    print(f"load average before {load_before}, after {result['loadavg_after']} on {os.cpu_count()} cores")
    write_atomically(args.json, json.dumps(result, indent=1) + "\n")
    ray.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
