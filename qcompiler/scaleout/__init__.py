"""Scale-out: the independent pieces of a compile, run on workers (Ray) or in this process.

The expensive steps of quantizing are embarrassingly parallel: calibration is a fold of per-feed
observer updates whose merge is exact (:mod:`qcompiler.calibration.observers`), the sensitivity
analysis evaluates one model configuration per task, and a fleet of compiles is one compile per
task. An :class:`Executor` maps a function over such items:

* :class:`LocalExecutor`: this process, one item after the other (what runs without ``--ray``);
* :class:`ThreadExecutor`: threads of this process, for items whose work releases the GIL (onnxruntime
  sessions): the local path of the sensitivity analysis;
* :class:`~qcompiler.scaleout.ray_executor.RayExecutor`: tasks of a Ray cluster (``--ray auto|ADDRESS``,
  ``pip install 'onnx-qcompiler[ray]'``); imported only when chosen, so nothing imports ray otherwise.

``executor.share(value)`` ships what every task needs (the model, the feeds) once: the Ray executor
puts it in the object store and each worker process deserializes it once and keeps it
(:func:`worker_cache`); ``executor.map(function, items, shared)`` returns
``[function(shared, item) for item in items]`` in the order of ``items``, whatever order the
workers finish in, so the results are those of the sequential loop.

Every onnxruntime session whose numbers the compiler decides on (calibration, sensitivity evaluations)
runs on :data:`SESSION_THREADS` intra-op thread: onnxruntime's float results depend on its thread count
(MLAS splits some convolutions differently: ocr_rec_ppocrv4's ``p2o.Conv.33`` differs in the last bits
between 1 and 2 threads on inputs wider than about 55 columns), so one fixed count makes the compiled
model and every reported number the same on any machine, for any number of workers. The parallelism
comes from running independent items at once instead (one worker per CPU).

The code that can farm out work asks :func:`current` for the executor in scope (set by
``qcompiler.compile(..., executor=...)`` and ``qcompiler.analyze(..., executor=...)`` with
:func:`using`); with none (the default) it runs exactly as it always has: same code path, same speed.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
from concurrent.futures import ThreadPoolExecutor
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Protocol

from ..errors import UserError


SESSION_THREADS = 1
"""onnxruntime intra-op threads of the sessions that calibrate and evaluate (see the module docstring)."""


def session_options(threads: int = SESSION_THREADS, optimize: bool = True) -> Any:
    """The ``onnxruntime.SessionOptions`` of a session the compiler reads numbers from: ``threads`` intra-op
    threads (default :data:`SESSION_THREADS`; 0: onnxruntime's default), one inter-op thread, errors-only
    logging (an intermediate graph may leave, e.g., an absorbed Clip's bounds unused: no warning for that),
    graph optimizations all on, or all off when ``optimize`` is False (Q/DQ pairs run as written)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    if not optimize:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return options


class Executor(Protocol):
    """What the scale-out code needs of an execution backend (see the module docstring)."""

    workers: int
    """How many tasks run at once."""

    def share(self, value: Any) -> Any:
        """A handle on ``value`` that :meth:`map` passes to every task (shipped once per worker)."""

    def map(self, function: Callable[[Any, Any], Any], items: Sequence[Any], shared: Any = None) -> list[Any]:
        """``[function(shared value, item) for item in items]``, in the order of ``items``."""


class LocalExecutor:
    """Runs every item in this process, in order."""

    workers = 1

    def share(self, value: Any) -> Any:
        return value

    def map(self, function: Callable[[Any, Any], Any], items: Sequence[Any], shared: Any = None) -> list[Any]:
        return [function(shared, item) for item in items]

    def __repr__(self) -> str:
        return "LocalExecutor()"


class ThreadExecutor:
    """Runs the items on ``workers`` threads of this process; results in the order of ``items``.

    Worth it where an item's time is spent outside the GIL (onnxruntime's ``run``); shared values are
    passed as they are (nothing is copied)."""

    def __init__(self, workers: int):
        self.workers = workers

    def share(self, value: Any) -> Any:
        return value

    def map(self, function: Callable[[Any, Any], Any], items: Sequence[Any], shared: Any = None) -> list[Any]:
        if self.workers < 2 or len(items) < 2:
            return [function(shared, item) for item in items]
        with ThreadPoolExecutor(min(self.workers, len(items))) as pool:
            return list(pool.map(lambda item: function(shared, item), items))

    def __repr__(self) -> str:
        return f"ThreadExecutor(workers={self.workers})"


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity mask, which containers and ``taskset`` narrow)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def executor_for(spec: Any, workers: int | None = None) -> Executor | None:
    """The executor ``spec`` names: None or ``"local"`` -> None (run as always); an executor -> itself;
    ``"auto"`` (a running cluster, else a new local one) or a Ray address (``"ray://host:10001"``,
    ``"host:6379"``) -> a :class:`~qcompiler.scaleout.ray_executor.RayExecutor` with ``workers``
    concurrent tasks (default: the cluster's CPUs)."""
    if spec is None or spec == "local":
        if workers is not None:
            raise UserError("--workers needs --ray (the local path runs in this process)")
        return None
    if not isinstance(spec, str):
        return spec
    from .ray_executor import RayExecutor

    return RayExecutor(address=spec, workers=workers)


_CURRENT: contextvars.ContextVar[Executor | None] = contextvars.ContextVar("qcompiler_executor", default=None)


@contextlib.contextmanager
def using(executor: Executor | None) -> Iterator[Executor | None]:
    """Within the block, :func:`current` returns ``executor`` (None: the local path)."""
    token = _CURRENT.set(executor)
    try:
        yield executor
    finally:
        _CURRENT.reset(token)


def current() -> Executor | None:
    """The executor in scope that work may be farmed out to, or None (run here, as always)."""
    executor = _CURRENT.get()
    return None if isinstance(executor, LocalExecutor) else executor


_WORKER_CACHE: dict[str, Any] = {}
_WORKER_CACHE_SIZE = 2  # a worker keeps the shared values of the two most recent maps (model + feeds each)


def worker_cache(key: str, load: Callable[[], Any]) -> Any:
    """The value of ``key`` in this worker process, ``load()``ed the first time (then kept, least
    recently used evicted past :data:`_WORKER_CACHE_SIZE`): shared values are deserialized once per worker."""
    if key in _WORKER_CACHE:
        _WORKER_CACHE[key] = _WORKER_CACHE.pop(key)  # most recently used last
        return _WORKER_CACHE[key]
    value = load()
    _WORKER_CACHE[key] = value
    while len(_WORKER_CACHE) > _WORKER_CACHE_SIZE:
        del _WORKER_CACHE[next(iter(_WORKER_CACHE))]
    return value
