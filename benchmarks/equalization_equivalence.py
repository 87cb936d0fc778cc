"""Numeric equivalence of BatchNorm folding and cross-layer equalization on real graphs.

For every model: onnxruntime outputs of the original, after ``canonicalize`` (which folds BatchNorm),
and after ``canonicalize`` + ``equalize``; the max relative difference ``max|after - before| / max|before|``
per output (``qcompiler.instruments.relative_difference``) against the original. Models: every
``MODELS_DIR/*.onnx`` and ``MODELS_DIR/coverage/*.onnx`` (the realmodels kit: the light model-zoo graphs
with seeded random weights), and the onnx wheel's own ``onnx/backend/test/data/light/*.onnx`` graphs
(their weights are ConstantOfShape placeholders that constant folding turns into initializers). Inputs:
the first calibration batch (``MODELS_DIR/data/calib_npz/<name>/batch_000.npz``) when there is one, else
seeded random inputs.

    python benchmarks/equalization_equivalence.py /root/realmodels [--json out.json] [--only PATTERN]
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import time
from pathlib import Path

import numpy as np
import onnx

from qcompiler import PassManager, ir
from qcompiler.instruments import relative_difference
from qcompiler.ir.testing import random_feeds, run_onnxruntime
from qcompiler.passes import CrossLayerEqualization
from qcompiler.pipelines import canonicalize


def models(models_dir: Path) -> list[tuple[str, Path, Path | None]]:
    """(name, model file, calibration batch or None)."""
    found = []
    for path in sorted(models_dir.glob("*.onnx")) + sorted((models_dir / "coverage").glob("*.onnx")):
        name = str(path.relative_to(models_dir).with_suffix(""))
        batch = models_dir / "data" / "calib_npz" / name / "batch_000.npz"
        found.append((name, path, batch if batch.exists() else None))
    light = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"
    found += [(f"onnx-wheel/{p.stem}", p, None) for p in sorted(light.glob("light_*.onnx"))]
    return found


def measure(name: str, path: Path, batch: Path | None) -> dict:
    original = ir.load(path)
    feeds = dict(np.load(batch)) if batch is not None else random_feeds(original, seed=0)
    expected = run_onnxruntime(original, feeds)
    model = original.clone()
    PassManager(canonicalize())(model)
    folded = run_onnxruntime(model, feeds)
    start = time.perf_counter()
    PassManager([CrossLayerEqualization()])(model)
    seconds = time.perf_counter() - start
    equalized = run_onnxruntime(model, feeds)
    info = model.plan.reports["equalize"]
    return {
        "model": name,
        "inputs": "calibration batch" if batch is not None else "random",
        "batchnorm_nodes": sum(n.op_type == "BatchNormalization" for n in original.graph),
        "bn_fold_max_rel_diff": max(relative_difference(a, e) for a, e in zip(folded, expected)),
        "cle_pairs": len(info["pairs"]),
        "cle_sweeps": info["sweeps"],
        "cle_seconds": round(seconds, 3),
        "cle_max_rel_diff": max(relative_difference(a, e) for a, e in zip(equalized, expected)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models_dir", type=Path)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--only", default="*")
    args = parser.parse_args()
    rows = []
    print("| model | inputs | BN nodes | BN fold max rel diff | CLE pairs | sweeps | CLE s | BN fold + CLE max rel diff |")
    print("|---|---|---|---|---|---|---|---|")
    for name, path, batch in models(args.models_dir):
        if not any(fnmatch.fnmatch(name, p) for p in args.only.split(",")):
            continue
        row = measure(name, path, batch)
        rows.append(row)
        print(f"| {name} | {row['inputs']} | {row['batchnorm_nodes']} | {row['bn_fold_max_rel_diff']:.2e} | "
              f"{row['cle_pairs']} | {row['cle_sweeps']} | {row['cle_seconds']} | {row['cle_max_rel_diff']:.2e} |",
              flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
