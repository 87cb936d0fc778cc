"""``weight-hqq``: refine every weight-only spec with Half-Quadratic Quantization (Badri & Shaji 2023);
calibration-free. The algorithm and its equations: ``qcompiler.weight_only.hqq``."""

from __future__ import annotations

from qcompiler.ir import Model
from qcompiler.pass_manager import Pass, PassResult, register_pass
from qcompiler.weight_only.hqq import hqq
from qcompiler.weight_only.layers import quantized_layers, scheme_of


@register_pass("weight-hqq")
class WeightHQQ(Pass):
    """HQQ scale and zero point for every weight the plan quantizes (after ``weight-rtn``)."""

    iterations: int = 20
    needs = ("plan",)

    def call(self, model: Model) -> PassResult:
        model.plan.reports.setdefault("weight_only", {})["method"] = "hqq"
        layers = quantized_layers(model)
        for layer in layers:
            spec = layer.spec()
            layer.store(*hqq(layer.matrix(), scheme_of(spec), iterations=self.iterations))
        return PassResult(model, bool(layers))
