"""``recognize-structure``: record the model's transformer and convolutional regions in the plan.

``qcompiler.structure`` finds them; the region-aware passes (``smoothquant``, ``assign-precision``,
``search-weight-ranges``, ``calibrate-search``, ``mixed-precision``) take a ``region`` field naming a
treatment and then act only on the nodes of the regions given it, so one pipeline gives each part of
a model its own treatment.
"""

from __future__ import annotations

from qcompiler.ir import Model
from qcompiler.pass_manager import Pass, PassResult, order_error, register_pass
from qcompiler.structure import recognize


@register_pass("recognize-structure")
class RecognizeStructure(Pass):
    """Find the transformer blocks (attention, LayerNorm) and the convolutional rest; the plan keeps them."""

    preserves_semantics = True
    provides = ("regions",)

    def call(self, model: Model) -> PassResult:
        plan = model.plan
        plan.regions = recognize(model.graph)
        plan.reports["structure"] = [{"treatment": r.treatment, "reason": r.reason, "nodes": len(r.nodes)}
                                     for r in plan.regions]
        return PassResult(model, False)


def require_regions(pass_: Pass, model: Model, region: str) -> None:
    """A pass restricted to ``region`` (a treatment; empty: the whole model) needs the plan's regions."""
    if region and not model.plan.regions:
        raise order_error(pass_, "regions", f"its region {region!r} is set and the model has no regions")
