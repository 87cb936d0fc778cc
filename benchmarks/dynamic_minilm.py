"""Dynamic int8 on MiniLM-L6: qcompiler's ``dynamic`` pipeline against onnxruntime's ``quantize_dynamic``.

All candidates are built without calibration data and compared in one run:

* ``qcompiler dynamic``: the named pipeline (``--target auto``: uint8 weights on x86 without VNNI);
* ``qcompiler dynamic, QDQ form``: the same plan left as ``DynamicQuantizeLinear -> DequantizeLinear ->
  MatMul`` (no ``lower-dynamic-matmul``), the other graph form onnxruntime fuses;
* ``qcompiler dynamic, x86-vnni weights``: int8 weights (what a VNNI CPU gets; on x86 without VNNI their
  u8 x s8 products saturate);
* onnxruntime ``quantize_dynamic`` with its defaults, with ``per_channel=True``, and with
  ``per_channel=True, reduce_range=True`` (its documented setting for x86 without VNNI).

For each: the compile time, the operators onnxruntime's graph optimizer turns the model into (which
dynamic kernels it runs: ``optimized_model_filepath``), the realmodels evaluator's scores (topic 1-NN
accuracy, and against FP32 the cosine of the sentence embeddings and ``same_output``, the share of
sentences whose nearest neighbour is FP32's), and the onnxruntime latency on the first calibration feed
(2 intra-op threads, the candidates and FP32 alternating, the median of all runs).

    python benchmarks/dynamic_minilm.py MODELS_DIR [--model minilm_l6] [--only 1,2,...] [--evaluator-python PY]
        [--evaluator PATH] [--work DIR] [--rounds N] [--json OUT]

``--only`` picks candidates by number (in the order above; default all); ``--evaluator ''`` skips the scores.

``MODELS_DIR`` is laid out as the realmodels kit writes it; the evaluator (``../shared/realmodels/evaluate.py``)
runs in its own Python (``$REALMODELS_VENV/bin/python``), which has the tokenizer.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx

import qcompiler
from qcompiler import passes as lib
from qcompiler.latency import measure_latencies
from qcompiler.options import CompileOptions
from qcompiler.pipelines import dynamic

HERE = Path(__file__).resolve().parent
DYNAMIC_KERNELS = ("DynamicQuantizeLinear", "DynamicQuantizeMatMul", "MatMulIntegerToFloat", "MatMulInteger",
                   "DequantizeLinear", "MatMul", "FusedMatMul", "Gemm", "FusedGemm")


def qcompiler_candidate(source: Path, output: Path, target: str, qdq_form: bool = False) -> float:
    """Compile with the ``dynamic`` pipeline (optionally without its last pass); returns seconds."""
    start = time.perf_counter()
    passes = dynamic(CompileOptions(target=target))
    if qdq_form:
        passes = [p for p in passes if not isinstance(p, lib.LowerDynamicMatMul)]
    model = qcompiler.load(source)
    qcompiler.PassManager(passes)(model)
    qcompiler.save(model, output)
    return time.perf_counter() - start


def onnxruntime_candidate(source: Path, output: Path, **options) -> float:
    from onnxruntime.quantization import quantize_dynamic

    start = time.perf_counter()
    quantize_dynamic(str(source), str(output), **options)
    return time.perf_counter() - start


def optimized_ops(path: Path, kernels: tuple[str, ...] = DYNAMIC_KERNELS) -> dict[str, int]:
    """How many of each of ``kernels`` (default: the dynamic-quantization-relevant operators) onnxruntime's
    optimized graph of ``path`` holds."""
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp:
        options = ort.SessionOptions()
        options.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")
        options.log_severity_level = 3
        ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        histogram = collections.Counter(n.op_type for n in onnx.load(options.optimized_model_filepath).graph.node)
    return {op: histogram[op] for op in kernels if histogram[op]}


def add_evaluator_arguments(parser: argparse.ArgumentParser) -> None:
    """``--evaluator`` (the realmodels kit's evaluate.py) and ``--evaluator-python`` (``$REALMODELS_VENV``'s)."""
    parser.add_argument("--evaluator", default=str(HERE.parent.parent / "shared" / "realmodels" / "evaluate.py"))
    venv = os.environ.get("REALMODELS_VENV", "/tmp/realmodels-venv")
    parser.add_argument("--evaluator-python", default=os.path.join(venv, "bin", "python"))


def evaluate(python: str, evaluator: str, models_dir: Path, candidate_dir: Path, model: str,
             data: Path | None = None) -> dict:
    """The kit's scores of FP32 and of ``candidate_dir``'s ``model``, on ``data`` (default: the kit's own set)."""
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        subprocess.run([python, evaluator, str(models_dir), "--cand", str(candidate_dir), "--only", model,
                        "--json", out.name] + (["--data", str(data)] if data is not None else []),
                       check=True, capture_output=True, text=True)
        return json.loads(Path(out.name).read_text())["models"][model]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models_dir", type=Path)
    parser.add_argument("--model", default="minilm_l6")
    add_evaluator_arguments(parser)
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "qcompiler-dynamic-minilm")
    parser.add_argument("--only", help="comma-separated candidate numbers (1-based, in the docstring's order)")
    parser.add_argument("--rounds", type=int, default=8, help="latency rounds (candidates alternate in each)")
    parser.add_argument("--json", type=Path, help="write every number to this file")
    args = parser.parse_args(argv)

    source = args.models_dir / f"{args.model}.onnx"
    candidates = {
        "qcompiler dynamic": lambda out: qcompiler_candidate(source, out, "auto"),
        "qcompiler dynamic, QDQ form": lambda out: qcompiler_candidate(source, out, "auto", qdq_form=True),
        "qcompiler dynamic, x86-vnni weights": lambda out: qcompiler_candidate(source, out, "x86-vnni"),
        "onnxruntime defaults": lambda out: onnxruntime_candidate(source, out),
        "onnxruntime per_channel": lambda out: onnxruntime_candidate(source, out, per_channel=True),
        "onnxruntime per_channel reduce_range": lambda out: onnxruntime_candidate(source, out, per_channel=True,
                                                                                  reduce_range=True),
    }
    if args.only:
        chosen = {int(i) for i in args.only.split(",")}
        candidates = {k: v for i, (k, v) in enumerate(candidates.items(), 1) if i in chosen}
    rows = []
    for index, (name, build) in enumerate(candidates.items(), 1):
        folder = args.work / f"c{index}"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{args.model}.onnx"
        row = {"candidate": name, "path": str(path), "compile_s": round(build(path), 2),
               "size_mb": round(path.stat().st_size / 1e6, 1), "onnxruntime_ops": optimized_ops(path)}
        if args.evaluator:
            row["eval"] = evaluate(args.evaluator_python, args.evaluator, args.models_dir, folder, args.model)
        rows.append(row)
        print(f"{name}: compiled in {row['compile_s']} s, {row['size_mb']} MB, {_scores(row)}, onnxruntime runs "
              f"{row['onnxruntime_ops']}", flush=True)

    feed = dict(np.load(sorted((args.models_dir / "data" / "calib_npz" / args.model).glob("*.npz"))[0]))
    latencies = measure_latencies([str(source)] + [row["path"] for row in rows], feed, threads=2, runs=10,
                                  min_seconds=args.rounds * 0.5, rounds=args.rounds)
    fp32_ms = latencies[0].median_ms
    shape = next(iter(feed.values())).shape
    print(f"\nonnxruntime latency: 2 threads, feed {shape}, median over {args.rounds} alternating rounds; "
          f"FP32 {fp32_ms:.2f} ms\n")
    print("| candidate | compile s | MB | topic 1-NN | same 1-NN as FP32 | cosine to FP32 | latency ms | vs FP32 |")
    print("|---|---|---|---|---|---|---|---|")
    for row, latency in zip(rows, latencies[1:]):
        row["latency_ms"] = round(latency.median_ms, 3)
        print(f"| {row['candidate']} | {row['compile_s']} | {row['size_mb']} | {_scores(row, ' | ')} | "
              f"{latency.median_ms:.2f} | {fp32_ms / latency.median_ms:.2f}x |")
    if args.json:
        args.json.write_text(json.dumps({"fp32_latency_ms": fp32_ms, "feed_shape": list(shape),
                                         "rounds": args.rounds, "candidates": rows}, indent=1, default=str))
    return 0


def _scores(row: dict, separator: str = ", ") -> str:
    """Topic 1-NN (and FP32's), same 1-NN as FP32, cosine to FP32, from the evaluator's scores."""
    scores = row.get("eval") or {}
    cand, fp32 = scores.get("cand") or {}, scores.get("fp32") or {}
    metric = next((k for k in fp32 if k != "n"), None)
    nan = float("nan")
    return separator.join((f"{cand.get(metric, nan):.3f} (FP32 {fp32.get(metric, nan):.3f})",
                           f"{cand.get('same_output', nan):.3f}", f"{cand.get('cos_mean', nan):.4f}"))


if __name__ == "__main__":
    sys.exit(main())
