"""Sweep the mixed-precision threshold on real models: size, int8 share, predicted and measured error.

For every model and threshold, ``qcompiler.compile(..., sensitivity_threshold=T, objective="size")``
(``size``: the latency guard would otherwise turn a model back to float where int8 is not faster on
this machine, which is a separate decision from the accuracy budget), then:

* size of the written file, int8 layers, share of MACs in int8 (``qcompiler.summary``);
* the error predicted by the pass (simulated, on its ``samples`` calibration feeds) and the error
  measured on every calibration feed with onnxruntime's real int8 kernels (default optimizations);
* ``identical``: every output of every calibration feed bit-identical to the FP32 model's.

Checks (exit status 1 when one fails): sizes never grow as the threshold grows, and threshold 0 is
bit-identical. Usage::

    python benchmarks/threshold_sweep.py [--models digits_cnn,crepe_tiny,ocr_rec_ppocrv4]
        [--thresholds 0,0.001,0.005,0.02,0.1] [--root /root/realmodels] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import qcompiler
from qcompiler.calibration import open_calibration
from qcompiler.calibration import model_inputs
from qcompiler.sensitivity import error_measures, run_session
from qcompiler.summary import summarize


def sweep_model(root: Path, name: str, thresholds: list[float], workdir: Path) -> list[dict]:
    source = root / f"{name}.onnx"
    calib = root / "data" / "calib_npz" / name
    original = qcompiler.load(source)
    feeds = list(open_calibration(str(calib), model_inputs(original)))
    reference = run_session(source.read_bytes(), feeds, simulated=False)
    rows = []
    for threshold in thresholds:
        output = workdir / f"{name}.t{threshold}.onnx"
        start = time.perf_counter()
        model = qcompiler.compile(source, output, calib=str(calib), sensitivity_threshold=threshold, objective="size")
        seconds = time.perf_counter() - start
        outputs = run_session(output.read_bytes(), feeds, simulated=False)
        totals = summarize(model, feeds[0], original)["totals"]
        mixed = model.plan.reports["mixed_precision"]
        rows.append({"model": name, "threshold": threshold, "size": output.stat().st_size,
                     "int8_layers": totals["int8_layers"], "layers": totals["layers"],
                     "int8_macs_share": totals["int8_macs_share"], "predicted_nsr": mixed["predicted"]["nsr"],
                     "measured": error_measures(reference, outputs),
                     "identical": all(np.array_equal(a, b) for r, o in zip(reference, outputs) for a, b in zip(r, o)),
                     "evaluations": mixed["evaluations"], "seconds": seconds})
        print(_line(rows[-1]), flush=True)
    return rows


def _line(r: dict) -> str:
    return (f"{r['model']:<18} {r['threshold']:>7g} {r['size']:>12,} {r['int8_layers']:>4}/{r['layers']:<4} "
            f"{100 * r['int8_macs_share']:>6.1f} {r['predicted_nsr']:>10.2e} {r['measured']['nsr']:>10.2e} "
            f"{r['measured']['cosine']:>8.5f} {str(r['identical']):>9} {r['evaluations']:>5} {r['seconds']:>7.1f}")


HEADER = (f"{'model':<18} {'T':>7} {'size':>12} {'int8':>9} {'MACs%':>6} {'pred nsr':>10} {'meas nsr':>10} "
          f"{'cosine':>8} {'identical':>9} {'evals':>5} {'seconds':>7}")


def check(rows: list[dict]) -> list[str]:
    """Failures: a size that grows with the threshold, a threshold 0 that is not bit-identical."""
    problems = []
    for model in dict.fromkeys(r["model"] for r in rows):
        mine = sorted((r for r in rows if r["model"] == model), key=lambda r: r["threshold"])
        for a, b in zip(mine, mine[1:]):
            if b["size"] > a["size"]:
                problems.append(f"{model}: size grows from T={a['threshold']} to T={b['threshold']}")
        problems += [f"{model}: T=0 is not bit-identical" for r in mine if r["threshold"] == 0 and not r["identical"]]
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="digits_cnn,crepe_tiny,ocr_rec_ppocrv4")
    parser.add_argument("--thresholds", default="0,0.001,0.005,0.02,0.1")
    parser.add_argument("--root", default="/root/realmodels")
    parser.add_argument("--json", default=str(Path(__file__).parent / "results" / "threshold_sweep.json"))
    args = parser.parse_args()
    thresholds = [float(t) for t in args.thresholds.split(",")]
    print(HEADER)
    rows = []
    with tempfile.TemporaryDirectory() as workdir:
        for name in args.models.split(","):
            rows += sweep_model(Path(args.root), name, thresholds, Path(workdir))
    problems = check(rows)
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    Path(args.json).write_text(json.dumps({"rows": rows, "problems": problems}, indent=2) + "\n")
    for problem in problems:
        print(f"FAIL: {problem}")
    print("monotone sizes, threshold 0 bit-identical" if not problems else f"{len(problems)} check(s) failed")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
