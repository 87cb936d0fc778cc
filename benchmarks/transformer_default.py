"""The model-aware default (``auto``) against ``int8-transformer`` and FP32 on transformer models.

For each model: compile with each pipeline exactly as ``qcompiler compile MODEL -o OUT --calib DIR``
does with no other flag (so the latency guard is on; ``NAME:size`` adds ``--objective size``, which keeps
the quantized model whatever the guard would measure), timing the compile (wall and process CPU
seconds); score the task metric and the agreement with FP32 (cosine); and measure onnxruntime latency
of FP32 and every result side by side (2 threads, alternating rounds, median) on the first calibration
feed, reported as the ratio FP32 / candidate.

    python benchmarks/transformer_default.py [--realmodels /root/realmodels] [--models MODELS_DIR]
        [--only minilm_l6,ocr_rec_ppocrv4,all_mpnet_base_v2] [--pipelines auto,auto:size,int8-transformer]
        [--onnxruntime-dynamic] [--json OUT]

``minilm_l6`` and ``ocr_rec_ppocrv4`` come from the realmodels kit (``--realmodels``), scored by its
evaluator (``../shared/realmodels/evaluate.py`` in ``$REALMODELS_VENV``: cosine to FP32 and topic 1-NN,
line accuracy); ``all_mpnet_base_v2`` from ``benchmarks/models.py MODELS_DIR --only all_mpnet_base_v2``,
scored by ``tasks.py`` (docstring retrieval R@1, cosine to FP32). ``--onnxruntime-dynamic`` adds
onnxruntime's ``quantize_dynamic`` with its defaults (int8 weights per tensor), ``per_channel=True``,
``weight_type=QUInt8`` and ``reduce_range=True``, to tell the causes of its loss apart: u8 x s8 products
summed pairwise into a saturating int16 on x86 without VNNI (gone with uint8 weights, which take
another kernel, or with 7-bit weights) and per-tensor ranges (what is left). Timings on a shared machine are
noisy: only ratios measured in one run mean something, and the output says how loaded the machine was.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import qcompiler
from qcompiler.latency import measure_latencies

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import tasks  # noqa: E402  (benchmarks/tasks.py)

REALMODELS = ("minilm_l6", "ocr_rec_ppocrv4")
ORT_DYNAMIC = {"ort-dynamic": {}, "ort-dynamic-per-channel": {"per_channel": True},
               "ort-dynamic-uint8-weights": {"weight_type": "QUInt8"},
               "ort-dynamic-reduce-range": {"reduce_range": True}}


def compile_timed(source: Path, output: Path, pipeline: str, calib: Path) -> dict:
    """Compile as the CLI does with only ``--pipeline`` and ``--calib`` (and ``--objective`` for a spec
    ``NAME:OBJECTIVE``); the seconds and what the passes decided."""
    name, _, objective = pipeline.partition(":")
    wall, cpu = time.perf_counter(), time.process_time()
    model = qcompiler.compile(source, output, pipeline=name, calib=calib, **({"objective": objective} if objective
                                                                           else {}))
    reports = model.plan.reports
    return {"compile_s": round(time.perf_counter() - wall, 1), "compile_cpu_s": round(time.process_time() - cpu, 1),
            "pipeline": reports.get("pipeline"), "dynamic_screen": reports.get("dynamic_screen"),
            "structure": reports.get("structure"), "latency_guard": reports.get("latency_guard"),
            "calibrate_search": {k: v for k, v in (reports.get("calibrate_search") or {}).items() if k != "errors"}}


def ort_dynamic(source: Path, output: Path, options: dict) -> dict:
    """onnxruntime's ``quantize_dynamic`` of ``source`` with ``options`` (weight type by name), timed."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    options = {k: getattr(QuantType, v) if k == "weight_type" else v for k, v in options.items()}
    wall, cpu = time.perf_counter(), time.process_time()
    quantize_dynamic(str(source), str(output), **options)
    return {"compile_s": round(time.perf_counter() - wall, 1), "compile_cpu_s": round(time.process_time() - cpu, 1)}


def realmodels_scores(models_dir: Path, candidate: Path, name: str) -> dict:
    """The realmodels evaluator's FP32 and candidate scores (task metric, cosine to FP32) of ``candidate/name.onnx``."""
    python = os.path.join(os.environ.get("REALMODELS_VENV", "/tmp/realmodels-venv"), "bin", "python")
    evaluator = HERE.parent.parent / "shared" / "realmodels" / "evaluate.py"
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        subprocess.run([python, str(evaluator), str(models_dir), "--cand", str(candidate.parent), "--only", name,
                        "--json", out.name], check=True, capture_output=True, text=True)
        scores = json.loads(Path(out.name).read_text())["models"][name]
    fp32, cand = scores["fp32"], scores["cand"]
    metric = next(k for k in fp32 if k != "n")
    return {"metric": metric, "fp32": fp32[metric], "value": cand.get(metric), "cosine": cand.get("cos_mean")}


