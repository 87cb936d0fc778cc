"""``qcompiler run``: one model, one feed, on the executor; optionally compared with onnxruntime."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from .. import ir
from ..calibration.data import read_npz
from ..errors import UserError
from .agreement import compare_all, expose_quantized_outputs, format_outputs, run_onnxruntime
from .interpreter import Interpreter
from .profiles import get_profile


def load_feeds(path: str | Path) -> dict[str, np.ndarray]:
    """The arrays of an ``.npz`` file (keys = input names)."""
    if not Path(path).exists():
        raise UserError(f"{path}: no such inputs file")
    return read_npz(path, UserError)


def run_report(model_path: str | Path, inputs: str | Path, *, target: str = "auto", compare_ort: bool = False) -> str:
    """The text ``qcompiler run`` prints: profile, outputs summary and, with ``compare_ort``, the
    agreement with onnxruntime on this CPU per output (and per quantized tensor behind a float output)."""
    model = ir.load(model_path)
    feeds = load_feeds(inputs)
    profile = get_profile(target)
    if compare_ort:
        model = expose_quantized_outputs(model)
    start = time.perf_counter()
    interpreter = Interpreter(model, profile=profile)
    planned = time.perf_counter()
    outputs = interpreter.run(feeds)
    done = time.perf_counter()
    fused = sum(len(step.nodes) > 1 for step in interpreter.steps)
    lines = [f"profile {profile.name}: {profile.description}",
             f"{len(interpreter.steps)} steps ({fused} fused integer kernels), planned in "
             f"{1e3 * (planned - start):.1f} ms, ran in {1e3 * (done - planned):.1f} ms", "outputs:"]
    lines += ["  " + line for line in format_outputs(outputs).splitlines()]
    if compare_ort:
        from ..targets import detect_target

        here = detect_target().name
        theirs = run_onnxruntime(model, feeds)
        lines.append(f"agreement with onnxruntime on this CPU ({here}, graph optimizations on):")
        if profile.fuse and profile.name not in (here, "exact"):
            lines.append(f"  note: the profile models {profile.name}; onnxruntime here runs {here}'s kernels")
        lines += ["  " + a.line() for a in compare_all(outputs, theirs)]
    return "\n".join(lines)
