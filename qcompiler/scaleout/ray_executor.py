"""The Ray backend of :mod:`qcompiler.scaleout`: each item is a Ray task; nothing here is a scheduler.

* **Shipping.** :meth:`RayExecutor.share` puts the value in Ray's object store once (``ray.put``); tasks
  get the reference inside a list, so Ray does not resolve it per task, and each worker process
  fetches and deserializes it on its first task and keeps it (:func:`qcompiler.scaleout.worker_cache`).
  Model bytes and numpy feeds are read from the node's shared memory, not copied per worker.
* **Concurrency.** At most ``workers`` tasks are in flight (``ray.wait`` as the window), each asking for
  ``cpus_per_task`` CPUs of the scheduler. The onnxruntime sessions inside a task run on one thread, as
  the local path's do (:mod:`qcompiler.scaleout.sensitivity`): one worker per CPU, identical results.
* **Faults.** A worker process that dies mid-task (killed, out of memory, its node lost) has its task
  resubmitted by Ray (``max_retries``); a task is a pure function of its inputs, so the retry returns
  what the first attempt would have, and nothing is written until the driver has every result
  (outputs of ``compile-many`` are written atomically by the task that made them). An exception raised
  by the task itself (a user error) is not retried; it is raised here with its own type.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from ..errors import UserError

def _ray() -> Any:
    try:
        import ray
    except ImportError:
        raise UserError("--ray needs Ray: pip install 'onnx-qcompiler[ray]'") from None
    return ray


def _run(function: Callable[[Any, Any], Any], box: list, item: Any) -> Any:
    """The task: ``function(shared value, item)``, the shared value resolved once per worker process."""
    from . import worker_cache

    shared = None
    if box:
        ray = _ray()
        shared = worker_cache(box[0].hex(), lambda: ray.get(box[0]))
    return function(shared, item)


class RayExecutor:
    """Runs items as Ray tasks on the cluster at ``address`` (see the module docstring).

    ``address``: ``"auto"`` or None (a running cluster, else a new local one: ``ray.init()``), or a
    cluster address. When this process is already connected (``ray.init`` was called), that
    connection is used. ``workers``: tasks in flight at once (default: the cluster's CPUs divided by
    ``cpus_per_task``). ``retries``: how often a task whose worker died is resubmitted.
    """

    def __init__(self, address: str | None = "auto", workers: int | None = None, *, cpus_per_task: int = 1,
                 retries: int = 3):
        ray = _ray()
        if workers is not None and workers < 1:
            raise UserError(f"workers must be at least 1, not {workers}")
        if not ray.is_initialized():
            try:
                ray.init(address=None if address in (None, "auto") else address, include_dashboard=False,
                         log_to_driver=False, configure_logging=False)
            except ConnectionError as exc:
                raise UserError(f"--ray {address}: cannot connect to a Ray cluster there ({exc})") from None
        cpus = int(ray.cluster_resources().get("CPU", 1))
        self.cpus_per_task = cpus_per_task
        self.workers = workers or max(1, cpus // cpus_per_task)
        self.retries = retries
        self._task = ray.remote(_run).options(
            num_cpus=cpus_per_task, max_retries=retries, retry_exceptions=False)

    def share(self, value: Any) -> list:
        return [_ray().put(value)]

    def map(self, function: Callable[[Any, Any], Any], items: Sequence[Any], shared: Any = None) -> list[Any]:
        ray = _ray()
        box = shared if shared is not None else []
        results: list[Any] = [None] * len(items)
        pending: dict[Any, int] = {}
        queue = iter(enumerate(items))
        try:
            for index, item in queue:
                pending[self._task.remote(function, box, item)] = index
                while len(pending) >= self.workers:
                    self._collect(ray, pending, results)
            while pending:
                self._collect(ray, pending, results)
        finally:
            for ref in pending:  # an error (or ^C) here: do not leave the remaining tasks running
                ray.cancel(ref, force=True)
        return results

    @staticmethod
    def _collect(ray: Any, pending: dict[Any, int], results: list[Any]) -> None:
        (ready,), _ = ray.wait(list(pending), num_returns=1)
        index = pending.pop(ready)
        results[index] = ray.get(ready)

    def __repr__(self) -> str:
        return f"RayExecutor(workers={self.workers}, cpus_per_task={self.cpus_per_task}, retries={self.retries})"

