"""float16 and bfloat16 models: their compute upcast to float32, their interface kept.

qcompiler quantizes float32 layers. A model whose layers compute in float16 or bfloat16 is quantized
like a float32 one after an explicit upcast: every float16/bfloat16 initializer, Constant and
intermediate value becomes float32, type attributes that name them (``Cast.to``, ``EyeLike.dtype``,
the ``Random*`` ops' ``dtype``) name float32, and the model's inputs and outputs keep their type through
a ``Cast`` at the boundary, so callers feed and read what they did before (calibration feeds too: a
float16 input takes float16 feeds). A ``Cast`` that becomes float32 -> float32 turns into an
``Identity`` (canonicalization removes it).

Why an upcast rather than Q/DQ with float16 scales (opset 19): onnxruntime's CPU provider has no
float16 kernels for most layers on x86 and wraps each float16 node in Casts, and its QDQ fusions into
integer kernels (QLinearConv, QLinearMatMul, MatMulIntegerToFloat) are written for float32 scales;
``benchmarks/float16_models.py`` measures both forms (accuracy, latency, which kernels run) on the
realmodels. The float layers left unquantized compute in float32 afterwards, which is at least as
accurate as float16; float16 constants that stay float are twice their size.
"""

from __future__ import annotations

import numpy as np
from onnx import TensorProto

from .errors import UnsupportedModelError
from .ir import Model, Node, Value

LOW_PRECISION_FLOATS = (TensorProto.FLOAT16, TensorProto.BFLOAT16)
"""The float types upcast to float32."""

_TYPE_ATTRIBUTES = {"Cast": "to", "EyeLike": "dtype", "RandomNormal": "dtype", "RandomUniform": "dtype",
                    "RandomNormalLike": "dtype", "RandomUniformLike": "dtype", "Multinomial": "dtype",
                    "Bernoulli": "dtype"}
"""Ops whose attribute names an output element type."""


def _is_low(value: Value | None) -> bool:
    return value is not None and value.dtype in LOW_PRECISION_FLOATS


def _low_tensor(array: object) -> bool:
    return isinstance(array, np.ndarray) and array.dtype.name in ("float16", "bfloat16")


def computes_in_low_precision(model: Model) -> bool:
    """Whether a value of ``model`` is typed float16/bfloat16 or a node's attribute names that type."""
    return any(_is_low(v) for v in model.graph.values()) or any(_names_low_type(n) for n in model.graph)


def upcast_to_float32(model: Model) -> dict | None:
    """Upcast ``model``'s float16/bfloat16 compute to float32 in place (see the module docstring); its
    values' types should be known (shape inference) so that Casts between the two become Identities.

    Returns what was done (``{"types": [...], "values": n, "boundary_casts": n}``), or None when the
    model computes in no float16/bfloat16. Subgraphs (If/Loop bodies) are not rewritten: a model with
    both is refused.
    """
    if not computes_in_low_precision(model):
        return None
    graph = model.graph
    values = [v for v in graph.values() if _is_low(v)]
    nodes = [n for n in graph if _names_low_type(n)]
    if any(n.has_subgraphs() for n in graph):
        raise UnsupportedModelError("upcast: a float16/bfloat16 model with subgraphs (If/Loop/Scan) is not supported; "
                                    "convert it to float32 first")
    types = sorted({TensorProto.DataType.Name(v.dtype).lower() for v in values})
    inputs = {v for v in graph.inputs if _is_low(v)}
    casts = _cast_inputs(graph, inputs) + _cast_outputs(graph, inputs)
    interface = inputs | {v for v in graph.outputs if v.const is not None}  # keep their types
    for value in values:
        if value in interface:
            continue
        value.dtype = TensorProto.FLOAT
        if value.const is not None:
            value.const = value.const.astype(np.float32)
    for node in nodes:
        _retype(node)
    converted = set(values) - interface
    for node in graph:
        if node.op_type == "Cast" and node.inputs[0] in converted and node.attrs.get("to") == TensorProto.FLOAT:
            node.op_type, node.attrs = "Identity", {}
    return {"types": types, "values": len(values), "boundary_casts": casts}


def _names_low_type(node: Node) -> bool:
    """A node whose attributes name float16/bfloat16 (a type attribute, or a Constant's tensor)."""
    attribute = _TYPE_ATTRIBUTES.get(node.op_type)
    if attribute is not None and node.attrs.get(attribute) in LOW_PRECISION_FLOATS:
        return True
    return node.op_type in ("Constant", "ConstantOfShape") and _low_tensor(node.attrs.get("value"))


def _retype(node: Node) -> None:
    attribute = _TYPE_ATTRIBUTES.get(node.op_type)
    if attribute is not None and node.attrs.get(attribute) in LOW_PRECISION_FLOATS:
        node.attrs[attribute] = TensorProto.FLOAT
    if node.op_type in ("Constant", "ConstantOfShape") and _low_tensor(node.attrs.get("value")):
        node.attrs["value"] = node.attrs["value"].astype(np.float32)
    if node.op_type == "Cast" and node.inputs[0].dtype == TensorProto.FLOAT:
        node.op_type, node.attrs = "Identity", {}  # was float32 -> float16


def _cast_inputs(graph, inputs: set[Value]) -> int:
    """Each float16 graph input is read through a Cast to float32."""
    for value in inputs:
        upcast = Value(graph.unique_name(value.name + "_float32"), TensorProto.FLOAT, value.shape)
        value.replace_all_uses_with(upcast)
        graph.prepend(Node("Cast", [value], [upcast], attrs={"to": TensorProto.FLOAT},
                           name=graph.unique_name(value.name + "_upcast")))
    return len(inputs)


def _cast_outputs(graph, inputs: set[Value]) -> int:
    """Each float16 graph output is computed in float32 and cast back to its type."""
    replacements = {}
    for value in graph.outputs:
        if not _is_low(value) or value in inputs or value in replacements or value.const is not None:
            continue
        kept = Value(graph.unique_name(value.name + "_" + TensorProto.DataType.Name(value.dtype).lower()),
                     value.dtype, value.shape)
        graph.append(Node("Cast", [value], [kept], attrs={"to": value.dtype},
                          name=graph.unique_name(value.name + "_downcast")))
        replacements[value] = kept
    graph.replace_outputs(replacements)
    return len(replacements)
