"""Weight-only low-bit quantization of an LLM (SmolLM2-135M-Instruct, Qwen2.5-Coder-1.5B-Instruct): qcompiler
against onnxruntime and NNCF.

    python benchmarks/llm_weight_only.py [--model smollm2|qwen2.5-coder-1.5b] [--work DIR] [--only 'ort_default-*']
                                         [--threads 2] [--latency] [--force]

Run it with the benchmark's tools venv (``benchmarks/README.md``, section 5): torch CPU, transformers and
gguf for the export, nncf for its peer row, and qcompiler itself installed in it. The first run exports
the models and token streams with ``llm_export.py`` into ``--work`` (gitignored, not in git; by default
``benchmarks/work/llm`` for SmolLM2, ``benchmarks/work/llm-MODEL`` for the others). Qwen2.5-Coder-1.5B is the
scale case: its float32 export is 7.1 GB with external data, and every row's peak resident memory is
reported against that size.

Every row (``ROWS``: method, bits, block size, symmetric or not) is built in a fresh child process
(``llm_quantizers.build``; time and peak resident memory of the child), then scored:

* perplexity on 8192 tokens of CPython's ``pydoc_data.topics`` in 16 windows of 512 tokens, no KV cache,
  each window predicting its tokens 2..512 (``perplexity``); calibration (AWQ, GPTQ) uses 16 x 512
  tokens of Debian's licence texts, never the evaluation text;
* size: the model's bytes (its ``.onnx`` and external data files) over the FP32 export's (the float embedding
  table included);

and with ``--latency``, prefill of 128 tokens (no-KV model) and one decode step after 128 cached tokens
(KV model) for FP32, onnxruntime's int4 (DEFAULT, i.e. its RTN, MatMulNBits) and qcompiler's RTN at the
same settings, with float and with int8 activations (``qc_rtn_i8a``: ``--int8-activations``), the KV models
quantized alike; the models run in alternation, median over the rounds.

A finished row is kept in ``WORK/rows/NAME.json`` and not rebuilt unless ``--force``; the table is
written from every kept row to ``benchmarks/results/llm_weight_only.{json,md}`` (SmolLM2) or
``llm_weight_only_MODEL.{json,md}``. A qcompiler row whose
pipeline does not exist yet reads "not available". The machine may be shared: latencies are ratios
measured side by side in one run, not absolute numbers to compare across runs.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import llm_export  # noqa: E402  (benchmarks/llm_export.py: file names and the fixed corpus settings)

QUANTIZERS = str(HERE / "llm_quantizers.py")
RESULTS = HERE / "results"
PREFILL_TOKENS = 128
DECODE_PAST = 128


@dataclass(frozen=True)
class Row:
    method: str
    bits: int
    block: int
    symmetric: bool

    @property
    def name(self) -> str:
        return f"{self.method}-w{self.bits}-b{self.block}-{'sym' if self.symmetric else 'asym'}"


def _rows() -> list[Row]:
    """Every candidate: 4 bits at block 128 and 32, symmetric and asymmetric, where the method offers it
    (onnxruntime's k-quant and HQQ always store a zero point: asymmetric only), and 2 bits, the lowest
    width below 4 that onnxruntime's MatMulNBits runs (its quantizer accepts 2, 4 and 8 bits only). qcompiler's
    methods with float zero points (``_fzp``, asymmetric only) are the form of onnxruntime's HQQ; at 2 bits they
    also run with the embedding table float (``_embf``), as onnxruntime's and NNCF's rows keep it."""
    grid = [(block, symmetric) for block in (128, 32) for symmetric in (True, False)]
    rows = []
    for method in ("ort_default", "ort_rtn", "ort_gptq", "nncf_awq", "qc_rtn", "qc_hqq", "qc_awq", "qc_gptq"):
        rows += [Row(method, 4, block, symmetric) for block, symmetric in grid]
    for method in ("ort_k_quant", "ort_hqq"):
        rows += [Row(method, 4, block, False) for block in (128, 32)]
    for method in ("ort_default", "qc_rtn", "qc_hqq", "qc_awq", "qc_gptq"):
        rows += [Row(method, 2, block, symmetric) for block, symmetric in grid]
    rows += [Row("ort_hqq", 2, block, False) for block in (128, 32)]
    for method in ("qc_rtn_fzp", "qc_hqq_fzp", "qc_awq_fzp", "qc_gptq_fzp"):
        rows += [Row(method, bits, block, False) for bits in (4, 2) for block in (128, 32)]
    for method in ("qc_hqq_fzp_embf", "qc_awq_fzp_embf", "qc_gptq_fzp_embf", "qc_gptq_embf"):
        rows += [Row(method, 2, block, False) for block in (128, 32)]
    return rows + [Row("qc_rtn_i8a", 4, 32, False)]


ROWS = _rows()


def session(path: Path, threads: int):
    from qcompiler.bench.session import open_session

    return open_session(str(path), threads)


def perplexity(model: Path, tokens: np.ndarray, threads: int) -> float:
    """exp of the mean negative log-likelihood of every window's tokens 2..CONTEXT given the ones before."""
    runner = session(model, threads)
    losses = []
    for window in tokens.reshape(-1, llm_export.CONTEXT):
        logits = runner.run(["logits"], {"input_ids": window[None]})[0][0, :-1].astype(np.float64)
        top = logits.max(axis=-1)
        log_total = np.log(np.exp(logits - top[:, None]).sum(axis=-1)) + top
        losses.append(log_total - logits[np.arange(len(window) - 1), window[1:]])
    return float(np.exp(np.concatenate(losses).mean()))


def ensure_export(work: Path, model: str) -> dict:
    if not (work / "export.json").exists():
        subprocess.run([sys.executable, str(HERE / "llm_export.py"), str(work), "--model", model], check=True)
    export = json.loads((work / "export.json").read_text())
    export.setdefault("nokv", llm_export.NOKV)  # an export.json written before the model choice: SmolLM2's
    export.setdefault("kv", llm_export.KV)
    return export


def model_bytes(path: Path) -> int:
    """The bytes of an ONNX model: its file and the external data files it names."""
    from qcompiler.ir.external_data import data_files
    from qcompiler.ir.serde import _read_proto

    proto, _ = _read_proto(path)
    return path.stat().st_size + sum((path.parent / name).stat().st_size for name in data_files(proto))


def build(row: Row, src: Path, dst: Path, calib: Path) -> dict:
    """Build one candidate in a child; the status says "not available" when qcompiler has no such pipeline."""
    from qcompiler.bench.memory import ChildError, run_child

    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        child = run_child(f"{QUANTIZERS}:build", row.method, str(src), str(dst), row.bits, row.block, row.symmetric,
                          str(calib))
    except ChildError as error:
        message = str(error)
        unavailable = row.method.startswith("qc_") and ("weight-only" in message or "weight_" in message
                                                        or "block_size" in message)
        return {"status": ("not available: " if unavailable else "failed: ") + message[:300]}
    return {"status": "ok", "compile_s": round(child.seconds, 1), "peak_mb": round(child.peak_mb)}


def candidate(row: Row, work: Path) -> Path:
    """The row's no-KV candidate: ``candidates/NAME/model.onnx``, a folder of its own for its external data."""
    return work / "candidates" / row.name / "model.onnx"


def build_candidate(row: Row, work: Path, nokv: str, say) -> dict:
    """Build the row's no-KV candidate once: :func:`candidate`'s folder and ``NAME.build.json`` (the child's
    time and memory), both renamed into place when complete, so a scoring run can use what a
    ``--build-only`` run made meanwhile."""
    folder, kept = candidate(row, work).parent, work / "candidates" / f"{row.name}.build.json"
    if kept.exists():
        return json.loads(kept.read_text())
    say(f"{row.name}: building")
    staging = folder.with_name(f"{row.name}.staging")
    shutil.rmtree(staging, ignore_errors=True)
    result = build(row, work / nokv, staging / "model.onnx", work / "calib_npz")
    if result["status"] == "ok":
        shutil.rmtree(folder, ignore_errors=True)
        staging.replace(folder)
    staging.with_suffix(".json").write_text(json.dumps(result))
    staging.with_suffix(".json").replace(kept)
    return result


def score_row(row: Row, work: Path, nokv: str, tokens: np.ndarray, threads: int, force: bool, say) -> dict:
    kept = work / "rows" / f"{row.name}.json"
    if kept.exists() and not force:
        return json.loads(kept.read_text())
    model = candidate(row, work)
    result = {"name": row.name, "method": row.method, "bits": row.bits, "block": row.block, "symmetric": row.symmetric}
    result.update(build_candidate(row, work, nokv, say))
    if result["status"] == "ok":
        say(f"{row.name}: perplexity")
        start = time.perf_counter()
        try:
            result["perplexity"] = round(perplexity(model, tokens, threads), 3)
        except Exception as error:  # a peer's output onnxruntime refuses: the row says so, the run goes on
            result["status"] = f"does not run in onnxruntime: {str(error).splitlines()[0][:300]}"
        result["perplexity_s"] = round(time.perf_counter() - start, 1)
        result["size_ratio"] = round(model_bytes(model) / model_bytes(work / nokv), 4)
        result["size_mb"] = round(model_bytes(model) / 1e6, 1)
        shutil.rmtree(model.parent)  # the candidates are large; the row keeps what was measured
        (work / "candidates" / f"{row.name}.build.json").unlink()
    say(f"{row.name}: {result}")
    kept.parent.mkdir(exist_ok=True)
    kept.write_text(json.dumps(result, indent=1))
    return result


def fp32_row(work: Path, nokv: str, tokens: np.ndarray, threads: int, force: bool) -> dict:
    kept = work / "rows" / "fp32.json"
    if kept.exists() and not force:
        return json.loads(kept.read_text())
    result = {"name": "fp32", "method": "fp32", "bits": 32, "block": None, "symmetric": None, "status": "ok",
              "perplexity": round(perplexity(work / nokv, tokens, threads), 3), "size_ratio": 1.0,
              "size_mb": round(model_bytes(work / nokv) / 1e6, 1)}
    kept.parent.mkdir(exist_ok=True)
    kept.write_text(json.dumps(result, indent=1))
    return result


def latency(work: Path, export: dict, tokens: np.ndarray, threads: int, rows: list[Row], say) -> list[dict]:
    """Prefill (128 tokens, no-KV model) and decode (1 token after 128 cached, KV model) of FP32 and every
    row in ``rows`` built from both exports, measured in alternation (median over the rounds)."""
    from qcompiler.latency import measure_latencies

    candidates = [("fp32", work / export["nokv"], work / export["kv"])]
    results = []
    for row in rows:
        paths = []
        for export_name in (export["nokv"], export["kv"]):
            path = work / "latency" / f"{row.name}.{export_name}"
            built = {"status": "ok"} if path.exists() else build(row, work / export_name, path, work / "calib_npz")
            if built["status"] != "ok":
                results.append({"name": row.name, "status": built["status"]})
                break
            paths.append(path)
        else:
            candidates.append((row.name, *paths))
    prefill_feed = {"input_ids": tokens[None, :PREFILL_TOKENS]}
    rng = np.random.default_rng(0)
    past_names, _ = llm_export.cache_names(export["layers"])
    decode_feed = {"input_ids": tokens[None, PREFILL_TOKENS:PREFILL_TOKENS + 1]}
    decode_feed.update({name: rng.standard_normal((1, export["kv_heads"], DECODE_PAST, export["head_dim"]),
                                                  dtype=np.float32) for name in past_names})
    say(f"latency: {[c[0] for c in candidates]}")
    prefill = measure_latencies([str(c[1]) for c in candidates], prefill_feed, threads=threads, runs=3,
                                min_seconds=6.0, rounds=5)
    decode = measure_latencies([str(c[2]) for c in candidates], decode_feed, threads=threads, runs=20,
                               min_seconds=6.0, rounds=5)
    for (name, *_), p, d in zip(candidates, prefill, decode):
        results.append({"name": name, "status": "ok", "prefill_ms": round(p.median_ms, 2), "prefill_runs": p.runs,
                        "decode_ms": round(d.median_ms, 3), "decode_runs": d.runs,
                        "prefill_vs_fp32": round(prefill[0].median_ms / p.median_ms, 3),
                        "decode_vs_fp32": round(decode[0].median_ms / d.median_ms, 3)})
    return results


def best_by_setting(rows: list[dict]) -> dict:
    """{(bits, block): {"qc": "method sym perplexity", "peer": ...}}, the lowest perplexity of each side."""
    best: dict = {}
    for row in rows:
        if row.get("perplexity") is None or row["method"] == "fp32":
            continue
        side = "qc" if row["method"].startswith("qc_") else "peer"
        entry = best.setdefault((row["bits"], row["block"]), {"qc": None, "peer": None, "qc_ppl": None,
                                                              "peer_ppl": None})
        if entry[f"{side}_ppl"] is None or row["perplexity"] < entry[f"{side}_ppl"]:
            entry[f"{side}_ppl"] = row["perplexity"]
            entry[side] = f"{row['method']} {'sym' if row['symmetric'] else 'asym'} {row['perplexity']:.3f}"
    return dict(sorted(best.items(), key=lambda item: (-item[0][0], -item[0][1])))


def markdown(report: dict) -> str:
    def number(value, digits=3):
        return "" if value is None else f"{value:.{digits}f}" if isinstance(value, float) else str(value)

    lines = [f"# {report['model'].split(' (')[0]} weight-only quantization ({report['threads']} threads)", "",
             f"Perplexity: {report['eval']}. Calibration: {report['calib']}. Machine: {report['machine']} "
             "(shared with other jobs).", "",
             "| method | bits | block | sym | perplexity | size vs FP32 | size MB | compile s | peak MB | status |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for row in report["rows"]:
        sym = "" if row["symmetric"] is None else ("sym" if row["symmetric"] else "asym")
        lines.append(f"| {row['method']} | {row['bits']} | {number(row['block'])} | {sym} | "
                     f"{number(row.get('perplexity'))} | {number(row.get('size_ratio'))} | "
                     f"{number(row.get('size_mb'), 1)} | {number(row.get('compile_s'), 1)} | "
                     f"{number(row.get('peak_mb'))} | {row['status']} |")
    lines += ["", "Best per bits and block (acceptance line 1: qcompiler's best below every peer's):", "",
              "| bits | block | best qcompiler | best onnxruntime / NNCF |", "|---|---|---|---|"]
    for (bits, block), best in best_by_setting(report["rows"]).items():
        lines.append(f"| {bits} | {block} | {best['qc'] or 'not available'} | {best['peer'] or 'not available'} |")
    if report.get("latency"):
        lines += ["", f"Latency (median, models in alternation): prefill {PREFILL_TOKENS} tokens without cache, "
                  f"decode 1 token after {DECODE_PAST} cached.", "",
                  "| model | prefill ms | decode ms | prefill speedup vs FP32 | decode speedup vs FP32 | status |",
                  "|---|---|---|---|---|---|"]
        for row in report["latency"]:
            lines.append(f"| {row['name']} | {number(row.get('prefill_ms'), 1)} | {number(row.get('decode_ms'), 2)} | "
                         f"{number(row.get('prefill_vs_fp32'), 2)} | {number(row.get('decode_vs_fp32'), 2)} | "
                         f"{row['status']} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=list(llm_export.SOURCES), default="smollm2")
    parser.add_argument("--work", type=Path, help="default: benchmarks/work/llm (SmolLM2), else llm-MODEL")
    parser.add_argument("--only", default="*", help="comma-separated globs over row names (e.g. 'ort_*-w4-*')")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--latency", action="store_true", help="also measure prefill and decode latency")
    parser.add_argument("--latency-rows", default="ort_default-w4-b32-asym,qc_rtn-w4-b32-asym,qc_rtn_i8a-w4-b32-asym",
                        help="rows whose KV and no-KV models are timed against FP32")
    parser.add_argument("--build-only", action="store_true",
                        help="only build the selected rows' candidates (a scoring run picks them up)")
    parser.add_argument("--force", action="store_true", help="rebuild rows already kept in WORK/rows")
    args = parser.parse_args()
    from qcompiler.bench.report import machine, machine_label

    def say(message: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)

    default_work = HERE / "work" / ("llm" if args.model == "smollm2" else f"llm-{args.model}")
    args.work = (args.work or default_work).resolve()  # the children run in scratch folders
    export = ensure_export(args.work, args.model)
    nokv = export["nokv"]
    tokens = np.load(args.work / "eval_tokens.npy")
    patterns = args.only.split(",")
    selected = [row for row in ROWS if any(fnmatch.fnmatch(row.name, p) for p in patterns)]
    if args.build_only:
        for row in selected:
            say(f"{row.name}: {build_candidate(row, args.work, nokv, say)}")
        return 0
    fp32 = fp32_row(args.work, nokv, tokens, args.threads, args.force)
    say(f"fp32 perplexity {fp32['perplexity']}")
    for row in selected:
        score_row(row, args.work, nokv, tokens, args.threads, args.force, say)
    kept = {path.stem: json.loads(path.read_text()) for path in (args.work / "rows").glob("*.json")}
    rows = [fp32] + [kept[row.name] for row in ROWS if row.name in kept]
    info = machine()
    report = {"model": llm_export.SOURCES[args.model].title,
              "threads": args.threads, "machine": machine_label(info, args.threads),
              "eval": f"{export['eval']['tokens']} tokens of {export['eval']['corpus']} (Python "
                      f"{export['python']}), context {export['eval']['context']}, no KV cache",
              "calib": f"{export['calib']['sequences']} x {export['calib']['context']} tokens of "
                       f"{', '.join(Path(f).name for f in export['calib']['files'])}",
              "export": export, "rows": rows}
    stem = "llm_weight_only" if args.model == "smollm2" else f"llm_weight_only_{args.model}"
    previous = RESULTS / f"{stem}.json"
    if args.latency:
        timed = [row for row in ROWS if row.name in args.latency_rows.split(",")]
        report["latency"] = latency(args.work, export, tokens, args.threads, timed, say)
    elif previous.exists():
        report["latency"] = json.loads(previous.read_text()).get("latency")
    RESULTS.mkdir(exist_ok=True)
    previous.write_text(json.dumps(report, indent=1))
    (RESULTS / f"{stem}.md").write_text(markdown(report))
    print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
