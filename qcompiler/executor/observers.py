"""Interpreter subclasses: range observation and per-node comparison against a float run.

Both override :meth:`Interpreter.run_node` (torch.fx style) instead of taking callbacks.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .. import ir
from .agreement import energy_ratio_db
from .interpreter import Interpreter, Step


class RangeObserver(Interpreter):
    """Records ``(min, max)`` of every floating-point value a step produces, merged over runs.

    ``ranges`` maps value names to ``(min, max)``; NaNs are ignored, values of size 0 skipped.
    """

    def __init__(self, model, **kwargs):
        super().__init__(model, **kwargs)
        self.ranges: dict[str, tuple[float, float]] = {}

    def run_node(self, step: Step, inputs: list) -> tuple[np.ndarray, ...]:
        outputs = super().run_node(step, inputs)
        for value, array in zip(step.outputs, outputs, strict=False):
            if value is None or array is None or array.size == 0 or not np.issubdtype(array.dtype, np.floating):
                continue
            lo, hi = float(np.nanmin(array)), float(np.nanmax(array))
            old = self.ranges.get(value.name)
            self.ranges[value.name] = (lo, hi) if old is None else (min(old[0], lo), max(old[1], hi))
        return outputs


@dataclass
class NodeError:
    """Accumulated error of one node's output against the float run."""

    name: str
    op: str
    signal: float = 0.0
    noise: float = 0.0
    max_abs: float = 0.0

    @property
    def sqnr_db(self) -> float:
        """``10 log10(sum y^2 / sum (y_q - y)^2)``; infinite when the outputs agree exactly."""
        return energy_ratio_db(self.signal, self.noise)


class CompareInterpreter(Interpreter):
    """Runs a quantized model and compares every node's output with the float model's value of the
    same name, computed on the same feeds by a plain :class:`Interpreter` of ``reference``.

    Quantized outputs (of a QuantizeLinear or a fused step) are dequantized with their scale and zero
    point and compared with the float value the QuantizeLinear read (the target's output). Where the
    float model applies a Relu or Clip that quantization absorbed (its input, read by nothing else,
    now carries the clipped range), the activation's output is the value compared. ``errors`` maps
    names to :class:`NodeError`, accumulated over runs, in execution order.
    """

    def __init__(self, model, reference: ir.Model | str, **kwargs):
        super().__init__(model, **kwargs)
        self.reference = Interpreter(reference, profile="simulate", free_dead_values=False)
        here = {v.name for v in self.model.graph.values()}
        self._activated = {}  # float value -> the output of the absorbed Relu/Clip that alone read it
        for node in self.reference.model.graph:
            source = node.inputs[0] if node.inputs else None
            if node.op_type in ("Relu", "Clip") and source is not None and len(source.uses()) == 1 \
                    and node.outputs[0].name not in here:
                self._activated[source.name] = node.outputs[0].name
        self.errors: dict[str, NodeError] = {}
        self._expected: dict[str, np.ndarray] = {}

    def run(self, feeds):
        self.reference.run(feeds)
        self._expected = self.reference.values
        try:
            return super().run(feeds)
        finally:
            self._expected = {}

    def _float_view(self, step: Step, value: ir.Value, array: np.ndarray) -> tuple[str, np.ndarray] | None:
        quantize = next((n for n in reversed(step.nodes) if n.op_type == "QuantizeLinear"), None)
        if quantize is not None and value is quantize.outputs[0]:
            scale, zero = (self.constants.get(v) for v in quantize.inputs[1:3])
            if scale is None or scale.size != 1:
                return None
            source = quantize.inputs[0]
            name = source.producer().outputs[0].name if len(step.nodes) > 1 else source.name
            shift = 0 if zero is None else zero.astype(np.float64)
            return name, (array.astype(np.float64) - shift) * float(scale)
        if np.issubdtype(array.dtype, np.floating):
            return value.name, array.astype(np.float64)
        return None

    def run_node(self, step: Step, inputs: list) -> tuple[np.ndarray, ...]:
        outputs = super().run_node(step, inputs)
        for value, array in zip(step.outputs, outputs, strict=False):
            view = None if value is None or array is None else self._float_view(step, value, array)
            if view is None or view[0] not in self._expected:
                continue
            name, got = view
            want = np.asarray(self._expected[self._activated.get(name, name)], np.float64)
            if want.shape != got.shape:
                continue
            error = self.errors.setdefault(name, NodeError(name, step.op))
            error.signal += float(np.sum(want * want))
            error.noise += float(np.sum((got - want) ** 2))
            error.max_abs = max(error.max_abs, float(np.max(np.abs(got - want), initial=0.0)))
        return outputs
