"""The benchmark suite: qcompiler against onnxruntime's own quantizer, side by side, on real models.

For every model ``MODELS_DIR/<name>.onnx`` with calibration feeds in ``MODELS_DIR/data/calib_npz/<name>/``
(the layout ``models.py`` writes, and the realmodels kit too), each quantizer of ``quantizers.py``
compiles it in a child process, which reports its wall time and its own peak resident memory
(``qcompiler.bench.run_child``). Then onnxruntime measures the latency of FP32 and every candidate on the
first calibration feed, in alternation (``qcompiler.latency``: one warm-up run, then ten rounds in which
each model runs at least ``--runs / 10`` times and ``--seconds / 10`` seconds), so that drift and bursts
of load on a shared machine hit all alike; the ratio FP32 / candidate median is the speedup. Where ``MODELS_DIR/data/eval_npz/<name>/`` holds an evaluation
set (``datasets.py``), ``tasks.py`` scores the task metric of FP32 and every candidate, and the agreement
of the scored output with FP32's.

    python benchmarks/compare_quantizers.py MODELS_DIR [--only PATTERN] [--threads 2] [--runs 30] [--seconds 3]
        [--configs qcompiler,ort_default,ort_u8s8_rr] [--calibration mse] [--work DIR] [--results DIR]

``--configs`` also takes the transformer quantizers of ``quantizers.TRANSFORMER_CONFIGS`` (dynamic int8,
weight-only int8 and int4 as MatMulNBits, qcompiler's and onnxruntime's), e.g. for all-mpnet-base-v2:
``--only all_mpnet_base_v2 --configs qcompiler,ort_default,qcompiler_dynamic,ort_dynamic,qcompiler_w8,ort_w8,...``.

Writes ``RESULTS/compare_quantizers.json`` and ``.md``, RESULTS defaulting to
``benchmarks/results/<cpu>-<cores>c-<threads>t/``: runs on other machines, or with other thread counts,
land in their own folder. The candidates stay in ``--work`` (default ``~/.cache/qcompiler-bench/work``).
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import quantizers  # noqa: E402  (benchmarks/quantizers.py)
import tasks  # noqa: E402  (benchmarks/tasks.py)

from qcompiler.bench import ChildError, machine, machine_label, run_child  # noqa: E402
from qcompiler.bench.session import open_session  # noqa: E402
from qcompiler.latency import measure_latencies  # noqa: E402


ROUNDS = 10  # latency rounds: fine-grained alternation, so bursts of load on a shared machine hit all models


def list_models(models_dir: Path, patterns: str) -> list[str]:
    """Names (relative paths without .onnx) of the models that have calibration feeds."""
    names = []
    for path in sorted(models_dir.rglob("*.onnx")):
        relative = path.relative_to(models_dir)
        if any(part.startswith(".") or part == "data" for part in relative.parts):
            continue
        name = str(relative.with_suffix(""))
        if any(fnmatch.fnmatch(name, p) for p in patterns.split(",")) and \
                (models_dir / "data" / "calib_npz" / name).is_dir():
            names.append(name)
    return names


def quantize_nodes(model: Path) -> int:
    """QuantizeLinear nodes of a candidate: 0 means it stayed float (qcompiler's latency guard)."""
    import onnx

    return sum(node.op_type == "QuantizeLinear" for node in onnx.load(str(model)).graph.node)


def compile_in_child(config: str, model: Path, calib: Path, output: Path, calibration: str, threads: int) -> dict:
    """Compile time and peak memory of one quantizer on one model (an error is a result too)."""
    output.parent.mkdir(parents=True, exist_ok=True)
    output.unlink(missing_ok=True)
    try:
        child = run_child(f"{HERE / 'quantizers.py'}:compile_model", config, str(model.resolve()),
                          str(calib.resolve()), str(output.resolve()), calibration, threads)
    except ChildError as exc:
        return {"error": str(exc)[:300]}
    result = {"compile_s": round(child.seconds, 2), "compile_peak_mb": round(child.peak_mb, 1), **child.value,
              "size_mb": round(output.stat().st_size / 2**20, 3), "quantize_nodes": quantize_nodes(output)}
    try:  # a quantizer may write a model onnxruntime rejects: a result, not a crash
        session = open_session(str(output), threads)
        with np.load(sorted(calib.glob("*.npz"))[0]) as data:
            session.run(None, {key: data[key] for key in data.files})
    except Exception as exc:
        result["error"] = f"output does not run: {str(exc).strip().splitlines()[0][:300]}"
    return result


def measure(name: str, args: argparse.Namespace, configs: list[str]) -> dict:
    """Everything the suite records for one model."""
    model = args.models_dir / f"{name}.onnx"
    calib = args.models_dir / "data" / "calib_npz" / name
    entry = {"fp32": {"size_mb": round(model.stat().st_size / 2**20, 3)}}
    seconds: dict[str, list[float]] = {config: [] for config in configs}
    for _ in range(args.repeat):  # quantizers alternate, so machine drift hits all alike
        for config in configs:
            print(f"{name}: compiling with {config}", file=sys.stderr, flush=True)
            entry[config] = compile_in_child(config, model, calib, args.work / config / f"{name}.onnx",
                                             args.calibration, args.threads)
            if "compile_s" in entry[config]:
                seconds[config].append(entry[config]["compile_s"])
    for config in configs:
        if args.repeat > 1 and seconds[config]:
            entry[config]["compile_s"] = round(float(np.median(seconds[config])), 2)
            entry[config]["compile_s_each"] = seconds[config]
    measured = [c for c in configs if "error" not in entry[c]]
    print(f"{name}: latency of fp32 and {', '.join(measured) or 'nothing else'}", file=sys.stderr, flush=True)
    with np.load(sorted(calib.glob("*.npz"))[0]) as data:
        feed = {key: data[key] for key in data.files}
    paths = [model] + [args.work / c / f"{name}.onnx" for c in measured]
    timings = measure_latencies([str(p) for p in paths], feed, threads=args.threads,
                                runs=max(1, args.runs // ROUNDS), min_seconds=args.seconds, rounds=ROUNDS)
    for key, timing in zip(["fp32", *measured], timings):
        entry[key]["latency_ms"] = {"median": round(timing.median_ms, 4), "p90": round(timing.p90_ms, 4),
                                    "min": round(timing.min_ms, 4), "runs": timing.runs}
        entry[key]["speedup"] = round(timings[0].median_ms / timing.median_ms, 3)
    eval_dir = args.models_dir / "data" / "eval_npz" / name
    if args.evaluate and tasks.has_evaluator(eval_dir):
        print(f"{name}: task metric", file=sys.stderr, flush=True)
        scores = tasks.evaluate(dict(zip(["fp32", *measured], paths)), eval_dir, args.threads)
        for key, score in scores.items():
            entry[key]["task"] = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in score.items()}
    return entry


def _cell(value, digits: int) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def sqnr(task: dict) -> str:
    """SQNR of the scored output; "identical" where the candidate's output equals FP32's."""
    if task.get("max_abs") == 0:
        return "identical"
    return _cell(task.get("sqnr_db"), 1)


def markdown(results: dict, configs: list[str]) -> str:
    """One row per model and quantizer: compile time and memory, size, latency, speedup, task metric."""
    info = results["machine"]
    lines = [f"{info['cpu']} ({info['cores']} cores; {', '.join(info['cpu_features']) or 'no int8 extensions'}), "
             f"onnxruntime {info['onnxruntime']}, {results['threads']} threads, qcompiler calibration "
             f"{results['qcompiler_calibration']}, suite wall time {results['wall_s'] / 60:.1f} min", "",
             "| model | quantizer | compile s | compile peak MB | QuantizeLinear nodes | size MB | latency ms (median) "
             "| speedup vs FP32 | task metric | SQNR dB vs FP32 | cosine to FP32 |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, entry in results["models"].items():
        for key in ["fp32", *configs]:
            row = entry.get(key)
            if row is None:
                continue
            if "latency_ms" not in row:
                lines.append(f"| {name} | {key} | {_cell(row.get('compile_s'), 2)} | "
                             f"{_cell(row.get('compile_peak_mb'), 1)} | error: {row['error'][:80]} | | | | | | |")
                continue
            task = row.get("task", {})
            metric = "" if not task else (f"error: {task['error'][:60]}" if "error" in task
                                          else f"{task['headline']} {task[task['headline']]:.3f}")
            cells = [name, key, _cell(row.get("compile_s"), 2), _cell(row.get("compile_peak_mb"), 1),
                     str(row.get("quantize_nodes", "")), f"{row['size_mb']:.3f}", f"{row['latency_ms']['median']:.3f}",
                     f"{row['speedup']:.2f}x", metric, sqnr(task), _cell(task.get("cos_mean"), 4)]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models_dir", type=Path)
    parser.add_argument("--only", default="*", help="comma-separated model names or shell patterns")
    parser.add_argument("--configs", default=",".join(quantizers.CONFIGS))
    parser.add_argument("--threads", type=int, default=2, help="onnxruntime intra-op threads everywhere")
    parser.add_argument("--runs", type=int, default=30, help="timed runs per model, at least")
    parser.add_argument("--seconds", type=float, default=3.0, help="timed seconds per model, at least")
    parser.add_argument("--calibration", default="mse", help="qcompiler's calibration method")
    parser.add_argument("--repeat", type=int, default=1,
                        help="compile each model this many times, quantizers in alternation; median time")
    parser.add_argument("--no-evaluate", dest="evaluate", action="store_false", help="skip the task metrics")
    parser.add_argument("--work", type=Path, default=Path.home() / ".cache" / "qcompiler-bench" / "work")
    parser.add_argument("--results", type=Path, help="default: benchmarks/results/<cpu>-<cores>c-<threads>t")
    args = parser.parse_args()
    configs = [c for c in args.configs.split(",") if c]
    unknown = sorted(set(configs) - set(quantizers.ALL_CONFIGS))
    names = list_models(args.models_dir, args.only)
    if unknown or not names:
        parser.error(f"unknown quantizer(s) {unknown}" if unknown else f"no model with calibration feeds in "
                     f"{args.models_dir} matches {args.only!r}")
    import onnxruntime

    onnxruntime.set_default_logger_severity(3)  # no warnings about unused initializers of the candidates
    start = time.perf_counter()
    info = machine()
    results = {"machine": info, "threads": args.threads, "runs": args.runs, "qcompiler_calibration": args.calibration,
               "models": {}}
    for name in names:
        results["models"][name] = measure(name, args, configs)
        print(f"{name}: " + json.dumps({k: v.get("speedup") for k, v in results["models"][name].items()}), flush=True)
    results["wall_s"] = round(time.perf_counter() - start, 1)
    folder = args.results or HERE / "results" / machine_label(info, args.threads)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "compare_quantizers.json").write_text(json.dumps(results, indent=2) + "\n")
    (folder / "compare_quantizers.md").write_text(markdown(results, configs))
    print(markdown(results, configs))
    print(f"wrote {folder}/compare_quantizers.json and .md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
