"""Before/after table of the accuracy passes (placement, SmoothQuant, range search) on a real model.

Each variant is an explicit pass list (W8A8, ``objective="size"``: no latency guard), compiled with
the pass timer; the result is checked to have every linear-layer MatMul/Gemm (constant weight) read
int8 weights and an int8 activation, and is scored by the realmodels kit's evaluator (the task metric
and the agreement with FP32: cosine, SQNR).

    python benchmarks/minilm_accuracy.py MODELS_DIR [--model minilm_l6] [--variants a,b,...]
        [--evaluator-python PY] [--evaluator PATH] [--work DIR] [--json OUT]

``MODELS_DIR`` is laid out as the realmodels kit writes it (``<model>.onnx``, calibration feeds in
``data/calib_npz/<model>/``). The evaluator (``../shared/realmodels/evaluate.py`` by default) runs in
its own Python (``$REALMODELS_VENV/bin/python``, or ``--evaluator-python``), which has its
tokenizer; pass ``--evaluator ''`` to only compile and check.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

import qcompiler
from qcompiler import passes as lib
from qcompiler.instruments import Timing
from qcompiler.latency import measure_latencies
from qcompiler.options import CompileOptions
from qcompiler.pipelines import canonicalize, int8_transformer
from qcompiler.targets import get_target

HERE = Path(__file__).resolve().parent


def variants(calib: Path, target: str) -> dict[str, list]:
    """name -> pass list; each adds one change to the one before it (the last is int8-transformer)."""
    t = get_target(target).name

    def build(smooth=None, float_outputs=True, clip=False, search=False):
        return canonicalize() + ([smooth] if smooth else []) + [
            lib.AssignPrecision(target=t, float_linear_outputs=float_outputs)] + (
            [lib.SearchWeightRanges()] if clip else []) + [
            lib.CalibrateSearch(data=calib) if search else lib.Calibrate(data=calib, method="mse"),
            lib.InsertQDQ(), lib.FoldQuantizedWeights()]

    return {
        "int8 (default placement, mse)": build(float_outputs=False),
        "+ float linear outputs": build(),
        "+ weight MSE clipping": build(clip=True),
        "+ range search (held-out)": build(clip=True, search=True),
        "+ smoothquant (folded only)": build(lib.SmoothQuant(data=calib, target=t), clip=True, search=True),
        "smoothquant explicit, mse calibrate": build(lib.SmoothQuant(data=calib, target=t, explicit=True), clip=True),
        "+ smoothquant (explicit Mul)": build(lib.SmoothQuant(data=calib, target=t, explicit=True), clip=True,
                                             search=True),
        "int8-transformer pipeline": int8_transformer(CompileOptions(calib=calib, target=t, objective="size")),
    }


def linear_coverage(model: qcompiler.ir.Model) -> tuple[int, int]:
    """(int8 linear layers, linear layers): MatMul/Gemm with a constant weight read through int8 Q/DQ."""
    def dequantized(value) -> bool:
        producer = value.producer() if value is not None else None
        return producer is not None and producer.op_type == "DequantizeLinear"

    linear = int8 = 0
    for node in model.graph:
        if node.op_type not in ("MatMul", "Gemm"):
            continue
        weight = node.inputs[1]
        source = weight.producer().inputs[0] if dequantized(weight) else weight
        if source.const is None:
            continue  # activation x activation
        linear += 1
        int8 += dequantized(weight) and dequantized(node.inputs[0])
    return int8, linear


def evaluate(python: str, evaluator: str, models_dir: Path, candidate_dir: Path, model: str) -> dict:
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        subprocess.run([python, evaluator, str(models_dir), "--cand", str(candidate_dir), "--only", model,
                        "--json", out.name], check=True, capture_output=True, text=True)
        return json.loads(Path(out.name).read_text())


def add_evaluator_arguments(parser: argparse.ArgumentParser, work: str) -> None:
    """--evaluator, --evaluator-python, --work (default: ``work`` in the temporary directory), --json."""
    parser.add_argument("--evaluator", default=str(HERE.parent.parent / "shared" / "realmodels" / "evaluate.py"))
    parser.add_argument("--evaluator-python",
                        default=os.path.join(os.environ.get("REALMODELS_VENV", "/tmp/realmodels-venv"), "bin", "python"))
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / work)
    parser.add_argument("--json", type=Path, help="write every number to this file")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models_dir", type=Path)
    parser.add_argument("--model", default="minilm_l6")
    parser.add_argument("--target", default="auto")
    parser.add_argument("--variants", help="comma-separated variant numbers (1-based) to run; default all")
    add_evaluator_arguments(parser, "qcompiler-minilm-accuracy")
    args = parser.parse_args(argv)

    calib = args.models_dir / "data" / "calib_npz" / args.model
    table = variants(calib, args.target)
    chosen = list(table) if not args.variants else [list(table)[int(i) - 1] for i in args.variants.split(",")]
    rows = []
    print("| variant | int8 linear | compile s | FP32 | int8 | cosine | SQNR dB | eval s |\n|---|---|---|---|---|---|---|---|")
    for index, name in enumerate(chosen, 1):
        timing = Timing()
        model = qcompiler.load(args.models_dir / f"{args.model}.onnx")
        qcompiler.PassManager(table[name], instruments=[timing])(model)
        folder = args.work / f"v{index}"
        folder.mkdir(parents=True, exist_ok=True)
        qcompiler.save(model, folder / f"{args.model}.onnx")
        row = {"variant": name, "int8_linear": linear_coverage(model),
               "seconds": {r.name: round(r.seconds, 2) for r in timing.records if r.seconds >= 0.05},
               "compile_s": round(sum(r.seconds for r in timing.records), 2),
               "smoothquant": model.plan.reports.get("smoothquant"), "calibrate_search": model.plan.reports.get("calibrate_search")}
        if args.evaluator:
            result = evaluate(args.evaluator_python, args.evaluator, args.models_dir, folder, args.model)
            row["eval"] = result
        rows.append(row)
        print(_line(row), flush=True)
    feed = dict(np.load(sorted(calib.glob("*.npz"))[0]))
    paths = [str(args.models_dir / f"{args.model}.onnx")] + [str(args.work / f"v{i}" / f"{args.model}.onnx")
                                                             for i in range(1, len(chosen) + 1)]
    latencies = measure_latencies(paths, feed, threads=2, runs=20, min_seconds=1.0, rounds=3)
    print(f"\nonnxruntime latency, 2 threads, first calibration feed {[v.shape for v in feed.values()][0]}:")
    print(f"| FP32 | {latencies[0].median_ms:.2f} ms |")
    for row, latency in zip(rows, latencies[1:]):
        row["latency_ms"] = latency.median_ms
        print(f"| {row['variant']} | {latency.median_ms:.2f} ms | {latencies[0].median_ms / latency.median_ms:.2f}x |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1, default=str))
    return 0


def _line(row: dict) -> str:
    """One markdown row: variant, int8 linear layers, compile seconds, FP32 / candidate metric, cosine, SQNR."""
    int8, linear = row["int8_linear"]
    text = f"| {row['variant']:<32} | {int8}/{linear} | {row['compile_s']:6.1f} |"
    for scores in (row.get("eval") or {}).get("models", {}).values():
        cand, fp32 = scores.get("cand", {}), scores.get("fp32", {})
        metric = next(k for k in fp32 if k != "n")
        text += (f" {fp32[metric]:.3f} | {cand.get(metric, float('nan')):.3f} | {cand.get('cos_mean', float('nan')):.4f}"
                 f" | {cand.get('sqnr_db', float('nan')):.1f} | {scores.get('cand_s', float('nan'))} |")
    return text


if __name__ == "__main__":
    sys.exit(main())
