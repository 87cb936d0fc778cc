"""``weight-gptq``: GPTQ (Frantar et al. 2023) for every weight-only layer with calibration samples: the
rounding error of each input channel compensated on the channels not yet quantized, with the inverse
Hessian of the layer's inputs. The algorithm and its equations: ``qcompiler.weight_only.gptq``; samples of
the inputs: ``qcompiler.weight_only.activations`` (each group's taken as soon as it is complete and dropped
after its Hessian: a model past memory holds one stage's samples at a time). ``clip`` (default): each
block's grid clipped to the range its Hessian block prefers. Layers without samples keep round to nearest.
"""

from __future__ import annotations

from typing import Any

from qcompiler.ir import Model
from qcompiler.pass_manager import Pass, PassResult, register_pass
from qcompiler.weight_only.activations import iter_samples
from qcompiler.weight_only.gptq import BATCH, DAMP, gptq, hessian
from qcompiler.weight_only.layers import calibrated_groups, scheme_of

from .weight_awq import require_data


@register_pass("weight-gptq")
class WeightGPTQ(Pass):
    """GPTQ weights for every weight-only layer with calibration samples (after ``weight-rtn``)."""

    data: Any = None
    max_tokens: int = 2048
    act_order: bool = True
    damp: float = DAMP
    batch: int = BATCH
    clip: bool = True
    needs = ("plan",)

    def requires(self, model: Model) -> None:
        require_data("weight-gptq", self.data, self.max_tokens)

    def call(self, model: Model) -> PassResult:
        model.plan.reports.setdefault("weight_only", {})["method"] = "gptq"
        groups = calibrated_groups(model)
        changed = False
        for x, sample in iter_samples(model, list(groups), self.data, self.max_tokens) if groups else ():
            if not sample.size:
                continue
            h = hessian(sample)
            del sample
            group = groups[x]
            for layer in group:
                layer.store(*gptq(layer.matrix(), h, scheme_of(layer.spec()), act_order=self.act_order,
                                  damp=self.damp, batch=self.batch, clip=self.clip))
                changed = True
        return PassResult(model, changed)
