"""Shared fixtures.

``run_checked`` runs passes the way every pass test should: through a PassManager that verifies the
IR after each pass, with the instruments that hold a pass to its contract (an honest ``modified``
flag, idempotence, and unchanged onnxruntime outputs for passes that preserve semantics).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from qcompiler import ir
from qcompiler.instruments import CheckIdempotent, CheckModifiedFlag, CheckNumerics
from qcompiler.ir.testing import random_feeds
from qcompiler.pass_manager import Pass, PassManager, PipelineResult

RunChecked = Callable[..., PipelineResult]


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