def task_scores(models: dict[str, Path], eval_dir: Path) -> dict[str, dict]:
    results = tasks.evaluate(models, eval_dir, threads=2)
    metric = results["fp32"]["headline"]
    return {key: {"metric": metric, "fp32": results["fp32"][metric], "value": r.get(metric), "cosine": r.get("cos_mean"),
                  **({"error": r["error"]} if "error" in r else {})}
            for key, r in results.items() if key != "fp32"}


def run_model(name: str, source: Path, calib: Path, eval_dir: Path | None, pipelines: list[str], work: Path,
              ort_variants: dict[str, dict]) -> dict:
    outputs, row = {}, {"model": name, "pipelines": {}}
    for pipeline in [*pipelines, *ort_variants]:
        out = work / pipeline.replace(":", "-") / f"{name}.onnx"
        out.parent.mkdir(parents=True, exist_ok=True)
        print(f"{name}: compiling with {pipeline}", file=sys.stderr, flush=True)
        row["pipelines"][pipeline] = (ort_dynamic(source, out, ort_variants[pipeline]) if pipeline in ort_variants
                                      else compile_timed(source, out, pipeline, calib))
        outputs[pipeline] = out
    print(f"{name}: scoring", file=sys.stderr, flush=True)
    if eval_dir is None:
        scores = {p: realmodels_scores(source.parent, out, name) for p, out in outputs.items()}
    else:
        scores = task_scores({"fp32": source, **outputs}, eval_dir)
    feed = dict(np.load(sorted(calib.glob("*.npz"))[0]))
    latencies = measure_latencies([str(source), *map(str, outputs.values())], feed, threads=2, runs=5,
                                  min_seconds=2.0, rounds=5)
    row["fp32_ms"] = round(latencies[0].median_ms, 2)
    for (pipeline, record), latency in zip(row["pipelines"].items(), latencies[1:]):
        record.update(scores[pipeline], latency_ms=round(latency.median_ms, 2),
                      speedup=round(latencies[0].median_ms / latency.median_ms, 3))
    return row


def markdown(rows: list[dict]) -> str:
    """The table of every pipeline's scores; a candidate that failed to run shows its error."""
    def cell(value, digits: int) -> str:
        return "" if value is None else f"{value:.{digits}f}"

    lines = ["| model | pipeline | metric | FP32 | result | cosine to FP32 | speedup vs FP32 | compile s (CPU s) "
             "| kept |",
             "|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        for pipeline, r in row["pipelines"].items():
            kept = (r.get("latency_guard") or {}).get("kept", "")
            result = f"error: {r['error']}" if "error" in r else cell(r["value"], 3)
            lines.append(f"| {row['model']} | {pipeline} | {r['metric']} | {cell(r['fp32'], 3)} | {result} | "
                         f"{cell(r['cosine'], 4)} | {cell(r['speedup'], 2)}x | {r.get('compile_s')} "
                         f"({r.get('compile_cpu_s')}) | {kept} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--realmodels", type=Path, default=Path("/root/realmodels"))
    parser.add_argument("--models", type=Path, help="the folder benchmarks/models.py wrote all_mpnet_base_v2 into")
    parser.add_argument("--only", default="minilm_l6,ocr_rec_ppocrv4,all_mpnet_base_v2")
    parser.add_argument("--pipelines", default="auto,auto:size,int8-transformer",
                        help="named pipelines, each NAME or NAME:OBJECTIVE (latency, the default, or size)")
    parser.add_argument("--onnxruntime-dynamic", action="store_true", help="add quantize_dynamic's variants")
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "qcompiler-transformer-default")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    pipelines = [p for p in args.pipelines.split(",") if p]
    machine = {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
               "load_average_at_start": os.getloadavg(), "note": "shared machine: other jobs ran alongside"}
    rows = []
    for name in args.only.split(","):
        if name in REALMODELS:
            folder, eval_dir = args.realmodels, None
        elif args.models is not None:
            folder, eval_dir = args.models, args.models / "data" / "eval_npz" / name
        else:
            print(f"{name}: skipped (give --models, the folder benchmarks/models.py built it in)", file=sys.stderr)
            continue
        rows.append(run_model(name, folder / f"{name}.onnx", folder / "data" / "calib_npz" / name, eval_dir,
                              pipelines, args.work, ORT_DYNAMIC if args.onnxruntime_dynamic else {}))
        machine["load_average_at_end"] = os.getloadavg()
        if args.json:  # after every model: a later failure keeps what was measured
            args.json.write_text(json.dumps({"machine": machine, "rows": rows}, indent=1, default=str) + "\n")
        print(markdown(rows[-1:]), flush=True)
    print(f"\n{markdown(rows)}\n\nmachine: {machine}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
