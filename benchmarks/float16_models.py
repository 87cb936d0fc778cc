"""float16 source models: realmodels converted to float16, compiled by qcompiler, against the float32 model's int8.

For each model (digits_cnn, MiniLM-L6 by default):

* ``float16 source``: onnxconverter-common's ``convert_float_to_float16(keep_io_types=True)`` of the FP32
  model (float32 inputs and outputs, float16 compute, as that converter is usually run);
* ``int8 from FP32``: ``qcompiler compile FP32 --objective size`` (the line to match);
* ``int8 from float16 (upcast)``: ``qcompiler compile FLOAT16 --objective size``: qcompiler upcasts the
  float16 compute to float32 (``upcast-float32``) and quantizes;
* ``int8, float16 scales``: the other form the issue names, measured to choose: the int8 model from FP32
  converted to float16 by the same converter, so its Q/DQ scales and the float ops between them are
  float16 (upgraded to opset 19 first, where DequantizeLinear takes float16 scales); which kernels onnxruntime turns it into (QLinearConv, QLinearMatMul, ...), its
  accuracy and latency.

Each is scored by the realmodels kit's evaluator (top-1 for digits; topic 1-NN and cosine to FP32 for
MiniLM), and timed in onnxruntime on the first calibration feed (2 intra-op threads, candidates
alternating, median of the rounds; the machine is shared, so only ratios within one run mean anything).

    python benchmarks/float16_models.py MODELS_DIR [--models digits_cnn,minilm_l6] [--rounds N] [--work DIR]
        [--evaluator-python PY] [--evaluator PATH] [--json OUT] [--markdown OUT]

Needs onnxconverter-common (``pip install onnxconverter-common``; a benchmark-only dependency).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from dynamic_minilm import evaluate as score  # noqa: E402  (benchmarks/dynamic_minilm.py: the kit's evaluator)
from dynamic_minilm import add_evaluator_arguments, optimized_ops  # noqa: E402

QCOMPILER = [sys.executable, "-m", "qcompiler"]
INTEGER_KERNELS = ("QLinearConv", "QLinearMatMul", "MatMulIntegerToFloat", "QGemm", "QLinearAdd", "ConvInteger",
                   "MatMulInteger", "DynamicQuantizeMatMul", "DequantizeLinear", "QuantizeLinear", "Cast")


def to_float16(source: Path, output: Path, opset: int | None = None) -> None:
    """onnxconverter-common's float16 conversion, float32 inputs and outputs kept; first upgraded to
    ``opset`` when given (float16 Q/DQ scales need 19)."""
    import onnx.version_converter
    from onnxconverter_common.float16 import convert_float_to_float16

    proto = onnx.load(str(source))
    if opset is not None:
        proto = onnx.version_converter.convert_version(proto, opset)
    onnx.save(convert_float_to_float16(proto, keep_io_types=True), str(output))


def latencies(paths: dict[str, Path], feed: dict[str, np.ndarray], rounds: int) -> dict[str, float]:
    """Median milliseconds per model, the models alternating in every round (2 intra-op threads)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    options.log_severity_level = 3
    sessions = {k: ort.InferenceSession(str(p), options, providers=["CPUExecutionProvider"]) for k, p in paths.items()}
    times: dict[str, list[float]] = {k: [] for k in paths}
    for _ in range(rounds):
        for key, session in sessions.items():
            session.run(None, feed)  # warm
            start = time.perf_counter()
            for _ in range(5):
                session.run(None, feed)
            times[key].append((time.perf_counter() - start) / 5 * 1e3)
    return {k: float(np.median(v)) for k, v in times.items()}


