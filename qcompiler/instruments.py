"""Instruments: hooks the PassManager calls around every pass.

Concerns that cut across passes live here rather than inside passes (TVM's PassInstrument):

* :class:`Timing` — wall time and peak memory per pass (``--time-passes``).
* :class:`Progress` — one line per pass on stderr and, on a terminal, a progress bar with the time left.
* :class:`DumpIR` — the canonical printed IR after every pass (``--dump-ir DIR``).
* :class:`CheckModifiedFlag` — a pass that says ``modified=False`` must not have changed the IR,
  and one that says True must have.
* :class:`CheckIdempotent` — running an idempotent pass a second time changes nothing.
* :class:`CheckNumerics` — passes that claim to preserve semantics keep onnxruntime's outputs
  within a relative tolerance.
"""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

import numpy as np
from tqdm import tqdm

from . import progress
from .errors import InternalError, UserError
from .ir import Model, format_model
from .ir.testing import run_onnxruntime
from .pass_manager import Instrument, Pass, PassRecord


def fingerprint(model: Model) -> str:
    """A hash of the canonical printed IR (constants included through their content digests)."""
    return hashlib.sha256(format_model(model).encode()).hexdigest()


class Timing(Instrument):
    """Collects the wall time of every pass, and with ``memory`` its peak resident memory; :meth:`table`
    renders them, slowest first. The peak is the process's (Linux: ``VmHWM``, reset before each pass by
    writing ``5`` to ``/proc/self/clear_refs``, so a tool that reads the whole command's peak afterwards sees
    only the last pass's; elsewhere not measured): what a pass holds on top of the model shows."""

    def __init__(self, memory: bool = False) -> None:
        self.memory = memory
        self.records: list[PassRecord] = []
        self.peak_mb: list[float | None] = []

    def before(self, pass_: Pass, model: Model) -> None:
        if self.memory:
            reset_peak_memory()

    def after(self, pass_: Pass, model: Model, record: PassRecord) -> None:
        self.records.append(record)
        self.peak_mb.append(peak_memory_mb() if self.memory else None)

    def table(self) -> str:
        total = sum(r.seconds for r in self.records) or 1e-12
        lines = [f"{'pass':<32} {'seconds':>9} {'share':>6}{' peak MB' if self.memory else ''}  modified"]
        for r, peak in sorted(zip(self.records, self.peak_mb, strict=True), key=lambda item: -item[0].seconds):
            shown = "" if not self.memory else f" {peak:7.0f}" if peak is not None else " " * 8
            lines.append(f"{r.name:<32} {r.seconds:9.3f} {100 * r.seconds / total:5.1f}%{shown}  {r.modified}")
        lines.append(f"{'total':<32} {total:9.3f}")
        return "\n".join(lines)


def reset_peak_memory() -> None:
    """Reset this process's peak resident memory (Linux; nothing elsewhere or where it is not allowed)."""
    try:
        with open("/proc/self/clear_refs", "w") as refs:
            refs.write("5")
    except OSError:
        pass


def peak_memory_mb() -> float | None:
    """This process's peak resident memory since start or :func:`reset_peak_memory` (Linux ``VmHWM``), MB."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


class Progress(Instrument):
    """Reports passes as they run, on a stream (stderr by default).

    On a terminal: a tqdm bar (:mod:`qcompiler.progress`) naming the running pass, with the passes done,
    the time spent and an estimate of the time left, and above it one line per finished pass,
    ``[i/n] pass-name ... seconds, changed|no change, N nodes``; during each pass, the bars of long
    loops inside it (calibration feeds) are enabled and appear below. Elsewhere (a CI log, a test
    capturing stderr): the same lines, written as each pass starts and finishes, and no bar.
    """

    def __init__(self, total: int, stream: TextIO | None = None):
        self.total, self.count = total, 0
        self._stream = stream
        self._bar = None
        self._bars = None  # the bars(True) context held while a pass runs

    @property
    def stream(self) -> TextIO:
        return self._stream or sys.stderr

    def before(self, pass_: Pass, model: Model) -> None:
        self.count += 1
        label = f"[{self.count}/{self.total}] {pass_.display_name()}"
        if not progress.is_terminal(self.stream):
            print(f"{label} ...", end="", file=self.stream, flush=True)
            return
        if self._bar is None:
            self._bar = tqdm(total=self.total, initial=self.count - 1, desc=label, unit="pass", file=self.stream,
                             leave=False, dynamic_ncols=True)
        else:
            self._bar.set_description_str(label)
        self._bars = progress.bars(True)
        self._bars.__enter__()

    def after(self, pass_: Pass, model: Model, record: PassRecord) -> None:
        change = "changed" if record.modified else "no change"
        result = f"{record.seconds:.2f}s, {change}, {len(model.graph)} nodes"
        if self._bar is None:
            print(f" {result}", file=self.stream, flush=True)
            return
        if self._bars is not None:
            self._bars.__exit__(None, None, None)
            self._bars = None
        self._bar.clear()
        print(f"[{self.count}/{self.total}] {pass_.display_name()} ... {result}", file=self.stream, flush=True)
        self._bar.update(1)
        if self.count >= self.total:
            self.close()
        else:
            self._bar.refresh()

    def close(self) -> None:
        """Clear the bar and end the pass's bars context (done after the last pass; call it when a pass
        raised, before printing the error, so the message does not land on the bar's line)."""
        if self._bars is not None:
            self._bars.__exit__(None, None, None)
            self._bars = None
        if self._bar is not None:
            self._bar.close()
            self._bar = None


