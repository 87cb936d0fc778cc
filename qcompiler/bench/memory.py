"""Peak memory of work done in a separate process: the operating system's count, not an estimate.

:func:`run_child` runs ``function(*args)`` in a fresh Python interpreter and returns its wall time and
the child's peak resident set size (``VmHWM`` of ``/proc/self/status``, the high-water mark of the
child's own address space, read by the child when the call returns), next to its resident size right
before the call (interpreter and imports). The child imports only the target's module, so what it
measures is what that module and the call cost. The parent's memory is never counted (a forked
child's ``ru_maxrss`` would include it: the kernel carries the pre-exec high-water mark over).
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Run with ``python -c``: only the standard library and the target's module are imported.
_CHILD = r"""
import importlib, importlib.util, json, sys

def resident_mb(field):
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(field):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024

target, args, result = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]
location, _, name = target.rpartition(":")
if location.endswith(".py"):
    spec = importlib.util.spec_from_file_location("_measured", location)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
else:
    module = importlib.import_module(location)
start = resident_mb("VmRSS:")
value = getattr(module, name)(*args)
if not isinstance(value, (type(None), bool, int, float, str, list, dict)):
    value = None
with open(result, "w") as out:
    json.dump({"value": value, "start_mb": start, "peak_mb": resident_mb("VmHWM:")}, out)
"""


class ChildError(RuntimeError):
    """The child process failed; the message is the last line of its standard error."""


@dataclass(frozen=True)
class ChildRun:
    """What one child process did: wall seconds (interpreter start included), peak and start resident
    size in MiB, and the JSON value the function returned (None for other values)."""

    seconds: float
    peak_mb: float
    start_mb: float
    value: Any


def run_child(target: str, *args: Any, timeout: float | None = None) -> ChildRun:
    """Run ``target(*args)`` in a fresh interpreter (working directory: a scratch folder).

    ``target`` is ``"module:function"`` (imported) or ``"path/to/file.py:function"`` (loaded from the
    file, without importing its package); ``args`` must be JSON values. Raises :class:`ChildError`.
    """
    with tempfile.TemporaryDirectory() as scratch:
        result = Path(scratch) / "result.json"
        start = time.perf_counter()
        done = subprocess.run([sys.executable, "-c", _CHILD, target, json.dumps(list(args)), str(result)],
                              capture_output=True, text=True, cwd=scratch, timeout=timeout)
        seconds = time.perf_counter() - start
        if done.returncode != 0 or not result.exists():
            lines = done.stderr.strip().splitlines()
            raise ChildError(lines[-1] if lines else f"{target}: exit status {done.returncode}")
        report = json.loads(result.read_text())
    return ChildRun(seconds, report["peak_mb"], report["start_mb"], report["value"])
