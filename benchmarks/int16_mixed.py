"""Mixed precision with 16-bit activations: int8/float against int8/int16/float at the same threshold.

For each threshold ``T`` (``--thresholds``), ``MODEL`` (a realmodels model, by default the PP-OCRv4
recognizer) is compiled with ``--sensitivity-threshold T --objective size`` (so the precision search alone
decides what stays float: no latency placement), once as today (int8 or float per layer) and once with
``--int16`` (int8, 16-bit activations with int8 weights, or float). For each result: the share of the
multiply-accumulates in float, int8 and int16 (the compile summary), the file size, the task metric and
the cosine to FP32 (the realmodels evaluator, as ``transformer_default.py`` runs it), the compile time,
and the onnxruntime latency of FP32 and both results side by side (2 threads, alternating rounds,
median; on onnxruntime's CPU kernels a 16-bit layer computes in float, so it is not expected to be faster).

    python benchmarks/int16_mixed.py [--realmodels /root/realmodels] [--model ocr_rec_ppocrv4]
        [--thresholds 0.005] [--target auto] [--work DIR] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import qcompiler
from qcompiler.latency import measure_latencies
from qcompiler.summary import summarize

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from transformer_default import realmodels_scores  # noqa: E402  (benchmarks/transformer_default.py)


def compile_variant(source: Path, output: Path, calib: Path, threshold: float, int16: bool, target: str,
                    feed: dict) -> dict:
    """One compile, timed, and its precisions by share of MACs (float, int8, int16) and size."""
    wall = time.perf_counter()
    model = qcompiler.compile(source, output, calib=calib, sensitivity_threshold=threshold, objective="size",
                              target=target, **({"int16": True} if int16 else {}))
    seconds = time.perf_counter() - wall
    summary = summarize(model, feed)
    total = summary["totals"]["macs"] or 1
    share = {p: sum(r["macs"] for r in summary["layers"] if r["precision"] == p) / total
             for p in ("float", "int8", "int16")}
    layers = {p: sum(r["precision"] == p for r in summary["layers"]) for p in ("float", "int8", "int16")}
    mixed = model.plan.reports["mixed_precision"]
    return {"compile_s": round(seconds, 1), "macs_share": {p: round(v, 4) for p, v in share.items()},
            "layers": layers, "size_bytes": output.stat().st_size, "evaluations": mixed["evaluations"],
            "predicted_nsr": mixed["predicted"]["nsr"]}


def run(args: argparse.Namespace) -> list[dict]:
    source = args.realmodels / f"{args.model}.onnx"
    calib = args.realmodels / "data" / "calib_npz" / args.model
    feed = dict(np.load(sorted(calib.glob("*.npz"))[0]))
    rows = []
    for threshold in args.thresholds:
        row = {"threshold": threshold, "variants": {}}
        outputs = {}
        for variant, int16 in (("int8/float", False), ("int8/int16/float", True)):
            out = args.work / f"T{threshold:g}" / variant.replace("/", "-") / f"{args.model}.onnx"
            out.parent.mkdir(parents=True, exist_ok=True)
            print(f"{args.model} T={threshold:g}: compiling {variant}", file=sys.stderr, flush=True)
            row["variants"][variant] = compile_variant(source, out, calib, threshold, int16, args.target, feed)
            row["variants"][variant].update(realmodels_scores(args.realmodels, out, args.model))
            outputs[variant] = out
        latencies = measure_latencies([str(source), *map(str, outputs.values())], feed, threads=2, runs=5,
                                      min_seconds=2.0, rounds=7)
        row["fp32_ms"] = round(latencies[0].median_ms, 3)
        for record, latency in zip(row["variants"].values(), latencies[1:]):
            record.update(latency_ms=round(latency.median_ms, 3),
                          speedup=round(latencies[0].median_ms / latency.median_ms, 3))
        rows.append(row)
        print(markdown(args.model, [row]), flush=True)
    return rows


def markdown(model: str, rows: list[dict]) -> str:
    lines = [f"| {model} threshold | variant | float / int8 / int16 MACs % | layers float / int8 / int16 | size MB "
             "| metric | FP32 | result | cosine to FP32 | latency ms (FP32) | compile s |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        for variant, r in row["variants"].items():
            share = " / ".join(f"{100 * r['macs_share'][p]:.1f}" for p in ("float", "int8", "int16"))
            layers = " / ".join(str(r["layers"][p]) for p in ("float", "int8", "int16"))
            lines.append(f"| {row['threshold']:g} | {variant} | {share} | {layers} | {r['size_bytes'] / 1e6:.2f} | "
                         f"{r['metric']} | {r['fp32']:.3f} | {r['value']:.3f} | {r['cosine']:.4f} | "
                         f"{r['latency_ms']:.2f} ({row['fp32_ms']:.2f}) | {r['compile_s']} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--realmodels", type=Path, default=Path("/root/realmodels"))
    parser.add_argument("--model", default="ocr_rec_ppocrv4")
    parser.add_argument("--thresholds", type=float, nargs="+", default=[0.005])
    parser.add_argument("--target", default="auto")
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "qcompiler-int16-mixed")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    rows = run(args)
    if args.json:
        from qcompiler.bench import machine

        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"machine": machine(), "model": args.model, "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
