"""Run the canonicalization pipeline over a folder of ONNX models and check it changed no output.

For each ``*.onnx`` under MODELS_DIR (recursively; ``.data`` files and dot-files skipped): load, run
``canonicalize`` with verification after every pass, then compare onnxruntime outputs of the original
and the result on real inputs (the first calibration batch under
``MODELS_DIR/data/calib_npz/<relative name>/`` when present, else seeded random inputs). Reports per
model: nodes before/after, Constant and foldable-BatchNormalization nodes left, max relative output
difference, pipeline time. Writes JSON with ``--json``.

    python benchmarks/canonicalize_models.py MODELS_DIR [--json out.json] [--only PATTERN]
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import sys
import time
from pathlib import Path

import numpy as np

from qcompiler import PassManager, ir
from qcompiler.instruments import relative_difference
from qcompiler.ir.testing import random_feeds, run_onnxruntime
from qcompiler.passes.fold_batchnorm import find_foldable_batchnorms
from qcompiler.pipelines import canonicalize


def feeds_for(models_dir: Path, relative: str, model: ir.Model) -> tuple[dict, str]:
    batch = models_dir / "data" / "calib_npz" / relative / "batch_000.npz"
    if batch.exists():
        return dict(np.load(batch)), "calibration batch"
    return random_feeds(model, seed=0), "random"


def measure(models_dir: Path, path: Path) -> dict:
    relative = str(path.relative_to(models_dir).with_suffix(""))
    original = ir.load(path)
    feeds, source = feeds_for(models_dir, relative, original)
    expected = run_onnxruntime(original, feeds)
    model = original.clone()
    start = time.perf_counter()
    PassManager(canonicalize(), verify="each")(model)
    seconds = time.perf_counter() - start
    ir.verify(model, strict=True)
    actual = run_onnxruntime(model, feeds)
    return {
        "model": relative,
        "nodes_before": len(original.graph),
        "nodes_after": len(model.graph),
        "constant_nodes_left": sum(n.op_type == "Constant" for n in model.graph),
        "batchnorm_left": sum(n.op_type == "BatchNormalization" for n in model.graph),
        "foldable_batchnorm_left": len(find_foldable_batchnorms(model.graph)),
        "max_rel_diff": max(relative_difference(a, e) for a, e in zip(actual, expected)),
        "seconds": round(seconds, 3),
        "inputs": source,
        "opset": model.opset,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models_dir", type=Path)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--only", default="*", help="shell pattern on the relative model name")
    args = parser.parse_args()
    paths = sorted(p for p in args.models_dir.rglob("*.onnx")
                   if not any(part.startswith(".") or part == "data" for part in p.relative_to(args.models_dir).parts))
    rows = []
    header = f"{'model':<34} {'nodes':>11} {'Const':>5} {'BN':>3} {'fold.BN':>7} {'max rel diff':>12} {'time s':>7}"
    print(header)
    for path in paths:
        name = str(path.relative_to(args.models_dir).with_suffix(""))
        if not fnmatch.fnmatch(name, args.only):
            continue
        row = measure(args.models_dir, path)
        rows.append(row)
        print(f"{row['model']:<34} {row['nodes_before']:>5}->{row['nodes_after']:<5} {row['constant_nodes_left']:>5} "
              f"{row['batchnorm_left']:>3} {row['foldable_batchnorm_left']:>7} {row['max_rel_diff']:>12.2e} "
              f"{row['seconds']:>7.2f}", flush=True)
    if args.json:
        args.json.write_text(json.dumps({"models": rows}, indent=2) + "\n")
    bad = [r["model"] for r in rows if r["max_rel_diff"] > 1e-4 or r["constant_nodes_left"] or r["foldable_batchnorm_left"]]
    if bad:
        print("FAILED: " + ", ".join(bad), file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
