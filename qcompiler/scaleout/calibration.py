"""Calibration sharded across workers: each worker streams its share of the feeds, the driver merges.

The calibration data is cut into ``executor.workers`` contiguous shares: a directory's ``.npz`` files
(workers read the files themselves, from a file system they share with the driver: the feeds are
never shipped) or a list of feed dicts (each share shipped once, with its task). Every worker runs
:func:`qcompiler.calibration.collect` on its share, the model shipped once per worker
(:meth:`Executor.share`), and returns its observers; the driver folds them together with
``Observer.merge`` in share order. The merge is exact (min/max are min/max; the histograms count every
value in the same bin whatever the batching, :mod:`qcompiler.calibration.observers`), so every range,
and the compiled model, is identical to one process's. Initializers are observed by the first share only
(``collect`` observes them once per call). Sources that cannot be cut without reading them (a function,
a ``CalibrationDataReader``, a one-shot iterator) are collected on the driver, as without workers.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnx

from ..calibration import collect, make_observer_factory
from ..calibration.data import InputSpec, npz_files, open_calibration, open_files
from ..calibration.observers import Observer
from . import Executor


@dataclass
class _Job:
    """What every share's task needs (shipped once per worker)."""

    model: bytes
    names: list[str]
    inputs: list[InputSpec]
    method: str
    percentile: float


def shares(source: Any, count: int) -> list[Any] | None:
    """``source`` cut into at most ``count`` contiguous non-empty shares (lists of files or of feeds), or
    None when it cannot be cut without reading it."""
    if isinstance(source, (str, Path)) and Path(source).is_dir():
        items: Sequence[Any] = npz_files(Path(source))
    elif isinstance(source, (list, tuple)) and all(isinstance(feed, dict) for feed in source):
        items = source
    else:
        return None
    count = max(1, min(count, len(items)))
    bounds = [len(items) * k // count for k in range(count + 1)]
    return [list(items[bounds[k]:bounds[k + 1]]) for k in range(count)]


def _observe_share(job: _Job, item: tuple[int, list[Any]]) -> dict[str, Observer]:
    """One worker's task: the observers of its share (initializers only in share 0)."""
    index, share = item
    proto = onnx.load_from_string(job.model)
    names = job.names
    if index:
        initializers = {t.name for t in proto.graph.initializer}
        names = [n for n in names if n not in initializers]
    if share and isinstance(share[0], Path):
        data = open_files(share, job.inputs, f"calibration share {index}")
    else:
        data = open_calibration(share, job.inputs)
    return collect(proto, names, data, make_observer_factory(job.method, percentile=job.percentile))


def collect_sharded(executor: Executor, proto: onnx.ModelProto, names: list[str], source: Any,
                    inputs: list[InputSpec], method: str, percentile: float) -> dict[str, Observer] | None:
    """The observers :func:`qcompiler.calibration.collect` would return for ``names`` on ``source``,
    collected share by share on ``executor``'s workers and merged (None: ``source`` cannot be cut)."""
    cut = shares(source, executor.workers)
    if cut is None:
        return None
    job = executor.share(_Job(proto.SerializeToString(), list(names), list(inputs), method, percentile))
    results = executor.map(_observe_share, list(enumerate(cut)), job)
    merged = copy.deepcopy(results[0])  # writable: Ray hands back numpy arrays read-only (zero-copy)
    for observers in results[1:]:
        for name, observer in observers.items():
            merged[name].merge(observer)
    return merged
