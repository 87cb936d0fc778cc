"""The integer reference executor against onnxruntime's real int8 kernels, on the realmodels set.

For each model: a per-channel U8S8 QDQ model with full-range (8-bit) weights, where the int16 pair
saturation of x86 without VNNI bites (``qcompiler.compile(..., target="x86-vnni", objective="size")``;
weights as onnxruntime's ``quantize_static(per_channel=True, reduce_range=False)`` makes them). Every
quantized activation (the output of every QuantizeLinear, fused or not) is exposed as an extra
output, so agreement is counted in LSB over all of them, and the model's own outputs are compared
as they are. On ``--samples`` calibration feeds it compares:

* executor ``x86-avx2`` vs onnxruntime (all graph optimizations) **under ``qemu-x86_64 -cpu
  Haswell-v4``**: an emulated AVX2 CPU without VNNI, onnxruntime 1.32 picks its AVX2 kernels there.
  (This machine has AVX512-VNNI, where onnxruntime accumulates exactly.)
* executor ``x86-vnni`` vs onnxruntime natively on this VNNI CPU (all graph optimizations);
* executor ``exact`` and ``simulate`` vs onnxruntime natively with graph optimizations disabled (the
  QDQ graph in float: ``simulate`` is what it computes, ``exact`` the fused integer kernels).

``--digits`` also scores digits_cnn on its labelled test set (``data/digits_test.npz``): FP32, the
executor (each profile) and onnxruntime natively and under qemu. ``--latency`` times the executor on
ocr_rec_ppocrv4 against onnxruntime's int8 session (first call excluded and reported).

    python benchmarks/executor_vs_ort.py [--models-dir /root/realmodels] [--only NAME ...] [--samples 2]
        [--work DIR] [--json OUT] [--no-qemu] [--digits] [--latency]

Per comparison it reports every quantized tensor (bit-exact share, largest difference in LSB, share
more than one LSB off), the model's outputs, and, for the profiles with fused integer kernels, those
kernels alone: each fed onnxruntime's own quantized inputs, its output compared with onnxruntime's
tensor (which isolates each kernel's arithmetic from the differences that propagate through the
network). Against optimized onnxruntime that is its own integer kernel; against onnxruntime without
optimizations it is the float node unit the kernel replaces (DequantizeLinear -> float op ->
QuantizeLinear): float32 sums in MLAS's order and a division by the output scale, where the kernel
sums exactly and multiplies by one float32 multiplier, so values at a rounding boundary differ by
1 LSB. The executor runs with one
BLAS thread (``OPENBLAS_NUM_THREADS=1`` unless set). Results go to ``--json`` and a Markdown table
next to it.

Run under qemu, the same file is the onnxruntime worker: ``--ort-worker MODEL FEEDS OUT``.
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # before numpy: the executor runs on one core, as measured

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

MODELS = ["digits_cnn", "digits_mlp", "ocr_cls_ppocr_mobile_v2", "ocr_det_ppocrv4", "ocr_rec_ppocrv4", "crepe_tiny",
          "minilm_l6"]
QEMU_CPU = "Haswell-v4"


def ort_worker(model: str, feeds_path: str, out: str, optimize: bool) -> None:
    """Run onnxruntime on each feed of ``feeds_path`` (keys ``<i>/<input>``); save ``<i>/<output>``."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.log_severity_level = 3
    if not optimize:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    data = np.load(feeds_path)
    count = 1 + max(int(key.split("/")[0]) for key in data.files)
    results = {}
    for i in range(count):
        feed = {key.split("/", 1)[1]: data[key] for key in data.files if key.startswith(f"{i}/")}
        names = [o.name for o in session.get_outputs()]
        for name, value in zip(names, session.run(names, feed)):
            results[f"{i}/{name}"] = value
    np.savez(out, **results)


def ort_runs(model: Path, feeds: list[dict], *, qemu: bool, optimize: bool, work: Path) -> list[dict]:
    """onnxruntime's outputs per feed, natively or under qemu (in a subprocess either way)."""
    packed = work / "feeds.npz"
    np.savez(packed, **{f"{i}/{k}": v for i, feed in enumerate(feeds) for k, v in feed.items()})
    out = work / "ort_out.npz"
    command = [sys.executable, __file__, "--ort-worker", str(model), str(packed), str(out)]
    if not optimize:
        command.append("--no-optimize")
    if qemu:
        command = ["qemu-x86_64", "-cpu", QEMU_CPU] + command
    done = subprocess.run(command, timeout=6 * 3600, capture_output=True, text=True)  # qemu warns about CPUID bits
    if done.returncode:
        raise RuntimeError(f"onnxruntime worker failed ({' '.join(command[:4])} ...):\n{done.stderr[-3000:]}")
    data = np.load(out)
    results = [{} for _ in feeds]
    for key in data.files:
        index, name = key.split("/", 1)
        results[int(index)][name] = data[key]
    return results