def benchmark(args: argparse.Namespace, model: str) -> dict:
    fp32 = args.models_dir / f"{model}.onnx"
    calib = args.models_dir / "data" / "calib_npz" / model
    name = f"{model}.onnx"
    dirs = {k: args.work / model / k for k in ("float16", "int8_fp32", "int8_float16", "int8_float16_scales")}
    for d in dirs.values():
        d.mkdir(parents=True, exist_ok=True)
    to_float16(fp32, dirs["float16"] / name)
    rows: dict[str, dict] = {"float16 source (onnxconverter-common)": {"key": "float16"}}
    for label, source, key in (("int8 from FP32", fp32, "int8_fp32"),
                               ("int8 from float16 (upcast)", dirs["float16"] / name, "int8_float16")):
        command = [*QCOMPILER, "compile", str(source), "-o", str(dirs[key] / name), "--calib", str(calib),
                   "--objective", "size"]
        print("$", " ".join(command), flush=True)
        start = time.perf_counter()
        printed = subprocess.run(command, check=True, capture_output=True, text=True).stdout
        rows[label] = {"key": key, "seconds": time.perf_counter() - start, "command": " ".join(command[2:]),
                       "upcast": [line for line in printed.splitlines() if line.startswith("upcast")]}
    label = "int8, float16 scales (int8 from FP32 converted)"
    try:
        to_float16(dirs["int8_fp32"] / name, dirs["int8_float16_scales"] / name, opset=19)
        rows[label] = {"key": "int8_float16_scales"}
    except Exception as exc:  # the converter's failure is a result
        rows[label] = {"key": None, "error": f"{type(exc).__name__}: {exc}"[:300]}
    paths = {"fp32": fp32}
    for label, row in rows.items():
        if row["key"] is None:
            continue
        path = dirs[row["key"]] / name
        try:
            row["kernels"] = optimized_ops(path, INTEGER_KERNELS)
            paths[label] = path
        except Exception as exc:  # onnxruntime refusing the model is a result
            row["error"] = f"{type(exc).__name__}: {exc}"[:300]
            continue
        row["score"] = score(args.evaluator_python, args.evaluator, args.models_dir, dirs[row["key"]], model)
        print(label, json.dumps(row["score"].get("cand"))[:300], flush=True)
    with np.load(sorted(calib.glob("*.npz"))[0]) as data:
        feed = {k: data[k] for k in data.files}
    measured = latencies(paths, feed, args.rounds)
    for label, row in rows.items():
        if label in measured:
            row["ms"], row["vs_fp32"] = measured[label], measured[label] / measured["fp32"]
    fp32_score = next(r["score"]["fp32"] for r in rows.values() if "score" in r)
    return {"fp32": fp32_score, "fp32_ms": measured["fp32"], "rows": rows}


def markdown(results: dict) -> str:
    lines = ["# float16 source models", "",
             "`python benchmarks/float16_models.py /root/realmodels` (shared 2-core AMD EPYC, AVX2, no VNNI; "
             "latency: 2 threads, candidates alternating, median; ratios within one run only).", ""]
    for model, result in results.items():
        fp32 = result["fp32"]
        keys = [k for k in ("top1", "acc", "topic_1nn", "line_acc") if k in fp32] or list(fp32)[:1]
        lines += [f"## {model}", "", f"FP32: {', '.join(f'{k} {fp32[k]:.4f}' for k in keys)}, "
                  f"{result['fp32_ms']:.2f} ms", "",
                  "| model | " + " | ".join(keys) + " | cosine to FP32 | ms | x FP32 | integer kernels in onnxruntime |",
                  "|---|" + "---|" * (len(keys) + 4)]
        for label, row in result["rows"].items():
            cand = row.get("score", {}).get("cand", {})
            if "error" in row or "error" in cand:
                lines.append(f"| {label} | error: {(row.get('error') or cand.get('error'))[:120]} |")
                continue
            lines.append(f"| {label} | " + " | ".join(f"{cand[k]:.4f}" for k in keys) +
                         f" | {cand['cos_mean']:.4f} | {row['ms']:.2f} | {row['vs_fp32']:.2f} | {row['kernels']} |")
        lines += [""] + [f"- `{row['command']}` ({row['seconds']:.0f} s)" for row in result["rows"].values()
                         if "command" in row]
        lines += [f"- compile printed: {line}" for row in result["rows"].values() for line in row.get("upcast", [])]
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models_dir", type=Path)
    parser.add_argument("--models", default="digits_cnn,minilm_l6")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "qcompiler_float16_models")
    add_evaluator_arguments(parser)
    parser.add_argument("--json", type=Path, default=HERE / "results" / "float16_models.json")
    parser.add_argument("--markdown", type=Path, default=HERE / "results" / "float16_models.md")
    args = parser.parse_args(argv)
    results = {model: benchmark(args, model) for model in args.models.split(",")}
    args.json.write_text(json.dumps(results, indent=1, default=str) + "\n")
    args.markdown.write_text(markdown(results))
    print(markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
