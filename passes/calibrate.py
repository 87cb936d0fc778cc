"""Calibration: give every activation the plan leaves pending a QuantSpec from observed ranges.

The float model runs in onnxruntime over the calibration data, batch by batch, with the pending
tensors exposed as outputs; a streaming observer per tensor turns what it saw into a range
(``qcompiler.calibration``): min/max, a percentile of a histogram, the KL-optimal threshold
(entropy) or the MSE-optimal clipping range. Each spec follows the scheme the plan recorded (asymmetric
in the target's activation type, uint8 on x86); pass-through outputs reuse the spec of their input. A
model whose weights exceed ``qcompiler.calibration.staged.STAGED_ABOVE`` runs stage by stage
(``qcompiler.calibration.staged``).
"""

from __future__ import annotations

from typing import Any

from qcompiler.calibration import METHODS, model_inputs
from qcompiler.calibration.observers import valid_percentile
from qcompiler.errors import UserError
from qcompiler.ir import Model, to_proto
from qcompiler.pass_manager import Pass, PassResult, register_pass


@register_pass("calibrate")
class Calibrate(Pass):
    """Set activation QuantSpecs from ranges observed on calibration data."""

    data: Any = None
    method: str = "minmax"
    percentile: float = 99.999
    needs = ("plan",)
    provides = ("ranges",)

    def requires(self, model: Model) -> None:
        if self.data is None:
            raise UserError("calibrate: no calibration data given (--calib DIR or a '@calibration' resource)")
        if self.method not in METHODS:
            raise UserError(f"calibrate: unknown method {self.method!r}; choose one of {', '.join(METHODS)}")
        if not valid_percentile(self.percentile):
            raise UserError(f"calibrate: percentile must be in (50, 100], not {self.percentile}")

    def call(self, model: Model) -> PassResult:
        plan = model.plan
        pending = list(plan.pending)
        if not pending:
            plan.set_ranges({})  # pass-through outputs still take their source's spec
            return PassResult(model, False)
        from qcompiler.calibration import make_observer_factory, open_calibration
        from qcompiler.calibration.staged import collect_model
        from qcompiler.scaleout import current

        names, inputs = [v.name for v in pending], model_inputs(model)
        observers = None
        if (executor := current()) is not None:  # workers calibrate shares of the data (merged exactly)
            from qcompiler.scaleout.calibration import collect_sharded

            observers = collect_sharded(executor, to_proto(model), names, self.data, inputs, self.method,
                                        self.percentile)
        if observers is None:
            observers = collect_model(model, names, open_calibration(self.data, inputs),
                                      make_observer_factory(self.method, percentile=self.percentile))
        plan.set_ranges({v: observers[v.name].compute_range() for v in pending},
                        {v: observers[v.name].extremes() for v in pending})
        return PassResult(model, True)