def compile_model(name: str, models_dir: Path, work: Path) -> Path:
    import qcompiler

    path = work / f"{name}.u8s8.onnx"
    if not path.exists():
        qcompiler.compile(models_dir / f"{name}.onnx", path, calib=models_dir / "data" / "calib_npz" / name,
                          target="x86-vnni", objective="size")
    return path


def calibration_feeds(name: str, models_dir: Path, samples: int) -> list[dict]:
    files = sorted((models_dir / "data" / "calib_npz" / name).glob("*.npz"))[:samples]
    return [dict(np.load(f)) for f in files]


def agreement(ours: list[dict], theirs: list[dict]) -> dict:
    from qcompiler.executor.agreement import compare_all, merge

    per_output: dict[str, list] = {}
    for mine, other in zip(ours, theirs, strict=True):
        for a in compare_all(mine, other):
            per_output.setdefault(a.name, []).append(a)
    return {name: merge(parts).as_dict() for name, parts in per_output.items()}


def run_executor(model, profile: str, feeds: list[dict]):
    from qcompiler.executor import Interpreter

    start = time.perf_counter()
    interpreter = Interpreter(model, profile=profile)
    results = [interpreter.run(feed) for feed in feeds]
    return results, time.perf_counter() - start, interpreter


def fused_kernels_alone(interpreter, theirs: list[dict]) -> dict:
    """Each fused integer step run on onnxruntime's quantized inputs, compared with onnxruntime's tensor."""
    from qcompiler.executor.agreement import compare

    parts = []
    for step in interpreter.steps:
        if len(step.nodes) < 2 or step.outputs[0].name not in theirs[0]:
            continue
        for other in theirs:
            if any(v is not None and v not in interpreter.constants and v.name not in other for v in step.inputs):
                break
            args = [None if v is None else interpreter.constants.get(v, other.get(v.name)) for v in step.inputs]
            parts.append(compare(step.op, interpreter.run_node(step, args)[0], other[step.outputs[0].name]))
    total = sum(p.elements for p in parts) or 1
    return {"kernels": len(parts), "elements": total, "equal": sum(p.equal * p.elements for p in parts) / total,
            "max_lsb": max((p.max_diff for p in parts), default=0.0),
            "over_one_lsb": sum((p.over_one_lsb or 0) * p.elements for p in parts) / total}


def measure_model(name: str, args, work: Path) -> dict:
    from qcompiler import ir
    from qcompiler.executor.agreement import expose_quantized_outputs

    path = compile_model(name, args.models_dir, work)
    model = ir.load(path)
    probe = expose_quantized_outputs(model, every=True)
    own = [v.name for v in model.graph.outputs]
    probe_path = work / f"{name}.probe.onnx"
    ir.save(probe, probe_path)
    feeds = calibration_feeds(name, args.models_dir, args.samples)
    result = {"samples": len(feeds), "comparisons": {}}
    plans = [("x86-vnni", "onnxruntime native, optimized", dict(qemu=False, optimize=True)),
             ("exact", "onnxruntime native, no optimizations", dict(qemu=False, optimize=False)),
             ("simulate", "onnxruntime native, no optimizations", dict(qemu=False, optimize=False))]
    if not args.no_qemu:
        plans.insert(0, ("x86-avx2", f"onnxruntime under qemu -cpu {QEMU_CPU}, optimized", dict(qemu=True, optimize=True)))
    cache: dict = {}
    for profile, against, how in plans:
        key = tuple(sorted(how.items()))
        if key not in cache:
            start = time.perf_counter()
            cache[key] = ort_runs(probe_path, feeds, work=work, **how)
            result.setdefault("ort_seconds", {})[against] = round(time.perf_counter() - start, 1)
        ours, seconds, interpreter = run_executor(probe, profile, feeds)
        outputs = agreement(ours, cache[key])
        quantized = summarize({k: v for k, v in outputs.items() if k not in own})
        entry = {"executor_seconds": round(seconds, 2), "quantized_tensors": quantized,
                 "model_outputs": {k: v for k, v in outputs.items() if k in own}}
        if interpreter.profile.fuse:
            entry["fused_kernels_alone"] = fused_kernels_alone(interpreter, cache[key])
        result["comparisons"][f"{profile} vs {against}"] = entry
        alone = entry.get("fused_kernels_alone")
        print(f"  {profile} vs {against}: quantized tensors {quantized['tensors']} "
              f"({quantized['elements']} elements) {100 * quantized['equal']:.4f} % bit-exact, "
              f"max {quantized['max_lsb']:g} LSB, {100 * quantized['over_one_lsb']:.4f} % > 1 LSB"
              + (f"; fused kernels alone {alone['kernels']}: {100 * alone['equal']:.4f} % bit-exact, "
                 f"max {alone['max_lsb']:g} LSB, {100 * alone['over_one_lsb']:.4f} % > 1 LSB" if alone else "")
              + "; outputs: "
              + "; ".join(f"{o} {100 * a['equal']:.2f} % equal, max |diff| {a['max_diff']:.3g}"
                          for o, a in entry["model_outputs"].items()), flush=True)
    return result


