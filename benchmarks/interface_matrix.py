"""Issue 17's interface-variant matrix: every realmodels model x interface variant x quantizing pipeline.

For each model of ``/root/realmodels/MANIFEST.json`` (the light coverage graphs included; smallest
file first), each variant of ``tests/robustness/variants.py`` (a non-float output, an exposed intermediate
activation, an output also consumed, a duplicated output, an input passed through, an initializer
output, an optional input with a default, every weight also an input with a default, a dynamic batch
with calibration batches of different sizes) and each quantizing pipeline of its ``PIPELINES`` (int8, int8 with
``sensitivity_threshold=0.005``, int8-transformer, auto, int8-dfq, w4a8, dynamic, weight-only RTN into
MatMulNBits and GPTQ into blocked DequantizeLinear; ``objective="size"`` so the quantized graph is what
is checked), it compiles the derived model on ``--batches`` calibration
batches (``--samples``: each cut to its first N samples), runs the result in onnxruntime on the first
batch and compares every output with the float variant's: the added outputs that must be unchanged
(shapes, masks, inputs, constants) bit for bit, float ones by SQNR. A case is ``ok``, a one-line
``user-error`` (counted with its message) or an ``internal-error`` (a crash, a compiled model
onnxruntime cannot run, a changed output). Each case runs in a worker process
(``tests/robustness/isolated.py``): a hard crash of onnxruntime is an internal error of that case and the
matrix goes on. Results (counts, messages, every case) go to ``--json`` and a Markdown summary next to
it, rewritten after every case; a run resumes from the cases already in ``--json``, running its
internal errors again (``--restart``: start over), so the matrix runs in parts (``--only``, ``--variants``, ``--pipelines``) into one file.

    nice -n 10 python benchmarks/interface_matrix.py [--models-dir /root/realmodels] [--only NAME ...]
        [--variants V ...] [--pipelines P ...] [--batches 4] [--samples N] [--restart]
        [--json benchmarks/results/interface_matrix.json]
    python benchmarks/interface_matrix.py --merge PART.json ... --json benchmarks/results/interface_matrix.json

``--merge`` joins parts run side by side into separate files into ``--json``, keeping the cases already there
(a case in a part replaces the same model, variant and pipeline; each case keeps its calibration size).
"""

from __future__ import annotations

import argparse
import collections
import glob
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import onnx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.robustness: the variant builders

from tests.robustness.isolated import Crashed, IsolatedRunner  # noqa: E402
from tests.robustness.variants import PIPELINES, VARIANTS, Outcome, run_case  # noqa: E402


def models(directory: Path, only: list[str]) -> list[str]:
    """The manifest's models, smallest file first (``only``: these, by name or name without ``coverage/``)."""
    manifest = json.loads((directory / "MANIFEST.json").read_text())
    names = [n.removesuffix(".onnx") for n in sorted(manifest, key=lambda n: manifest[n].get("bytes", 0))]
    if not only:
        return names
    return [n for wanted in only for n in names if wanted in (n, n.split("/")[-1])]  # in the order asked


def calibration(directory: Path, name: str, batches: int, samples: int | None) -> list[dict[str, np.ndarray]]:
    """The first ``batches`` calibration batches, each cut to its first ``samples`` samples when given."""
    files = sorted(glob.glob(str(directory / "data" / "calib_npz" / name / "*.npz")))[:batches]
    return [{k: v[:samples] for k, v in np.load(f).items()} for f in files]


_derived: dict[tuple, tuple] = {}  # the worker's (model, variant, batches, samples) -> derived model


def derived_case(directory: Path, name: str, variant: str, batches: int, samples: int | None, pipeline: str) -> Outcome:
    """One case, in the worker process: the variant of ``name`` (kept for the next pipeline) through ``pipeline``."""
    key = (str(directory), name, variant, batches, samples)
    if key not in _derived:
        _derived.clear()
        proto = onnx.load(str(directory / f"{name}.onnx"))
        _derived[key] = VARIANTS[variant](proto, calibration(directory, name, batches, samples))
    derived, feeds, extra = _derived[key]
    return run_case(derived, feeds, extra, PIPELINES[pipeline])


def summarize(cases: list[dict]) -> dict:
    counts = collections.Counter(c["status"] for c in cases)
    messages = collections.Counter(c["message"] for c in cases if c["status"] == "user-error")
    return {"cases": len(cases), "counts": dict(counts),
            "user_errors": [{"message": m, "cases": k} for m, k in messages.most_common()],
            "internal_errors": [c for c in cases if c["status"] == "internal-error"]}


