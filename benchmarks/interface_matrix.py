"""Issue 17's interface-variant matrix: every realmodels model x interface variant x quantizing pipeline.

For each model of ``/root/realmodels/MANIFEST.json`` (``--coverage``: with the light coverage models),
each variant of ``tests/robustness/variants.py`` (a non-float output, an exposed intermediate
activation, an output also consumed, a duplicated output, an input passed through, an initializer
output, an optional input with a default, every weight also an input with a default, a dynamic batch
with calibration batches of different sizes) and each quantizing pipeline (int8, int8 with
``sensitivity_threshold=0.005``, int8-transformer, int8-dfq, w4a8; ``objective="size"`` so the
quantized graph is what is checked), it compiles the derived model on ``--batches`` calibration
batches (``--samples``: each cut to its first N samples), runs the result in onnxruntime on the first
batch and compares every output with the float variant's: the added outputs that must be unchanged
(shapes, masks, inputs, constants) bit for bit, float ones by SQNR. A case is ``ok``, a one-line
``user-error`` (counted with its message) or an ``internal-error`` (a crash, a compiled model
onnxruntime cannot run, a changed output). Results (counts, messages, every case) go to ``--json`` and
a Markdown summary next to it, rewritten after every case.

    nice -n 10 python benchmarks/interface_matrix.py [--models-dir /root/realmodels] [--only NAME ...]
        [--coverage] [--variants V ...] [--pipelines P ...] [--batches 4] [--samples N]
        [--json benchmarks/results/interface_matrix.json]
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

from tests.robustness.variants import PIPELINES, VARIANTS, run_case  # noqa: E402


def models(directory: Path, only: list[str], coverage: bool) -> list[str]:
    manifest = json.loads((directory / "MANIFEST.json").read_text())
    names = [n.removesuffix(".onnx") for n in manifest if coverage or not n.startswith("coverage/")]
    if not only:
        return names
    return [n for wanted in only for n in names if wanted in (n, n.split("/")[-1])]  # in the order asked


def calibration(directory: Path, name: str, batches: int, samples: int | None) -> list[dict[str, np.ndarray]]:
    """The first ``batches`` calibration batches, each cut to its first ``samples`` samples when given."""
    files = sorted(glob.glob(str(directory / "data" / "calib_npz" / name / "*.npz")))[:batches]
    return [{k: v[:samples] for k, v in np.load(f).items()} for f in files]


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
             f"Pipelines: {', '.join(settings['pipelines'])} (objective size, {settings['batches']} calibration "
             f"batches of {settings.get('samples') or 'all'} samples)", "", "## User errors", ""]
    lines += [f"- {u['cases']} x `{u['message']}`" for u in summary["user_errors"]] or ["none"]
    lines += ["", "## Internal errors", ""]
    lines += [f"- {c['model']} / {c['variant']} / {c['pipeline']}: `{c['message'].splitlines()[-1][:300]}`"
              for c in summary["internal_errors"]] or ["none"]
    lines += ["", "## Cases", "", "| model | variant | pipeline | status | s | min SQNR dB |",
              "|---|---|---|---|---|---|"]
    for c in cases:
        sqnr = min(c["sqnr_db"].values(), default=None)
        lines.append(f"| {c['model']} | {c['variant']} | {c['pipeline']} | {c['status']} | {c['seconds']:.1f} | "
                     f"{'' if sqnr is None else sqnr} |")
    path.with_suffix(".md").write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models-dir", type=Path, default=Path("/root/realmodels"))
    parser.add_argument("--only", nargs="*", default=[])
    parser.add_argument("--coverage", action="store_true", help="also the light coverage models")
    parser.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--pipelines", nargs="*", default=list(PIPELINES), choices=list(PIPELINES))
    parser.add_argument("--batches", type=int, default=4)
    parser.add_argument("--samples", type=int, default=None, help="cut each batch to its first N samples")
    parser.add_argument("--json", type=Path, default=Path("benchmarks/results/interface_matrix.json"))
    parser.add_argument("--append", action="store_true", help="keep the cases already in --json")
    args = parser.parse_args()
    names = models(args.models_dir, args.only, args.coverage)
    cases = json.loads(args.json.read_text())["cases"] if args.append and args.json.exists() else []
    done = {(c["model"], c["variant"], c["pipeline"]) for c in cases}
    settings = {"date": time.strftime("%Y-%m-%d"), "machine": f"{platform.machine()} {platform.processor()}".strip(),
                "models": sorted({c["model"] for c in cases} | set(names)), "variants": args.variants,
                "pipelines": args.pipelines, "batches": args.batches, "samples": args.samples}
    for name in names:
        proto = onnx.load(str(args.models_dir / f"{name}.onnx"))
        feeds = calibration(args.models_dir, name, args.batches, args.samples)
        for variant in args.variants:
            derived, variant_feeds, extra = VARIANTS[variant](proto, feeds)
            for pipeline in args.pipelines:
                if (name, variant, pipeline) in done:
                    continue
                outcome = run_case(derived, variant_feeds, extra, PIPELINES[pipeline])
                cases.append({"model": name, "variant": variant, "pipeline": pipeline, "status": outcome.status,
                              "message": outcome.message, "sqnr_db": outcome.sqnr_db,
                              "seconds": round(outcome.seconds, 2)})
                print(f"{name} / {variant} / {pipeline}: {outcome.status} {outcome.seconds:.1f}s "
                      f"{outcome.message.splitlines()[-1][:200] if outcome.message else ''}", flush=True)
                write(args.json, cases, settings)
    print(json.dumps(summarize(cases)["counts"]))


if __name__ == "__main__":
    main()
