"""qcompiler against onnxruntime's own quantizer, side by side in one run.

For every model under MODELS_DIR with calibration feeds in MODELS_DIR/data/calib_npz/<name>/ (the
layout of the realmodels kit), this compiles:

* ``qcompiler``: ``qcompiler.compile`` with its defaults (target auto),
* ``ort_default``: onnxruntime ``quantize_static`` with its defaults (QDQ, S8S8, per tensor, MinMax),
* ``ort_u8s8_rr``: ``quantize_static`` with uint8 activations, int8 per-channel weights, reduce_range,

each in a child process, measuring compile wall time and the child's peak resident memory (its own
VmHWM). Then it measures onnxruntime latency (ORT_ENABLE_ALL, ``--threads`` intra-op
threads, on the first calibration batch) of FP32 and every candidate, measured in alternation over
three rounds of at least ``--runs`` runs and one second each (``qcompiler.latency``), so that drift
of a shared machine affects all alike; and file sizes. Outputs: ``OUT/<config>/<name>.onnx`` (ready for
``realmodels/evaluate.py MODELS_DIR --cand OUT/<config>``), ``OUT/results.json`` and
``OUT/results.md``.

    python benchmarks/compare_quantizers.py MODELS_DIR OUT [--only PATTERN] [--threads 2] [--runs 30]
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

CONFIGS = ("qcompiler", "ort_default", "ort_u8s8_rr")


def calibration_dir(models_dir: Path, name: str) -> Path:
    return models_dir / "data" / "calib_npz" / name


def list_models(models_dir: Path, pattern: str) -> list[str]:
    names = []
    for path in sorted(models_dir.rglob("*.onnx")):
        relative = path.relative_to(models_dir)
        if any(part.startswith(".") or part == "data" for part in relative.parts):
            continue
        name = str(relative.with_suffix(""))
        if fnmatch.fnmatch(name, pattern) and calibration_dir(models_dir, name).is_dir():
            names.append(name)
    return names


# -- the compile step, run in a child process -----------------------------------------------------


class NpzReader:
    """onnxruntime CalibrationDataReader over a directory of .npz feeds."""

    def __init__(self, directory: Path):
        self.files = sorted(directory.glob("*.npz"))
        self.position = 0

    def get_next(self):
        if self.position >= len(self.files):
            return None
        self.position += 1
        with np.load(self.files[self.position - 1]) as data:
            return {key: data[key] for key in data.files}

    def rewind(self):
        self.position = 0


def compile_child(config: str, model: Path, calib: Path, output: Path, calibration: str) -> None:
    """Runs in the child: compile ``model`` with ``config`` into ``output``."""
    if config == "qcompiler":
        import qcompiler

        qcompiler.compile(model, output, calib=calib, calibration=calibration)
        return
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    prepared = ort_preprocess(model, output.with_suffix(".pre.onnx"))
    options = {} if config == "ort_default" else {
        "activation_type": QuantType.QUInt8, "weight_type": QuantType.QInt8,
        "per_channel": True, "reduce_range": True}
    quantize_static(str(prepared), str(output), NpzReader(calib), quant_format=QuantFormat.QDQ, **options)
    for leftover in output.parent.glob(output.stem + ".pre*.onnx"):
        leftover.unlink()


def ort_preprocess(model: Path, prepared: Path) -> Path:
    """What a user of onnxruntime's quantizer has to do first: upgrade to opset 13 (its per-channel
    output is invalid below that: the DequantizeLinear ``axis`` attribute needs 13), then its
    recommended ``quant_pre_process``; without symbolic shape inference where that fails (it does on
    the PP-OCR and MiniLM graphs), and the upgraded model where both fail."""
    import onnx
    import onnx.version_converter
    from onnxruntime.quantization.shape_inference import quant_pre_process

    proto = onnx.load(str(model))
    opset = next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))
    if opset < 13:
        proto = onnx.version_converter.convert_version(proto, 13)
        model = prepared.with_suffix(".opset13.onnx")
        onnx.save(proto, str(model))

    for options in ({}, {"skip_symbolic_shape": True}):
        try:
            quant_pre_process(str(model), str(prepared), **options)
            print(json.dumps({"ort_preprocess": options or "full"}), file=sys.stderr)
            return prepared
        except Exception:
            continue
    print(json.dumps({"ort_preprocess": "none"}), file=sys.stderr)
    return model


def peak_rss_mb() -> float:
    """This process's peak resident set (VmHWM: the high-water mark of its own address space)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_compile(config: str, model: Path, calib: Path, output: Path, calibration: str) -> dict:
    """Compile in a child process (in a scratch working directory): wall time and the child's peak
    resident memory, which the child reads from its own VmHWM (fork-inherited pages excluded)."""
    output.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as scratch:
        start = time.perf_counter()
        done = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child", config,
                               str(model.resolve()), str(calib.resolve()), str(output.resolve()), calibration],
                              capture_output=True, text=True, cwd=scratch)
        seconds = time.perf_counter() - start
    result = {"compile_s": round(seconds, 2)}
    for line in done.stdout.splitlines() + done.stderr.splitlines():
        if line.startswith("{") and ('"peak_rss_mb"' in line or '"ort_preprocess"' in line):
            result.update(json.loads(line))
    if done.returncode != 0 or not output.exists():
        result["error"] = done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "failed"
    else:
        result["size_mb"] = round(output.stat().st_size / 2**20, 3)
    return result