class DumpIR(Instrument):
    """Writes ``NN_<pass>.txt`` (canonical IR) after every pass into a directory.

    The directory must be new or empty (or hold only earlier dumps), so nothing else is overwritten.
    """

    def __init__(self, directory: str | Path, model: Model | None = None):
        self.directory = Path(directory)
        if self.directory.exists() and not self.directory.is_dir():
            raise UserError(f"--dump-ir {self.directory}: is a file, expected a directory (new, or holding only "
                            f"earlier IR dumps)")
        try:
            if self.directory.is_dir():
                foreign = [p for p in self.directory.iterdir() if not p.name.endswith(".txt")]
                if foreign:
                    raise UserError(f"--dump-ir {self.directory}: not an empty directory of IR dumps")
                for old in self.directory.glob("*.txt"):
                    old.unlink()
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UserError(f"--dump-ir {self.directory}: cannot create or clear it ({exc.strerror or exc})") from None
        self.count = 0
        if model is not None:
            self._write("00_input.txt", model)

    def after(self, pass_: Pass, model: Model, record: PassRecord) -> None:
        self.count += 1
        self._write(f"{self.count:02d}_{pass_.display_name()}.txt", model)

    def _write(self, name: str, model: Model) -> None:
        path = self.directory / name
        try:
            path.write_text(format_model(model) + "\n")
        except OSError as exc:
            raise UserError(f"--dump-ir: cannot write {path} ({exc.strerror or exc})") from None


class CheckModifiedFlag(Instrument):
    """Raises when a pass's ``modified`` flag disagrees with what it did to the IR."""

    def before(self, pass_: Pass, model: Model) -> None:
        self._before = fingerprint(model)

    def after(self, pass_: Pass, model: Model, record: PassRecord) -> None:
        changed = fingerprint(model) != self._before
        if changed != record.modified:
            raise InternalError(
                f"pass {record.name!r} reported modified={record.modified} but "
                f"{'changed' if changed else 'did not change'} the IR"
            )


class CheckIdempotent(Instrument):
    """Runs each idempotent pass a second time on a copy and requires that it changes nothing."""

    def after(self, pass_: Pass, model: Model, record: PassRecord) -> None:
        if not type(pass_).idempotent:
            return
        copy = model.clone()
        before = fingerprint(copy)
        again = pass_(copy)
        if again.modified or fingerprint(copy) != before:
            raise InternalError(f"pass {record.name!r} is not idempotent: a second run changed the IR")


class CheckNumerics(Instrument):
    """Compares onnxruntime outputs before and after each pass that declares ``preserves_semantics``.

    Args:
        feeds: the inputs, or a function that makes them from the model.
        rtol: allowed ``max|after - before| / max|before|`` per output.
    """

    def __init__(self, feeds: dict[str, np.ndarray] | Callable[[Model], dict[str, np.ndarray]],
                 rtol: float = 1e-4):
        self.feeds, self.rtol = feeds, rtol
        self.worst: dict[str, float] = {}

    def before(self, pass_: Pass, model: Model) -> None:
        if type(pass_).preserves_semantics:
            feeds = self.feeds(model) if callable(self.feeds) else self.feeds
            self._feeds = feeds
            self._expected = run_onnxruntime(model, feeds)

    def after(self, pass_: Pass, model: Model, record: PassRecord) -> None:
        if not type(pass_).preserves_semantics:
            return
        actual = run_onnxruntime(model, self._feeds)
        worst = max((relative_difference(a, e) for a, e in zip(actual, self._expected)), default=0.0)
        self.worst[record.name] = max(worst, self.worst.get(record.name, 0.0))
        if worst > self.rtol:
            raise InternalError(
                f"pass {record.name!r} claims to preserve semantics but changed outputs by {worst:.3g} "
                f"(relative, allowed {self.rtol:g})"
            )


def relative_difference(actual: np.ndarray, expected: np.ndarray) -> float:
    """``max|actual - expected| / max|expected|`` (absolute when expected is all zero)."""
    actual, expected = np.asarray(actual), np.asarray(expected)
    if actual.shape != expected.shape:
        return float("inf")
    if expected.size == 0:
        return 0.0
    if expected.dtype.kind not in "fc":
        return float(not np.array_equal(actual, expected))
    diff = np.abs(actual.astype(np.float64) - expected.astype(np.float64))
    diff = np.where(np.isnan(actual) & np.isnan(expected), 0.0, diff)
    scale = float(np.nanmax(np.abs(expected))) if np.isfinite(expected).any() else 0.0
    return float(np.nanmax(diff)) / (scale if scale > 0 else 1.0)
