"""Passes that bring a model not written in float32 to the float32 form the quantizers take:
``upcast-float32`` (float16/bfloat16 compute, :mod:`qcompiler.upcast`), ``ingest-qdq`` (a model that
already carries Q/DQ nodes, :mod:`qcompiler.qdq_input`) and ``keep-qdq-scales`` (the ingested specs
instead of the calibrated ones)."""

from __future__ import annotations

from qcompiler.ir import Model
from qcompiler.pass_manager import Pass, PassResult, register_pass
from qcompiler.qdq_input import apply_given_specs, recover_float
from qcompiler.upcast import computes_in_low_precision, upcast_to_float32

from .shape_inference import InferShapes


@register_pass("upcast-float32")
class UpcastFloat32(Pass):
    """float16/bfloat16 compute becomes float32; the model's inputs and outputs keep their types (Casts)."""

    def call(self, model: Model) -> PassResult:
        if not computes_in_low_precision(model):
            return PassResult(model, False)
        InferShapes().call(model)  # the types of Cast inputs, so float32 -> float32 Casts become Identities
        done = upcast_to_float32(model)
        if done is not None:
            model.plan.reports["upcast"] = done
        return PassResult(model, done is not None)


@register_pass("ingest-qdq")
class IngestQDQ(Pass):
    """Take a QDQ model's Q/DQ nodes out: float weights, bypassed activation pairs, their specs kept in the plan."""

    def call(self, model: Model) -> PassResult:
        done = recover_float(model)
        if done["weights"] or done["activations"]:
            model.plan.reports["ingest_qdq"] = done
        return PassResult(model, bool(done["weights"] or done["activations"]))


@register_pass("keep-qdq-scales")
class KeepQDQScales(Pass):
    """Every quantized value with a spec from the input model (``ingest-qdq``) gets that spec back."""

    needs = ("plan", "ranges")

    def call(self, model: Model) -> PassResult:
        done = apply_given_specs(model)
        model.plan.reports["keep_qdq_scales"] = done
        return PassResult(model, done["kept"] > 0)
