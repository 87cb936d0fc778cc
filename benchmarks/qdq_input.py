"""QDQ models as input: onnxruntime's ``quantize_static`` output for a realmodel, analyzed and recompiled by qcompiler.

The steps (each a command line, printed, so it can be rerun by hand):

1. onnxruntime ``quantize_static`` of the FP32 model (after ``quant_pre_process``, as its documentation asks):
   QDQ format, uint8 activations, int8 per-channel weights (U8S8), MinMax, the kit's calibration feeds;
2. ``qcompiler compile FP32 --objective size``: qcompiler's own int8 result (the line to match);
3. ``qcompiler compile ORT_QDQ --objective size``: the QDQ model taken apart (``ingest-qdq``) and
   re-quantized from the float weights it carries;
4. the same with ``--keep-qdq-scales``: onnxruntime's scales kept, qcompiler's placement, folding and checks;
5. with ``--analyze``: ``qcompiler analyze ORT_QDQ`` (the QDQ model in its own configuration), the
   layers whose quantization costs the most named.

Every model is scored by the realmodels kit's evaluator (line accuracy for the OCR recognizer).
``--objective size`` keeps int8 everywhere (the latency guard's choice is timing noise on a shared machine).

    python benchmarks/qdq_input.py MODELS_DIR [--model ocr_rec_ppocrv4] [--work DIR] [--analyze]
        [--evaluator-python PY] [--evaluator PATH] [--json OUT] [--markdown OUT]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from dynamic_minilm import evaluate as score  # noqa: E402  (benchmarks/dynamic_minilm.py: the kit's evaluator)
from dynamic_minilm import add_evaluator_arguments  # noqa: E402
from quantizers import NpzReader, ort_preprocess  # noqa: E402  (benchmarks/quantizers.py)

QCOMPILER = [sys.executable, "-m", "qcompiler"]


def run(command: list[str]) -> float:
    """Run ``command`` (printed first); its wall time in seconds."""
    print("$", " ".join(command), flush=True)
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def ort_quantize_static(model: Path, calib: Path, output: Path) -> float:
    """Step 1 (module docstring); seconds."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    start = time.perf_counter()
    prepared, _ = ort_preprocess(model, output.with_suffix(".pre.onnx"))
    quantize_static(str(prepared), str(output), NpzReader(calib), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    for leftover in output.parent.glob(output.stem + ".pre*.onnx"):
        leftover.unlink()
    return time.perf_counter() - start


def worst_layers(report: dict, count: int = 8) -> list[dict]:
    """The layers whose quantization alone costs the most output SQNR (the analysis's step 3)."""
    rows = sorted(report["layers"], key=lambda r: float(r["quantized_alone"]["sqnr_db"]))[:count]
    return [{"name": r["name"], "op": r["op"], "alone_sqnr_db": r["quantized_alone"]["sqnr_db"],
             "float_alone_sqnr_db": r["float_alone"]["sqnr_db"]} for r in rows]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models_dir", type=Path)
    parser.add_argument("--model", default="ocr_rec_ppocrv4")
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "qcompiler_qdq_input")
    parser.add_argument("--analyze", action="store_true", help="also run qcompiler analyze on the QDQ model")
    parser.add_argument("--reuse", action="store_true", help="keep the models, scores and analysis an earlier run "
                        "left in --work (a long run resumed)")
    add_evaluator_arguments(parser)
    parser.add_argument("--json", type=Path, default=HERE / "results" / "qdq_input.json")
    parser.add_argument("--markdown", type=Path, default=HERE / "results" / "qdq_input.md")
    args = parser.parse_args(argv)

    fp32 = args.models_dir / f"{args.model}.onnx"
    calib = args.models_dir / "data" / "calib_npz" / args.model
    name = f"{args.model}.onnx"
    dirs = {k: args.work / k for k in ("ort", "own", "requantized", "kept")}
    for d in dirs.values():
        d.mkdir(parents=True, exist_ok=True)
    ort_qdq = dirs["ort"] / name
    rows: dict[str, dict] = {}
    print(f"onnxruntime quantize_static (QDQ, U8S8, per channel) of {fp32}", flush=True)
    reused = args.reuse and ort_qdq.exists()
    rows["onnxruntime quantize_static (U8S8, per channel)"] = {
        "seconds": None if reused else ort_quantize_static(fp32, calib, ort_qdq), "dir": dirs["ort"]}
    compile_flags = ["--calib", str(calib), "--objective", "size"]
    for label, source, key, extra in (
            ("qcompiler compile FP32 (own int8)", fp32, "own", []),
            ("qcompiler compile ORT QDQ (re-quantized)", ort_qdq, "requantized", []),
            ("qcompiler compile ORT QDQ --keep-qdq-scales", ort_qdq, "kept", ["--keep-qdq-scales"])):
        command = [*QCOMPILER, "compile", str(source), "-o", str(dirs[key] / name), *compile_flags, *extra]
        reused = args.reuse and (dirs[key] / name).exists()
        rows[label] = {"seconds": None if reused else run(command), "dir": dirs[key], "command": " ".join(command[2:])}
    for label, row in rows.items():
        directory = row.pop("dir")
        cached = directory / "score.json"
        if not (args.reuse and cached.exists()):
            cached.write_text(json.dumps(score(args.evaluator_python, args.evaluator, args.models_dir, directory,
                                               args.model)))
        row["score"] = json.loads(cached.read_text())
        print(label, json.dumps(row["score"].get("cand"))[:300], flush=True)
    results: dict = {"model": args.model, "rows": rows,
                     "fp32": next(iter(rows.values()))["score"]["fp32"]}
    args.json.write_text(json.dumps(results, indent=1, default=str) + "\n")
    args.markdown.write_text(markdown(results))
    if args.analyze:
        out = args.work / "analysis.json"
        command = [*QCOMPILER, "analyze", str(ort_qdq), "--calib", str(calib), "--json", str(out), "-q"]
        seconds = None if args.reuse and out.exists() else run(command)
        report = json.loads(out.read_text())
        results["analysis"] = {"command": " ".join(command[2:]), "seconds": seconds,
                               "given_qdq": report.get("given_qdq"), "worst_layers": worst_layers(report),
                               "recommendation": {k: report["recommendation"].get(k) for k in
                                                  ("threshold", "int8_layers", "layers", "predicted")},
                               "kernels_flagged": report["kernels"]["flagged"]}
    args.json.write_text(json.dumps(results, indent=1, default=str) + "\n")
    args.markdown.write_text(markdown(results))
    print(markdown(results))
    return 0