def summarize(outputs: dict) -> dict:
    """All quantized tensors together: element-weighted bit-exact share, worst LSB difference."""
    total = sum(a["elements"] for a in outputs.values()) or 1
    return {"tensors": len(outputs), "elements": total,
            "equal": sum(a["equal"] * a["elements"] for a in outputs.values()) / total,
            "max_lsb": max((a["max_diff"] for a in outputs.values()), default=0.0),
            "over_one_lsb": sum((a["over_one_lsb"] or 0) * a["elements"] for a in outputs.values()) / total,
            "worst": sorted(((a["equal"], k) for k, a in outputs.items()))[:3]}


def digits_accuracy(args, work: Path) -> dict:
    """digits_cnn top-1 on the labelled test set: FP32, executor profiles, onnxruntime native and emulated."""
    from qcompiler.executor import Interpreter

    data = np.load(args.models_dir / "data" / "digits_test.npz")
    x, y = data["x"].astype(np.float32), data["y"]
    path = compile_model("digits_cnn", args.models_dir, work)
    feed = [{"input": x}]
    scores = {}

    def top1(logits):
        return float(np.mean(np.argmax(logits, axis=1) == y))

    fp32 = ort_runs(args.models_dir / "digits_cnn.onnx", feed, qemu=False, optimize=True, work=work)[0]
    scores["fp32 (onnxruntime)"] = top1(next(iter(fp32.values())))
    for profile in ("simulate", "exact", "x86-vnni", "x86-avx2"):
        scores[f"executor {profile}"] = top1(Interpreter(path, profile=profile).run(feed[0])["logits"])
    scores["onnxruntime native (VNNI), optimized"] = top1(ort_runs(path, feed, qemu=False, optimize=True, work=work)[0]["logits"])
    scores["onnxruntime native, no optimizations"] = top1(ort_runs(path, feed, qemu=False, optimize=False, work=work)[0]["logits"])
    if not args.no_qemu:
        scores[f"onnxruntime qemu -cpu {QEMU_CPU} (AVX2), optimized"] = top1(
            ort_runs(path, feed, qemu=True, optimize=True, work=work)[0]["logits"])
    for key, value in scores.items():
        print(f"  digits_cnn accuracy, {key}: {100 * value:.2f} %", flush=True)
    return {"samples": int(len(y)), "top1": scores}


def latency(args, work: Path) -> dict:
    """Executor vs onnxruntime int8 on ocr_rec_ppocrv4 (one calibration feed), medians of ``runs``."""
    import onnxruntime as ort

    from qcompiler.executor import Interpreter

    path = compile_model("ocr_rec_ppocrv4", args.models_dir, work)
    feed = calibration_feeds("ocr_rec_ppocrv4", args.models_dir, 1)[0]
    result = {"feed": {k: list(v.shape) for k, v in feed.items()}, "runs": args.runs}
    for threads in (1, 0):
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.log_severity_level = 3
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        start = time.perf_counter()
        session.run(None, feed)
        first = time.perf_counter() - start
        times = []
        for _ in range(args.runs):
            start = time.perf_counter()
            session.run(None, feed)
            times.append(time.perf_counter() - start)
        result[f"onnxruntime_{threads or 'default'}_threads_ms"] = {"first": 1e3 * first, "median": 1e3 * float(np.median(times))}
    for profile in ("x86-vnni", "x86-avx2"):
        start = time.perf_counter()
        interpreter = Interpreter(path, profile=profile)
        planned = time.perf_counter()
        interpreter.run(feed)
        first = time.perf_counter() - planned
        times = []
        for _ in range(args.runs):
            start_run = time.perf_counter()
            interpreter.run(feed)
            times.append(time.perf_counter() - start_run)
        result[f"executor_{profile}_ms"] = {"plan": 1e3 * (planned - start), "first": 1e3 * first,
                                            "median": 1e3 * float(np.median(times))}
    for threads in ("1", "default"):
        base = result[f"onnxruntime_{threads}_threads_ms"]["median"]
        for profile in ("x86-vnni", "x86-avx2"):
            result[f"ratio_{profile}_vs_onnxruntime_{threads}_threads"] = result[f"executor_{profile}_ms"]["median"] / base
    print("  latency:", json.dumps(result, indent=1), flush=True)
    return result


