"""Build the ``qcompiler analyze`` report of a real model and screenshot it in headless Chromium.

The model (``ocr_rec_ppocrv4`` by default) is first compiled the way a per-channel U8S8 deployment
without reduced range looks (``--target x86-vnni``, full-range int8 weights, ``objective="size"``),
then analyzed with the kernels of the target it is deployed on (``--deploy x86-avx2`` by default: the
report flags the layers whose AVX2 int16 pair saturation departs from the simulation). Writes, in
``--out`` (``benchmarks/results/`` by default): ``<model>.analysis.html``, ``<model>.analysis.json``,
``<model>.analysis.txt`` (the text report) and ``<model>.analysis.png`` (the screenshot)::

    python benchmarks/report_screenshot.py [--root /root/realmodels] [--model ocr_rec_ppocrv4]
        [--deploy x86-avx2] [--out benchmarks/results]

Chromium (Debian package ``chromium``) must be installed; the script says so and exits with status 2
if it is not.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import qcompiler
from qcompiler.analysis import analyze, format_text
from qcompiler.ir.serde import write_atomically
from qcompiler.report_html import render

HERE = Path(__file__).resolve().parent
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--hide-scrollbars"]


def find_chromium() -> str | None:
    return next((path for path in map(shutil.which, ("chromium", "chromium-browser")) if path), None)


def screenshot(chromium: str, page: Path, png: Path, size: str) -> None:
    """Headless Chromium's screenshot of ``page`` (a fresh profile directory, no network)."""
    with tempfile.TemporaryDirectory() as profile:
        done = subprocess.run([chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--screenshot={png}",
                               f"--window-size={size}", page.resolve().as_uri()],
                              capture_output=True, text=True, timeout=180)
    if done.returncode != 0 or not png.exists():
        raise SystemExit(f"chromium failed (status {done.returncode}): {done.stderr[-2000:]}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default="/root/realmodels")
    parser.add_argument("--model", default="ocr_rec_ppocrv4")
    parser.add_argument("--deploy", default="x86-avx2", help="the target whose kernels the report checks")
    parser.add_argument("--window-size", default="1400,2000")
    parser.add_argument("--out", default=str(HERE / "results"))
    args = parser.parse_args()
    chromium = find_chromium()
    if chromium is None:
        print("report_screenshot: chromium is not installed (Debian: apt-get install -y chromium); "
              "nothing was built", file=sys.stderr)
        return 2
    root, out = Path(args.root), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    source, calib = root / f"{args.model}.onnx", root / "data" / "calib_npz" / args.model
    with tempfile.TemporaryDirectory() as work:
        quantized = Path(work) / f"{args.model}.u8s8-full-range.onnx"
        print(f"compiling {source.name} to per-channel U8S8 with full-range weights (x86-vnni)", flush=True)
        qcompiler.compile(source, quantized, calib=str(calib), target="x86-vnni", objective="size")
        report = analyze(str(source), str(calib), quantized=str(quantized), target=args.deploy,
                         progress=lambda message: print(f"analyze: {message}", flush=True))
    report["kernels"]["model"] = f"{args.model} compiled for x86-vnni (per-channel U8S8, full-range weights)"
    text = format_text(report)
    print(text)
    stem = str(out / f"{args.model}.analysis")
    write_atomically(stem + ".txt", text + "\n")
    write_atomically(stem + ".json", json.dumps(report, indent=1) + "\n")
    page, png = Path(stem + ".html"), Path(stem + ".png")
    write_atomically(page, render(report))
    screenshot(chromium, page, png, args.window_size)
    print(f"wrote {page}, {png} ({png.stat().st_size:,} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
