"""The canonical text form of the IR: one deterministic line per node.

Example::

    %y: float[N,64,56,56] = Conv(%x, %w, %b) {kernel_shape=[3,3], pads=[1,1,1,1]}  # conv1

Used by ``qcompiler show``, by IR dumps (``--dump-ir``), by the modified/idempotence instruments and
by golden tests. Large constants are summarized by shape, dtype and a content hash, so two dumps are
equal exactly when the graphs are.
"""

from __future__ import annotations

import hashlib

import numpy as np
import onnx

from ._core import Graph, Model, Node, Value
from .plan import QuantPlan


def dtype_name(dtype: int | None) -> str:
    if dtype is None:
        return "?"
    return onnx.helper.tensor_dtype_to_string(dtype).removeprefix("TensorProto.").lower()


def format_type(value: Value) -> str:
    if value.type_proto is not None and value.type_proto.WhichOneof("value") != "tensor_type":
        return value.type_proto.WhichOneof("value") or "?"
    if value.shape is None:
        return dtype_name(value.dtype)
    dims = ",".join("?" if d is None else str(d) for d in value.shape)
    return f"{dtype_name(value.dtype)}[{dims}]"


def _digest(array: np.ndarray) -> str:
    data = np.ascontiguousarray(array)
    raw = data.tobytes() if data.dtype != object else repr(data.tolist()).encode()
    return hashlib.sha1(raw).hexdigest()[:10]


def format_attr(value: object) -> str:
    if isinstance(value, np.ndarray):
        if value.size <= 8 and value.dtype != object:
            return f"tensor<{value.dtype}>{value.tolist()}"
        return f"tensor<{value.dtype}{list(value.shape)}#{_digest(value)}>"
    if isinstance(value, onnx.GraphProto):
        return f"graph<{value.name}: {len(value.node)} nodes #{hashlib.sha1(value.SerializeToString()).hexdigest()[:10]}>"
    if isinstance(value, onnx.AttributeProto):
        return f"<{onnx.AttributeProto.AttributeType.Name(value.type).lower()}>"
    if isinstance(value, list):
        return "[" + ",".join(format_attr(v) for v in value) + "]"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, str):
        return repr(value)
    return str(value)


def format_quant(value: Value) -> str:
    spec = value.quant
    if spec is None:
        return ""
    granularity = "per-tensor" if spec.axis is None else (
        f"per-channel(axis={spec.axis})" if spec.block_size is None else f"blocked(axis={spec.axis},{spec.block_size})")
    return f" quant={dtype_name(spec.dtype)}/{granularity}"


def format_node(node: Node, plan: QuantPlan | None = None) -> str:
    outs = ", ".join("_" if v is None else f"%{v.name}: {format_type(v)}" for v in node.outputs)
    ins = ", ".join("_" if v is None else f"%{v.name}" for v in node.inputs)
    op = node.op_type if not node.domain else f"{node.domain}::{node.op_type}"
    attrs = ", ".join(f"{k}={format_attr(v)}" for k, v in sorted(node.attrs.items()))
    line = f"{outs} = {op}({ins})"
    if attrs:
        line += f" {{{attrs}}}"
    notes = [node.name] if node.name else []
    if plan is not None:
        notes += [flag for flag, nodes in (("quantize", plan.layers), ("absorbed", plan.absorbed)) if node in nodes]
    notes += [f"%{v.name}{format_quant(v)}" for v in node.outputs if v is not None and v.quant is not None]
    if notes:
        line += "  # " + "; ".join(notes)
    return line


def format_graph(graph: Graph, plan: QuantPlan | None = None) -> str:
    lines = [f"graph {graph.name} ("]
    lines += [f"  %{v.name}: {format_type(v)}{format_quant(v)}" for v in graph.inputs]
    lines.append(")")
    for value in graph.initializers.values():
        lines.append(f"  init %{value.name}: {format_type(value)} #{_digest(value.const)}{format_quant(value)}")
    lines += [f"  {format_node(n, plan)}" for n in graph]
    lines.append("  return " + ", ".join(f"%{v.name}" for v in graph.outputs))
    return "\n".join(lines)


def format_model(model: Model) -> str:
    opsets = ", ".join(f"{d or 'ai.onnx'}:{v}" for d, v in sorted(model.opset_imports.items()))
    header = f"model ir_version={model.ir_version} opsets=[{opsets}]"
    if model.functions:
        header += f" functions={len(model.functions)}"
    return header + "\n" + format_graph(model.graph, model.plan)
