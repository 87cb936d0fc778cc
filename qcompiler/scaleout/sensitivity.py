"""Sensitivity configurations measured on workers: one task per configuration.

Every configuration of the per-layer analysis, the mixed-precision path and the threshold sweeps is
independent of the others (``qcompiler.sensitivity``: build the model with some layers kept float,
lower it, run it in onnxruntime on the feeds, compare with the reference). :func:`prefetch` ships the
evaluator's state once per executor (the canonical float model as ONNX bytes, the calibrated specs and
the feeds: :class:`Replica`), each worker rebuilds the evaluator from it once
(:func:`qcompiler.scaleout.worker_cache`), and every task builds and runs one configuration and returns
``(quantized nodes, outputs, size)``. The driver computes the error measures (and the user's metric, which
need not be picklable) from the outputs, in this process: numpy's float64 dot products go through BLAS,
whose summation order follows its thread count, and Ray workers run BLAS on one thread (the 14th digit
of an nsr differed when workers computed it). The driver enters the results in the evaluator's cache in
the order the loop would have evaluated them, so every later ``evaluate`` (and the threshold search,
which reads the cache) sees exactly what the sequential run sees.

Every session, on a worker or here, runs on :data:`qcompiler.scaleout.SESSION_THREADS` onnxruntime
thread, so the numbers are identical whatever the workers' core counts. The same prefetch runs the local
path's configurations on threads of this process
(:class:`qcompiler.scaleout.ThreadExecutor`): the replica is then built once and shared by the threads.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

import onnx

from .. import ir
from ..sensitivity import Configuration, Evaluation, Evaluator, Outputs, error_measures
from . import Executor


SHIPPED = ("specs", "assign_options", "exclude", "feeds", "weights", "observed")
"""The :class:`Evaluator` fields a worker gets as they are (the float model goes as ONNX bytes: the IR's
linked node list is too deep for pickle)."""


@dataclass
class Replica:
    """What a worker needs to rebuild an :class:`Evaluator` (pickled once per executor): the float model
    as ONNX bytes and the fields in :data:`SHIPPED`."""

    base: bytes
    state: dict[str, Any]
    _evaluator: Evaluator | None = field(default=None, repr=False, compare=False)

    @classmethod
    def of(cls, evaluator: Evaluator) -> Replica:
        return cls(ir.to_proto(evaluator.base).SerializeToString(),
                   {name: getattr(evaluator, name) for name in SHIPPED})

    def evaluator(self) -> Evaluator:
        """The evaluator (built on the first call in this process, then kept and shared by its threads)."""
        with _BUILDING:
            if self._evaluator is None:
                base = ir.from_proto(onnx.load_from_string(self.base))
                self._evaluator = Evaluator(base, **self.state, reference=[], workers=1)
        return self._evaluator

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_evaluator": None}


_BUILDING = threading.Lock()


def measure(replica: Replica, configuration: Configuration
            ) -> tuple[tuple[frozenset[str], frozenset[str]], Outputs, int]:
    """One task: ``(cache key, outputs, written size)`` of a configuration (``Evaluator.key``)."""
    evaluator = replica.evaluator()
    model = evaluator.build(configuration)
    return evaluator.key(model, configuration), *evaluator.run(model)


def prefetch(executor: Executor, evaluator: Evaluator, configurations: list[Configuration]) -> None:
    """Measure the ``configurations`` ``evaluator`` does not know yet on ``executor``'s workers and enter
    them in its cache in the order given (see the module docstring)."""
    unknown = list(dict.fromkeys(c for c in configurations if c not in evaluator.keys))
    if not unknown:
        return
    if evaluator.remote is None or evaluator.remote[0] is not executor:
        replica = Replica.of(evaluator)
        evaluator.remote = (executor, executor.share(replica))
    results = executor.map(measure, unknown, evaluator.remote[1])
    for configuration, (key, outputs, size) in zip(unknown, results):
        evaluator.keys[configuration] = key
        if key not in evaluator.cache:
            errors = error_measures(evaluator.reference, outputs, evaluator.metric)
            evaluator.cache[key] = Evaluation(configuration.float_layers, key[0], errors, size,
                                              configuration.wide_layers)
            evaluator.evaluations += 1
