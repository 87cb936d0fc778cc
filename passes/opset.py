"""Opset upgrade: bring the default ONNX domain to at least a given version (13 by default).

Per-channel QuantizeLinear/DequantizeLinear (the ``axis`` attribute) exist from opset 13 on, so a
per-channel quantizer needs at least 13; int16 and int4 QDQ need 21. The conversion is done by
``onnx.version_converter`` on a copy without the weights (``qcompiler.ir.serde.weightless_proto``: they are
taken back by name, never copied); a model it cannot convert gets a clear error naming the reason. Models
older than IR version 7 are raised to 7, the IR version of opset 13.
"""

from __future__ import annotations

import onnx
import onnx.defs
import onnx.version_converter

from qcompiler.errors import PipelineConfigError, UnsupportedModelError
from qcompiler.ir import Model
from qcompiler.ir.serde import from_weightless, weightless_proto
from qcompiler.pass_manager import Pass, PassResult, register_pass


@register_pass("upgrade-opset")
class UpgradeOpset(Pass):
    """Upgrade the default-domain opset to at least ``target`` (never downgrades)."""

    target: int = 13
    preserves_semantics = True

    def __post_init__(self) -> None:
        if isinstance(self.target, bool) or not isinstance(self.target, int) or self.target < 1:
            raise PipelineConfigError(f"pass 'upgrade-opset' field 'target' must be an ONNX opset version (an "
                                      f"integer >= 1), got {self.target!r}")

    def call(self, model: Model) -> PassResult:
        if model.opset >= self.target:
            return PassResult(model, False)
        unknown = _ops_without_schema(model, self.target)
        if unknown:
            raise UnsupportedModelError(
                f"cannot upgrade the model from opset {model.opset} to {self.target}: "
                f"{', '.join(unknown)} {'is' if len(unknown) == 1 else 'are'} not defined in ONNX opset "
                f"{self.target} (experimental or removed operators the version converter cannot convert)"
            )
        names = {node.name: node.doc_string for node in model.graph if node.doc_string}
        try:
            converted = onnx.version_converter.convert_version(weightless_proto(model), self.target)
        except Exception as exc:
            first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise UnsupportedModelError(
                f"cannot upgrade the model from opset {model.opset} to {self.target}: {first_line}"
            ) from exc
        upgraded = from_weightless(converted, model)
        for node in upgraded.graph:
            node.doc_string = node.doc_string or names.get(node.name, "")
        model.update_from(upgraded)
        model.opset_imports[""] = self.target
        model.opset_imports.pop("ai.onnx", None)
        if model.ir_version < MIN_IR_VERSION:
            _drop_initializer_inputs(model)
            model.ir_version = MIN_IR_VERSION
        return PassResult(model, True)


def _ops_without_schema(model: Model, target: int) -> list[str]:
    """Default-domain ops of the main graph with no schema at ``target`` (e.g. ImageScaler, Crop).

    onnx.version_converter fails on them with an assertion message that does not name the op clearly.
    """
    missing: dict[str, None] = {}
    for node in model.graph:
        if node.domain in ("", "ai.onnx"):
            try:
                onnx.defs.get_schema(node.op_type, target, "")
            except onnx.defs.SchemaError:
                missing[f"{node.op_type} (node {node.name!r})" if node.name else node.op_type] = None
    return list(missing)


MIN_IR_VERSION = 7
"""The IR version opset 13 belongs to (onnx.helper.VERSION_TABLE)."""


def _drop_initializer_inputs(model: Model) -> None:
    """IR < 4 had to list every initializer among the graph inputs; from IR 4 on that makes them
    overridable inputs, which they never were meant to be, so they are dropped from the inputs."""
    model.graph.inputs = [v for v in model.graph.inputs if v.const is None]