def markdown(results: dict) -> str:
    """The tables of the JSON result."""
    m = results["machine"]
    lines = [f"# Executor vs onnxruntime ({m['cpu']}, {', '.join(m['cpu_features'])}, onnxruntime {m['onnxruntime']})",
             "", "AVX2 without VNNI: onnxruntime run under `qemu-x86_64 -cpu " + str(results["emulated_cpu"]) + "`.",
             "Quantized tensors: every QuantizeLinear output; LSB = one quantization step.",
             "Fused kernels alone: each of the executor's fused integer kernels fed onnxruntime's own quantized inputs;",
             "against optimized onnxruntime it meets onnxruntime's integer kernel, against onnxruntime without",
             "optimizations the float unit DequantizeLinear -> op -> QuantizeLinear it replaces (float32 sums in",
             "MLAS's order, a division by the output scale), so values at a rounding boundary land 1 LSB apart;",
             "through the rest of the network those differences grow (the whole-model columns).", "",
             "| model | comparison | quantized tensors | elements | bit-exact | max LSB | > 1 LSB | fused kernels alone |",
             "|---|---|---:|---:|---:|---:|---:|---|"]
    for name, model in results["models"].items():
        for comparison, entry in model["comparisons"].items():
            q, alone = entry["quantized_tensors"], entry.get("fused_kernels_alone")
            lines.append(f"| {name} | {comparison} | {q['tensors']} | {q['elements']:,} | {100 * q['equal']:.4f} % | "
                         f"{q['max_lsb']:g} | {100 * q['over_one_lsb']:.4f} % | "
                         + (f"{alone['kernels']}: {100 * alone['equal']:.4f} %, max {alone['max_lsb']:g} LSB, "
                            f"{100 * alone['over_one_lsb']:.4f} % > 1 LSB" if alone else "-")
                         + " |")
    if "digits_accuracy" in results:
        lines += ["", f"digits_cnn top-1 on {results['digits_accuracy']['samples']} labelled digits:", "",
                  "| run | top-1 |", "|---|---:|"]
        lines += [f"| {k} | {100 * v:.2f} % |" for k, v in results["digits_accuracy"]["top1"].items()]
    if "latency" in results:
        lat = results["latency"]
        lines += ["", f"ocr_rec_ppocrv4 latency, feed {lat['feed']}, median of {lat['runs']} runs (ms):", "",
                  "| run | first call | median |", "|---|---:|---:|"]
        for key, value in lat.items():
            if isinstance(value, dict) and "median" in value:
                lines.append(f"| {key} | {value['first']:.2f} | {value['median']:.2f} |")
        lines += [""] + [f"{k}: {v:.2f}" for k, v in lat.items() if k.startswith("ratio")]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ort-worker", nargs=3, metavar=("MODEL", "FEEDS", "OUT"), help=argparse.SUPPRESS)
    parser.add_argument("--no-optimize", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--models-dir", type=Path, default=Path("/root/realmodels"))
    parser.add_argument("--only", nargs="*", default=MODELS)
    parser.add_argument("--samples", type=int, default=2)
    parser.add_argument("--runs", type=int, default=20, help="timed runs for --latency")
    parser.add_argument("--work", type=Path, help="where compiled models are kept (default: a temporary folder)")
    parser.add_argument("--json", type=Path, help="write the results as JSON")
    parser.add_argument("--no-qemu", action="store_true", help="skip the emulated AVX2 runs")
    parser.add_argument("--digits", action="store_true", help="digits_cnn accuracy on its labelled test set")
    parser.add_argument("--latency", action="store_true", help="executor vs onnxruntime latency on ocr_rec_ppocrv4")
    args = parser.parse_args(argv)
    if args.ort_worker:
        ort_worker(*args.ort_worker, optimize=not args.no_optimize)
        return 0
    if not args.no_qemu and shutil.which("qemu-x86_64") is None:
        parser.error("qemu-x86_64 not found (apt-get install qemu-user), or pass --no-qemu")
    from qcompiler.bench.report import machine

    work = args.work or Path(tempfile.mkdtemp(prefix="executor_vs_ort_"))
    work.mkdir(parents=True, exist_ok=True)
    results = {"machine": machine(), "emulated_cpu": None if args.no_qemu else QEMU_CPU, "models": {}}
    for name in args.only:
        print(f"{name}:", flush=True)
        results["models"][name] = measure_model(name, args, work)
    if args.digits:
        results["digits_accuracy"] = digits_accuracy(args, work)
    if args.latency:
        results["latency"] = latency(args, work)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=1) + "\n")
        args.json.with_suffix(".md").write_text(markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
