"""qcompiler against onnxruntime's own quantizer, side by side in one run.

For every model under MODELS_DIR with calibration feeds in MODELS_DIR/data/calib_npz/<name>/ (the
layout of the realmodels kit), this compiles:

* ``qcompiler``: ``qcompiler.compile`` with its defaults (target auto),
* ``ort_default``: onnxruntime ``quantize_static`` with its defaults (QDQ, S8S8, per tensor, MinMax),
* ``ort_u8s8_rr``: ``quantize_static`` with uint8 activations, int8 per-channel weights, reduce_range,

each in a child process, measuring compile wall time and the child's peak resident memory (its own
VmHWM). Then it measures onnxruntime latency (ORT_ENABLE_ALL, ``--threads`` intra-op
threads, a warm-up run, then the median / p90 / min of ``--runs`` runs on the first calibration batch)
of FP32 and every candidate (``qcompiler.latency``), and file sizes. Outputs: ``OUT/<config>/<name>.onnx`` (ready for
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


def compile_child(config: str, model: Path, calib: Path, output: Path) -> None:
    """Runs in the child: compile ``model`` with ``config`` into ``output``."""
    if config == "qcompiler":
        import qcompiler

        qcompiler.compile(model, output, calib=calib)
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


def run_compile(config: str, model: Path, calib: Path, output: Path) -> dict:
    """Compile in a child process (in a scratch working directory): wall time and the child's peak
    resident memory, which the child reads from its own VmHWM (fork-inherited pages excluded)."""
    output.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as scratch:
        start = time.perf_counter()
        done = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child", config,
                               str(model.resolve()), str(calib.resolve()), str(output.resolve())],
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


def latency(model: Path, feeds: dict, threads: int, runs: int) -> dict:
    from qcompiler.latency import measure_latency  # not imported by the compile children

    measured = measure_latency(str(model), feeds, threads=threads, runs=runs)
    return {"median_ms": round(measured.median_ms, 3), "p90_ms": round(measured.p90_ms, 3),
            "min_ms": round(measured.min_ms, 3)}


def first_feed(calib: Path) -> dict:
    with np.load(sorted(calib.glob("*.npz"))[0]) as data:
        return {key: data[key] for key in data.files}


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
        compile_child(sys.argv[2], Path(sys.argv[3]), Path(sys.argv[4]), Path(sys.argv[5]))
        print(json.dumps({"peak_rss_mb": round(peak_rss_mb(), 1)}))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models_dir", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--only", default="*")
    parser.add_argument("--configs", default=",".join(CONFIGS))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=30)
    args = parser.parse_args()
    configs = [c for c in args.configs.split(",") if c]
    results = {"machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count()},
               "threads": args.threads, "runs": args.runs, "models": {}}
    for name in list_models(args.models_dir, args.only):
        model = args.models_dir / f"{name}.onnx"
        calib = calibration_dir(args.models_dir, name)
        feeds = first_feed(calib)
        entry = {"fp32": latency(model, feeds, args.threads, args.runs),
                 "fp32_size_mb": round(model.stat().st_size / 2**20, 3)}
        for config in configs:
            output = args.out / config / f"{name}.onnx"
            r = run_compile(config, model, calib, output)
            if "error" not in r:
                try:
                    r.update(latency(output, feeds, args.threads, args.runs))
                    r["speedup"] = round(entry["fp32"]["median_ms"] / r["median_ms"], 3)
                except Exception as exc:  # the quantizer wrote a model onnxruntime rejects
                    r["error"] = f"output does not run: {str(exc).splitlines()[0][:300]}"
            entry[config] = r
            print(f"{name:<34} {config:<12} {json.dumps(r)}", flush=True)
        results["models"][name] = entry
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (args.out / "results.md").write_text(markdown(results))
    print(markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