# -- latency --------------------------------------------------------------------------------------


def latencies(models: list[Path], feeds: dict, threads: int, runs: int) -> list[dict]:
    """FP32 and candidates measured in alternation (3 rounds), so machine drift hits all alike."""
    from qcompiler.latency import measure_latencies  # not imported by the compile children

    measured = measure_latencies([str(m) for m in models], feeds, threads=threads, runs=max(1, runs // 3),
                                 min_seconds=1.0, rounds=3)
    return [{"median_ms": round(m.median_ms, 4), "p90_ms": round(m.p90_ms, 4), "min_ms": round(m.min_ms, 4),
             "runs": m.runs} for m in measured]


def first_feed(calib: Path) -> dict:
    with np.load(sorted(calib.glob("*.npz"))[0]) as data:
        return {key: data[key] for key in data.files}


def machine() -> dict:
    import onnxruntime

    name = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                 if line.startswith("model name")), platform.processor())
    return {"cpu": name, "cores": os.cpu_count(), "onnxruntime": onnxruntime.__version__,
            "python": platform.python_version()}


def markdown(results: dict) -> str:
    head = ("| model | config | compile s | peak MB | size MB | latency ms (median) | speedup vs FP32 |\n"
            "|---|---|---|---|---|---|---|")
    rows = [head]
    for name, entry in results["models"].items():
        fp32 = entry["fp32"]["median_ms"]
        rows.append(f"| {name} | fp32 | | | {entry['fp32_size_mb']} | {fp32} | 1.00x |")
        for config in CONFIGS:
            r = entry.get(config)
            if r is None:
                continue
            if "error" in r:
                rows.append(f"| {name} | {config} | {r['compile_s']} | {r['peak_rss_mb']} | error: {r['error'][:60]} | | |")
                continue
            rows.append(f"| {name} | {config} | {r['compile_s']} | {r['peak_rss_mb']} | {r['size_mb']} | "
                        f"{r['median_ms']} | {fp32 / r['median_ms']:.2f}x |")
    return "\n".join(rows) + "\n"


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        compile_child(sys.argv[2], Path(sys.argv[3]), Path(sys.argv[4]), Path(sys.argv[5]), sys.argv[6])
        print(json.dumps({"peak_rss_mb": round(peak_rss_mb(), 1)}))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models_dir", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--only", default="*")
    parser.add_argument("--configs", default=",".join(CONFIGS))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=30, help="runs per model and round (3 rounds)")
    parser.add_argument("--calibration", default="mse", help="qcompiler's calibration method")
    args = parser.parse_args()
    configs = [c for c in args.configs.split(",") if c]
    results = {"machine": machine(), "threads": args.threads, "runs": args.runs,
               "qcompiler_calibration": args.calibration, "models": {}}
    for name in list_models(args.models_dir, args.only):
        model = args.models_dir / f"{name}.onnx"
        calib = calibration_dir(args.models_dir, name)
        feeds = first_feed(calib)
        entry = {"fp32_size_mb": round(model.stat().st_size / 2**20, 3)}
        for config in configs:
            output = args.out / config / f"{name}.onnx"
            entry[config] = run_compile(config, model, calib, output, args.calibration)
            if "error" not in entry[config]:
                try:
                    latencies([output], feeds, args.threads, 3)
                except Exception as exc:  # the quantizer wrote a model onnxruntime rejects
                    entry[config]["error"] = f"output does not run: {str(exc).splitlines()[0][:300]}"
        measured = [c for c in configs if "error" not in entry[c]]
        timings = latencies([model] + [args.out / c / f"{name}.onnx" for c in measured], feeds, args.threads,
                            args.runs)
        entry["fp32"] = timings[0]
        for config, timing in zip(measured, timings[1:]):
            entry[config].update(timing)
            entry[config]["speedup"] = round(timings[0]["median_ms"] / timing["median_ms"], 3)
        for config in configs:
            print(f"{name:<34} {config:<12} {json.dumps(entry[config])}", flush=True)
        results["models"][name] = entry
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (args.out / "results.md").write_text(markdown(results))
    print(markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
