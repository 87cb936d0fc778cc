"""Time of one ``qcompiler finetune`` step, this checkout against another, alternated in one run.

Each measurement is a child process that runs ``qcompiler.finetune`` on the first ``--lines`` data files
(every file once: the same inputs for both checkouts, whatever order each draws them in) and records when
each step ends (``on_step``); the first ``--warmup`` steps (numba compiling, allocator growth) are left out,
and the mean of the rest is the step time. Rounds alternate the checkouts, so the machine's slow and fast
phases fall on both; each round's ratio pairs the two measurements next to each other.

    python benchmarks/finetune_step_time.py START.onnx TEACHER.onnx DATA_DIR [--against OTHER_CHECKOUT]
        [--lines 33] [--warmup 3] [--rounds 2] [--threads 2] [--blocks 8] [--temperature 2]
        [--ctc OUTPUT] [--json FILE]

For the PP-OCRv4 recognizer: START is ``benchmarks/finetune_ocr_rec.py``'s AdaRound start, DATA_DIR its
rendered ``lines``, ``--ctc softmax_11.tmp_0``. Needs torch (``pip install 'onnx-qcompiler[finetune]'``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def measure(args: argparse.Namespace) -> dict:
    """In the child: fine-tune on the first ``--lines`` files, return the step times."""
    import qcompiler

    ends = []
    with tempfile.TemporaryDirectory() as work:
        subset = Path(work) / "data"
        subset.mkdir()
        for path in sorted(Path(args.data).glob("*.npz"))[:args.lines]:
            os.symlink(path, subset / path.name)
        qcompiler.finetune(args.start, Path(work) / "out.onnx", teacher=args.teacher, data=subset,
                           steps=args.lines, batch=1, blocks=args.blocks, temperature=args.temperature,
                           ctc=args.ctc, threads=args.threads, progress=False,
                           on_step=lambda step, loss: ends.append(time.perf_counter()))
    steps = [b - a for a, b in zip(ends[args.warmup:], ends[args.warmup + 1:])]
    return {"mean_ms": 1000 * statistics.fmean(steps), "median_ms": 1000 * statistics.median(steps),
            "steps": len(steps)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("start")
    parser.add_argument("teacher")
    parser.add_argument("data")
    parser.add_argument("--against", type=Path, help="another checkout of qcompiler to time in alternation")
    parser.add_argument("--lines", type=int, default=33, help="data files, one step each")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--blocks", type=int, default=8)
    parser.add_argument("--temperature", type=float, default=2.0)
    parser.add_argument("--ctc")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--measure", action="store_true", help=argparse.SUPPRESS)  # the child's mode
    args = parser.parse_args(argv)
    if args.measure:
        print(json.dumps(measure(args)))
        return 0
    if args.lines <= args.warmup + 1:
        parser.error(f"--lines {args.lines}: needs more than --warmup + 1 = {args.warmup + 1} files")
    checkouts = {"this": HERE.parent} | ({"against": args.against.resolve()} if args.against else {})
    child = [args.start, args.teacher, args.data, "--lines", str(args.lines), "--warmup", str(args.warmup),
             "--threads", str(args.threads), "--blocks", str(args.blocks), "--temperature", str(args.temperature)]
    child += ["--ctc", args.ctc] if args.ctc else []
    rounds = []
    for _ in range(args.rounds):
        times = {}
        for name, checkout in checkouts.items():
            environment = dict(os.environ, PYTHONPATH=str(checkout))
            done = subprocess.run([sys.executable, str(HERE / "finetune_step_time.py"), *child, "--measure"],
                                  env=environment, check=True, capture_output=True, text=True, cwd=checkout)
            times[name] = json.loads(done.stdout.strip().splitlines()[-1])
            print(f"{name:8} {checkout}: {times[name]['mean_ms']:.1f} ms a step (median "
                  f"{times[name]['median_ms']:.1f}, {times[name]['steps']} steps)", flush=True)
        if args.against:
            times["ratio"] = times["this"]["mean_ms"] / times["against"]["mean_ms"]
            print(f"this / against: {times['ratio']:.3f}", flush=True)
        rounds.append(times)
    result = {"checkouts": {k: str(v) for k, v in checkouts.items()}, "threads": args.threads, "lines": args.lines,
              "rounds": rounds}
    if args.against:
        result["median_ratio"] = statistics.median(r["ratio"] for r in rounds)
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