def write(path: Path, cases: list[dict], settings: dict) -> None:
    summary = summarize(cases)
    path.write_text(json.dumps({"settings": settings, "summary": summary, "cases": cases}, indent=1))
    lines = [f"# Interface-variant matrix ({settings['date']}, {settings['machine']})", "",
             f"{summary['cases']} cases: " + ", ".join(f"{k} {v}" for k, v in sorted(summary["counts"].items())),
             "", f"Models: {', '.join(settings['models'])}", f"Variants: {', '.join(settings['variants'])}",
             f"Pipelines: {', '.join(settings['pipelines'])} (objective size where the pipeline takes one; "
             "calibration batches x samples per case below)", "", "## User errors", ""]
    lines += [f"- {u['cases']} x `{u['message']}`" for u in summary["user_errors"]] or ["none"]
    lines += ["", "## Internal errors", ""]
    lines += [f"- {c['model']} / {c['variant']} / {c['pipeline']}: `{c['message'].splitlines()[-1][:300]}`"
              for c in summary["internal_errors"]] or ["none"]
    lines += ["", "## Cases", "", "| model | variant | pipeline | calibration | status | s | min SQNR dB |",
              "|---|---|---|---|---|---|---|"]
    for c in cases:
        sqnr = min(c["sqnr_db"].values(), default=None)
        lines.append(f"| {c['model']} | {c['variant']} | {c['pipeline']} | {c.get('calibration', '')} | {c['status']} | "
                     f"{c['seconds']:.1f} | {'' if sqnr is None else sqnr} |")
    path.with_suffix(".md").write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models-dir", type=Path, default=Path("/root/realmodels"))
    parser.add_argument("--only", nargs="*", default=[])
    parser.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--pipelines", nargs="*", default=list(PIPELINES), choices=list(PIPELINES))
    parser.add_argument("--batches", type=int, default=4)
    parser.add_argument("--samples", type=int, default=None, help="cut each batch to its first N samples")
    parser.add_argument("--json", type=Path, default=Path("benchmarks/results/interface_matrix.json"))
    parser.add_argument("--restart", action="store_true", help="forget the cases already in --json")
    parser.add_argument("--merge", nargs="+", type=Path, help="join these part files into --json (its cases kept) and stop")
    args = parser.parse_args()
    if args.merge:
        files = ([args.json] if args.json.exists() and args.json not in args.merge else []) + args.merge
        parts = [json.loads(p.read_text()) for p in files]
        joined = {(c["model"], c["variant"], c["pipeline"]): c for part in parts for c in part["cases"]}
        cases = list(joined.values())
        settings = {"date": max(p["settings"]["date"] for p in parts), "machine": parts[0]["settings"]["machine"],
                    "models": sorted({c["model"] for c in cases}),
                    "variants": [v for v in VARIANTS if any(c["variant"] == v for c in cases)],
                    "pipelines": [p for p in PIPELINES if any(c["pipeline"] == p for c in cases)]}
        write(args.json, cases, settings)
        return
    names = models(args.models_dir, args.only)
    cases = json.loads(args.json.read_text())["cases"] if not args.restart and args.json.exists() else []
    cases = [c for c in cases if c["status"] != "internal-error"]  # run again (after a fix)
    done = {(c["model"], c["variant"], c["pipeline"]) for c in cases}
    settings = {"date": time.strftime("%Y-%m-%d"), "machine": f"{platform.machine()} {platform.processor()}".strip(),
                "models": sorted({c["model"] for c in cases} | set(names)),
                "variants": [v for v in VARIANTS if v in args.variants or any(c["variant"] == v for c in cases)],
                "pipelines": [p for p in PIPELINES if p in args.pipelines or any(c["pipeline"] == p for c in cases)],
                "batches": args.batches, "samples": args.samples}
    runner = IsolatedRunner()
    for name in names:
        for variant in args.variants:
            for pipeline in args.pipelines:
                if (name, variant, pipeline) in done:
                    continue
                start = time.perf_counter()
                outcome = runner(derived_case, args.models_dir, name, variant, args.batches, args.samples, pipeline)
                if isinstance(outcome, Crashed):
                    outcome = Outcome("internal-error", str(outcome), seconds=time.perf_counter() - start)
                cases.append({"model": name, "variant": variant, "pipeline": pipeline,
                              "calibration": f"{args.batches} x {args.samples or 'all'}", "status": outcome.status,
                              "message": outcome.message, "sqnr_db": outcome.sqnr_db,
                              "seconds": round(outcome.seconds, 2)})
                print(f"{name} / {variant} / {pipeline}: {outcome.status} {outcome.seconds:.1f}s "
                      f"{outcome.message.splitlines()[-1][:200] if outcome.message else ''}", flush=True)
                write(args.json, cases, settings)
    runner.close()
    print(json.dumps(summarize(cases)["counts"]))


if __name__ == "__main__":
    main()
