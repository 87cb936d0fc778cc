"""Peak memory of a compile against the number of calibration samples.

Compiles MODEL with 16 and with 256 calibration samples (the .npz batches of CALIB_DIR cycled until
the count is reached, one sample per feed) for each calibration method, each compile in a fresh
child process whose own peak resident memory is measured (``qcompiler.bench.run_child``). Streaming
calibration should keep the ratio near 1.

    python benchmarks/calibration_memory.py MODEL CALIB_DIR [--methods minmax,percentile,entropy,mse]
"""

from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path


def compile_with(model: str, calib: str, samples: int, method: str) -> None:
    """Runs in the child: compile ``model`` calibrating on ``samples`` single-sample feeds."""
    import numpy as np

    import qcompiler

    files = sorted(Path(calib).glob("*.npz"))

    def feeds():
        count = 0
        for path in itertools.cycle(files):
            with np.load(path) as data:
                batch = {k: data[k] for k in data.files}
            for i in range(len(next(iter(batch.values())))):
                yield {k: v[i:i + 1] for k, v in batch.items()}
                count += 1
                if count == samples:
                    return

    qcompiler.compile(model, calib=feeds, calibration=method, objective="size")


def peak_mb(model: Path, calib: Path, samples: int, method: str) -> float:
    from qcompiler.bench import run_child

    target = f"{Path(__file__).resolve()}:compile_with"
    return run_child(target, str(model.resolve()), str(calib.resolve()), samples, method).peak_mb


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("calib", type=Path)
    parser.add_argument("--methods", default="minmax,percentile,entropy,mse")
    args = parser.parse_args()
    print(f"{'method':<11} {'16 samples MB':>14} {'256 samples MB':>15} {'ratio':>6}")
    for method in args.methods.split(","):
        small, large = peak_mb(args.model, args.calib, 16, method), peak_mb(args.model, args.calib, 256, method)
        print(f"{method:<11} {small:>14.1f} {large:>15.1f} {large / small:>6.3f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
