"""``assign-precision``: start the quantization plan (``qcompiler.assignment`` has the rules)."""

from __future__ import annotations

from dataclasses import field

from qcompiler.assignment import assign, excluded
from qcompiler.ir import Model
from qcompiler.pass_manager import Pass, PassResult, register_pass
from qcompiler.targets import get_target


@register_pass("assign-precision")
class AssignPrecision(Pass):
    """Choose the nodes that run in int8 for a target and quantize their weights' specs."""

    target: str = "x86-avx2"
    exclude: list[str] = field(default_factory=list)
    per_channel: bool = True
    float_linear_outputs: bool = False
    provides = ("plan",)

    def call(self, model: Model) -> PassResult:
        target = get_target(self.target)
        count = assign(model, target, list(self.exclude), self.per_channel and target.per_channel,
                       self.float_linear_outputs)
        unmatched = [p for p in self.exclude if not any(excluded(node, [p]) for node in model.graph)]
        model.plan.reports["assign_precision"] = {"quantized_nodes": count, "unmatched_exclude": unmatched}
        return PassResult(model, count > 0)
