"""Calibration: give every activation marked by ``assign-precision`` a QuantSpec from observed ranges.

The float model runs in onnxruntime over the calibration data, batch by batch, with the marked
tensors exposed as outputs; a streaming observer per tensor turns what it saw into a range
(``qcompiler.calibration``): min/max, a percentile of a histogram, the KL-optimal threshold
(entropy) or the MSE-optimal clipping range. The activation spec is asymmetric in the target's
activation type (uint8 on x86). Pass-through outputs reuse the spec of their input.
"""

from __future__ import annotations

from typing import Any

import onnx

from qcompiler.errors import UserError
from qcompiler.ir import Model, QuantSpec, to_proto
from qcompiler.pass_manager import Pass, PassResult, register_pass
from qcompiler.targets import TARGETS

METHODS = ("minmax", "percentile", "entropy", "mse")


def model_inputs(model: Model) -> list:
    """The graph inputs a feed must provide (initializer-backed inputs are optional)."""
    from qcompiler.calibration import InputSpec

    return [InputSpec(v.name, onnx.helper.tensor_dtype_to_np_dtype(v.dtype), v.shape)
            for v in model.graph.inputs if v.const is None and v.dtype is not None]


@register_pass("calibrate")
class Calibrate(Pass):
    """Set activation QuantSpecs from ranges observed on calibration data."""

    data: Any = None
    method: str = "minmax"
    percentile: float = 99.999
    target: str = "x86-avx2"

    def requires(self, model: Model) -> None:
        if self.data is None:
            raise UserError("calibrate: no calibration data given (--calib DIR or a '@calibration' resource)")
        if self.method not in METHODS:
            raise UserError(f"calibrate: unknown method {self.method!r}; choose one of {', '.join(METHODS)}")

    def call(self, model: Model) -> PassResult:
        target = model.meta.get("target") or TARGETS[self.target]
        graph = model.graph
        marked = [v for v in graph.values() if v.meta.get("calibrate")]
        if not marked:
            return PassResult(model, False)
        from qcompiler.calibration import collect, make_observer_factory, open_calibration

        data = open_calibration(self.data, model_inputs(model))
        observers = collect(to_proto(model), [v.name for v in marked], data,
                            make_observer_factory(self.method, percentile=self.percentile))
        for value in marked:
            lo, hi = observers[value.name].compute_range()
            value.quant = QuantSpec.from_range(lo, hi, target.activation_dtype, symmetric=False)
            del value.meta["calibrate"]
        for value in graph.values():
            source = value.meta.pop("share_quant", None)
            if source is not None:
                value.quant = source.quant
        return PassResult(model, True)

