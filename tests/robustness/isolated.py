"""Run check functions in a worker process, so that a hard crash of onnxruntime is one finding, not the end.

onnxruntime aborts the whole process on some graphs (a C++ assertion, ``std::terminate``), which no
``except`` catches. The long robustness runs (``benchmarks/graph_campaign.py``,
``benchmarks/interface_matrix.py``) therefore call their checks through :class:`IsolatedRunner`: one
long-lived worker process (imports and numba kernels stay warm between calls) that is started again
after it dies; the call that killed it returns :class:`Crashed` with the worker's exit code.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import sys
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass
class Crashed:
    """The worker died during the call (``exitcode``: negative for a signal, e.g. -6 for SIGABRT)."""

    exitcode: int | None

    def __str__(self) -> str:
        return f"the worker process died (exit code {self.exitcode}) during the check"


class IsolatedRunner:
    """``runner(function, *args)``: ``function(*args)`` in the worker process, or :class:`Crashed`.

    ``function`` must be a module-level function and its arguments picklable; workers are spawned, not
    forked, so onnxruntime's threads in this process (if any) cannot deadlock them. A worker imports
    ``function`` by module name, with the folder that name starts in added to its ``sys.path``: a test
    module pytest imported (``--import-mode=importlib``, ``tests.robustness...``) is not importable there
    otherwise when pytest runs as a console script.
    """

    def __init__(self) -> None:
        self._pool: ProcessPoolExecutor | None = None

    def __call__(self, function: Callable, *args: Any) -> Any:
        if self._pool is None:
            self._pool = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"))
        with _importable(function):  # a worker starts in submit, with this process's sys.path
            future = self._pool.submit(function, *args)
        processes = list(self._pool._processes.values())  # noqa: SLF001 - the worker, for its exit code
        try:
            return future.result()
        except BrokenProcessPool:
            for process in processes:
                process.join(5)
            code = next((p.exitcode for p in processes if p.exitcode), None)
            self.close()
            return Crashed(code)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None

    def __enter__(self) -> IsolatedRunner:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _root(function: Callable) -> str | None:
    """The folder ``function``'s module is importable from by its dotted name (None: not a file module)."""
    file = getattr(sys.modules.get(function.__module__), "__file__", None)
    return str(Path(file).resolve().parents[function.__module__.count(".")]) if file else None


@contextlib.contextmanager
def _importable(function: Callable) -> Iterator[None]:
    """Within the block, ``function``'s module can be imported by name from ``sys.path``: a worker started
    here copies this ``sys.path``."""
    root = _root(function)
    added = root is not None and root not in sys.path
    if added:
        sys.path.insert(0, root)
    try:
        yield
    finally:
        if added:
            sys.path.remove(root)
