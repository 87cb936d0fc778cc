"""Shared fixtures.

``run_checked`` runs passes the way every pass test should: through a PassManager that verifies the
IR after each pass, with the instruments that hold a pass to its contract (an honest ``modified``
flag, idempotence, and unchanged onnxruntime outputs for passes that preserve semantics).

``run_deployed`` runs an int8 model as onnxruntime does on a CPU of a given target, whatever CPU the
suite runs on (an accuracy claim about a target must not depend on the CI machine's VNNI support).
"""

from __future__ import annotations

import os
from collections.abc import Callable

import numpy as np
import pytest

from qcompiler import ir
from qcompiler.instruments import CheckIdempotent, CheckModifiedFlag, CheckNumerics
from qcompiler.ir.testing import random_feeds
from qcompiler.pass_manager import Pass, PassManager, PipelineResult

RunChecked = Callable[..., PipelineResult]


@pytest.fixture(autouse=True, scope="session")
def _latency_cache_in_scratch(tmp_path_factory):
    """Compiles with objective "latency" keep their measurements in a scratch cache, not the user's."""
    previous = os.environ.get("XDG_CACHE_HOME")
    os.environ["XDG_CACHE_HOME"] = str(tmp_path_factory.mktemp("xdg-cache"))
    yield
    if previous is None:
        os.environ.pop("XDG_CACHE_HOME", None)
    else:
        os.environ["XDG_CACHE_HOME"] = previous


@pytest.fixture
def run_checked() -> RunChecked:
    """``run_checked(model, *passes, feeds=None, rtol=1e-4) -> PipelineResult``.

    The input model must verify; the passes run with ``verify="each"``, CheckModifiedFlag,
    CheckIdempotent and CheckNumerics (seeded random feeds unless ``feeds`` is given).
    """

    def run(model: ir.Model, *passes: Pass, feeds: dict[str, np.ndarray] | None = None,
            rtol: float = 1e-4) -> PipelineResult:
        ir.verify(model)
        inputs = feeds if feeds is not None else (lambda m: random_feeds(m, seed=0))
        instruments = [CheckModifiedFlag(), CheckIdempotent(), CheckNumerics(inputs, rtol=rtol)]
        return PassManager(list(passes), instruments=instruments, verify="each")(model)

    return run


def _run_deployed(model: ir.Model | str | os.PathLike, feeds: dict[str, np.ndarray],
                  target: str) -> dict[str, np.ndarray]:
    """Outputs by name of ``model`` as onnxruntime computes them on a CPU of ``target``: onnxruntime
    itself (all graph optimizations: its QDQ fusions and integer kernels) when ``target`` is this
    machine's (:func:`qcompiler.targets.detect_target`, which probes onnxruntime), else the executor
    under ``target``'s profile, equal to onnxruntime on such a CPU bit for bit
    (tests/executor/test_vs_onnxruntime.py, tests/kernels/test_avx2_profile.py)."""
    from qcompiler.executor import Interpreter
    from qcompiler.executor.agreement import run_onnxruntime
    from qcompiler.targets import detect_target

    model = model if isinstance(model, ir.Model) else ir.load(model)
    if target == detect_target().name:
        return run_onnxruntime(model, feeds)
    return Interpreter(model, profile=target).run(feeds)


@pytest.fixture(scope="session")
def run_deployed():
    """``run_deployed(model_or_path, feeds, target) -> {output name: array}``: onnxruntime on a CPU of
    ``target`` (natively when this is one, else the executor under ``target``'s numerics profile)."""
    return _run_deployed