def _seconds(row: dict) -> str:
    return "-" if row["seconds"] is None else f"{row['seconds']:.1f}"


def markdown(results: dict) -> str:
    metric = next(iter(results["rows"].values()))["score"]["metric"]
    head = next(iter(results["fp32"]))
    lines = [f"# QDQ input: {results['model']}", "",
             f"`python benchmarks/qdq_input.py /root/realmodels"
             f"{'' if results['model'] == 'ocr_rec_ppocrv4' else ' --model ' + results['model']}"
             f"{' --analyze' if 'analysis' in results else ''}` "
             f"(shared 2-core machine). Metric: {metric}; FP32 {results['fp32'][head]:.3f}.", "",
             f"| model | {head} | cosine to FP32 | same output | compile s |", "|---|---|---|---|---|"]
    for label, row in results["rows"].items():
        cand = row["score"].get("cand", {})
        if "error" in cand:
            lines.append(f"| {label} | error: {cand['error'][:80]} | | | {_seconds(row)} |")
            continue
        lines.append(f"| {label} | {cand[head]:.3f} | {cand['cos_mean']:.4f} | {cand.get('same_output', float('nan')):.3f} | "
                     f"{_seconds(row)} |")
    lines += ["", "Commands (`qcompiler` = `python -m qcompiler`):", ""]
    lines += [f"- `{row['command']}`" for row in results["rows"].values() if "command" in row]
    analysis = results.get("analysis")
    if analysis:
        lines += ["", f"## `{analysis['command']}`" + (f" ({analysis['seconds']:.0f} s)" if analysis["seconds"] else ""), "",
                  f"given: {analysis['given_qdq']}", "",
                  "Layers whose quantization alone costs the most (output SQNR dB, onnxruntime's scales):", "",
                  "| layer | op | quantized alone dB | float alone dB |", "|---|---|---|---|"]
        lines += [f"| {r['name']} | {r['op']} | {float(r['alone_sqnr_db']):.1f} | {float(r['float_alone_sqnr_db']):.1f} |"
                  for r in analysis["worst_layers"]]
        lines += ["", f"recommendation: {analysis['recommendation']}",
                  f"kernels flagged (target numerics vs simulation): {analysis['kernels_flagged']}"]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
