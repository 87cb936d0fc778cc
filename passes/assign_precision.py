"""``assign-precision`` and ``assign-dynamic``: start the quantization plan (``qcompiler.assignment`` has
the rules), for static int8 and for dynamic int8 (activations quantized at run time).

Only float32 layers are quantized. float16/bfloat16 models reach these passes upcast to float32 in the
named pipelines (``upcast-float32``). A model whose layers still compute in another float type (float64,
or float16 in a pipeline without the upcast) is not left float in silence: with no float32 layer at all
it is a user error, and the layers skipped in a mixed model are listed in the report (``qcompiler
compile`` prints them).
"""

from __future__ import annotations

from dataclasses import field
from typing import Any

from onnx import TensorProto

from qcompiler.assignment import OTHER_FLOAT_TYPES, assign, assign_dynamic, dynamic_layers, excluded
from qcompiler.dynamic_screen import token_sqnr
from qcompiler.errors import UnsupportedModelError
from qcompiler.ir import Model, Node
from qcompiler.ops import lookup
from qcompiler.pass_manager import Pass, PassResult, register_pass
from qcompiler.targets import get_target

from .structure import require_regions


@register_pass("assign-precision")
class AssignPrecision(Pass):
    """Choose the nodes that run in int8 for a target and quantize their weights' specs."""

    target: str = "x86-avx2"
    exclude: list[str] = field(default_factory=list)
    per_channel: bool = True
    float_linear_outputs: bool = False
    region: str = ""  # float linear outputs only in the regions of this treatment (empty: everywhere)
    provides = ("plan",)
    invalidates = ("ranges", "qdq")  # a new plan: its activations wait for ranges again

    def requires(self, model: Model) -> None:
        require_regions(self, model, self.region)

    def call(self, model: Model) -> PassResult:
        target = get_target(self.target)
        count = assign(model, target, list(self.exclude), self.per_channel and target.per_channel,
                       self.float_linear_outputs, self.region)
        _report(model, count, list(self.exclude))
        return PassResult(model, count > 0)


@register_pass("assign-dynamic")
class AssignDynamic(Pass):
    """Dynamic int8: quantize the MatMul/Gemm layers' weights; their inputs are quantized at run time.

    With calibration ``data``, a layer whose typical token's output SQNR under dynamic int8 is below
    ``min_token_sqnr_db`` stays float (``qcompiler.dynamic_screen``: outlier tokens set the run's range);
    the measurements are kept in ``model.plan.reports["dynamic_screen"]``.
    """

    target: str = "x86-avx2"
    exclude: list[str] = field(default_factory=list)
    per_channel: bool = True
    data: Any = None
    min_token_sqnr_db: float = 25.0
    provides = ("plan", "ranges")  # dynamic activations need no range
    invalidates = ("qdq",)

    def call(self, model: Model) -> PassResult:
        target = get_target(self.target)
        per_channel = self.per_channel and target.per_channel
        layers = dynamic_layers(model, list(self.exclude))
        if self.data is not None and layers:
            measured = token_sqnr(model, layers, self.data, target, per_channel)
            kept_float = [n for n in layers if measured[n] < self.min_token_sqnr_db]
            model.plan.reports["dynamic_screen"] = {
                "min_token_sqnr_db": self.min_token_sqnr_db, "layers": len(layers),
                "float": [{"layer": n.name or n.outputs[0].name, "token_sqnr_db": round(measured[n], 1)}
                          for n in kept_float]}
            layers = [n for n in layers if n not in kept_float]
        count = assign_dynamic(model, target, layers, per_channel)
        _report(model, count, list(self.exclude))
        return PassResult(model, count > 0)


def _report(model: Model, count: int, exclude: list[str]) -> None:
    """Keep the assignment report; a model whose layers all compute in another float type is an error."""
    unmatched = [p for p in exclude if not any(excluded(node, [p]) for node in model.graph)]
    other_float = [n for n in model.graph if _other_float_layer(n) and not excluded(n, exclude)]
    if other_float and not count:
        first = other_float[0]
        kind = TensorProto.DataType.Name(first.inputs[0].dtype).lower()
        raise UnsupportedModelError(
            f"assign-precision: {len(other_float)} layer(s) compute in {kind} (first: {first.op_type} "
            f"{first.name!r}) and none in float32; qcompiler quantizes float32 layers: convert the model to "
            f"float32 first (float16/bfloat16: run upcast-float32 first, as the named pipelines do)")
    model.plan.reports["assign_precision"] = {
        "quantized_nodes": count, "unmatched_exclude": unmatched,
        "other_float_layers": [n.name or n.op_type for n in other_float]}


def _other_float_layer(node: Node) -> bool:
    x = node.inputs[0] if node.inputs else None
    return lookup(node).role == "layer" and x is not None and x.dtype in OTHER_FLOAT_TYPES
