"""The per-layer summary of a compiled model: precision, parameters, share of compute, sensitivity.

``summarize`` reads a compiled (QDQ) model as written, so it also describes models compiled elsewhere:
a layer runs in int8 when its activation input (and its weight, for a weighted op) comes from a
``DequantizeLinear``, the pattern onnxruntime fuses into an integer kernel; in int16 when one of those
activations is stored in 16 bits (A16W8, chosen by ``mixed-precision``). The layers listed are the
compute ops (those with a MAC count in :mod:`qcompiler.ops`: Conv, ConvTranspose, MatMul, Gemm, and
MatMulInteger, which dynamic int8 writes) and the
other ops some target runs in int8 (Add, Concat, pooling) when they are int8 or were decided on by
``mixed-precision``.

Multiply-accumulates per layer come from the op's descriptor, on the shapes the model has on one feed
(dynamic dimensions are resolved by running it: onnxruntime, optimizations off, the layer tensors
exposed as outputs).

Sizes are serialized model sizes (the ``.onnx`` file without external data; counted without
serializing, so also for models past 2 GB). Everything is kept as
JSON-able records (``summarize`` returns a dict) and ``format_table`` prints it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from onnx import TensorProto

from .ir import Model, Node, Value, onnxruntime_model
from .ir.quant import SIXTEEN_BIT
from .ir.serde import serialized_bytes
from .ops import lookup
from .targets import TARGETS

INT8_OPS = frozenset().union(*(t.int8_ops for t in TARGETS.values()))
EIGHT_BIT = (TensorProto.UINT8, TensorProto.INT8)


def _source(value: Value | None) -> Value | None:
    """The stored tensor behind ``value``: the input of its DequantizeLinear when it has one."""
    producer = value.producer() if value is not None else None
    return producer.inputs[0] if producer is not None and producer.op_type == "DequantizeLinear" else value


def _constant(value: Value | None) -> np.ndarray | None:
    """The constant data of ``value`` (an initializer or a Constant node's ``value``), else None."""
    if value is None:
        return None
    producer = value.producer()
    if producer is not None and producer.op_type == "Constant":
        return producer.attrs.get("value")
    return value.const


def _dequantized(value: Value | None) -> bool:
    producer = value.producer() if value is not None else None
    return producer is not None and producer.op_type == "DequantizeLinear"


def precision(node: Node) -> str:
    """``int8`` when the node reads every activation (and a weighted op its weight) through DequantizeLinear,
    or is a compute op on 8-bit integers (MatMulInteger: dynamic int8); ``int16`` when one of those
    activations is 16-bit."""
    if node.inputs and node.inputs[0] is not None and node.inputs[0].dtype in EIGHT_BIT \
            and lookup(node).macs is not None:
        return "int8"
    inputs = [v for v in node.inputs if v is not None]
    activations = [v for v in inputs if _constant(_source(v)) is None]
    index = lookup(node).weight_input
    weight = index is None or len(inputs) <= index or _dequantized(node.inputs[index])
    if not (activations and weight and all(_dequantized(v) for v in activations)):
        return "float"
    return "int16" if any(_source(v).dtype in SIXTEEN_BIT for v in activations) else "int8"


def parameters(node: Node) -> int:
    """Elements of the node's constant inputs (weight and bias), read through DequantizeLinear."""
    arrays = [_constant(_source(v)) for v in node.inputs]
    return sum(int(np.size(a)) for a in arrays if a is not None)


def tensor_reader(model: Model, names: list[str]) -> Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]:
    """A function from a feed to the named tensors on it: one onnxruntime session (optimizations off)
    of ``model`` with them exposed as outputs, for as many feeds as needed; names the model does not
    compute are left out."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    with onnxruntime_model(model, extra_outputs=names) as source:
        session = ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
    inputs = {i.name for i in session.get_inputs()}
    wanted = set(names)
    outputs = [o.name for o in session.get_outputs() if o.name in wanted]

    def read(feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return dict(zip(outputs, session.run(outputs, {k: v for k, v in feed.items() if k in inputs})))

    return read


def tensor_shapes(model: Model, names: list[str], feed: dict[str, np.ndarray]) -> dict[str, tuple[int, ...]]:
    """Concrete shapes of the named tensors on ``feed`` (see :func:`tensor_reader`)."""
    return {name: tuple(np.shape(a)) for name, a in tensor_reader(model, names)(feed).items()}


def macs(node: Node, shapes: dict[str, tuple[int, ...]]) -> int:
    """Multiply-accumulates of a compute op on the given shapes (0 for other ops)."""
    count = lookup(node).macs
    return count(node, shapes) if count is not None else 0


def layer_nodes(model: Model) -> list[Node]:
    """The layers the summary lists (see the module docstring)."""
    decided = set(model.plan.reports.get("mixed_precision", {}).get("layers", {}))
    return [n for n in model.graph if n.domain in ("", "ai.onnx") and (
        lookup(n).macs is not None or (n.op_type in INT8_OPS and (n.name in decided or precision(n) == "int8")))]


def summarize(model: Model, feed: dict[str, np.ndarray], original: Model | int | None = None) -> dict[str, Any]:
    """Per-layer records and totals of a compiled ``model`` (``original``: the input model, or its
    :func:`~qcompiler.ir.serde.serialized_bytes`, for sizes)."""
    nodes = layer_nodes(model)
    tensors = [v for n in nodes if lookup(n).macs is not None for v in (n.inputs[0], n.inputs[1], n.outputs[0])]
    # a (dequantized) weight has its constant's shape: not run, so a large model's weights are not computed in float
    shapes = {v.name: _constant(_source(v)).shape for v in tensors
              if v is not None and _constant(_source(v)) is not None}
    needed = [v.name for v in tensors if v is not None and v.name not in shapes]
    shapes.update(tensor_shapes(model, needed, feed) if needed else {})
    mixed = model.plan.reports.get("mixed_precision", {})
    decided = mixed.get("layers", {})
    records = []
    for node in nodes:
        record = {"name": node.name, "op": node.op_type, "precision": precision(node),
                  "params": parameters(node), "macs": macs(node, shapes)}
        sensitivity = {k: v for k, v in decided.get(node.name, {}).items() if k != "precision"}
        if sensitivity:
            record["sensitivity"] = sensitivity
        records.append(record)
    total_macs = sum(r["macs"] for r in records)
    for record in records:
        record["macs_share"] = record["macs"] / total_macs if total_macs else 0.0
    int8_macs = sum(r["macs"] for r in records if r["precision"] == "int8")
    after = serialized_bytes(model)
    int16_macs = sum(r["macs"] for r in records if r["precision"] == "int16")
    totals = {"layers": len(records), "int8_layers": sum(r["precision"] == "int8" for r in records),
              "macs": total_macs, "int8_macs_share": int8_macs / total_macs if total_macs else 0.0,
              "size_after": after}
    if int16_macs:
        totals.update(int16_layers=sum(r["precision"] == "int16" for r in records),
                      int16_macs_share=int16_macs / total_macs)
    if original is not None:
        before = original if isinstance(original, int) else serialized_bytes(original)
        totals.update(size_before=before, compression=before / after)
    placed = model.plan.reports.get("latency_placement")
    all_placed = placed is None or placed["all_int8"]
    if "predicted" in mixed and all_placed and model.plan.reports.get("latency_guard", {}).get("kept", "int8") == "int8":
        totals["predicted"] = mixed["predicted"]  # (regions returned to float leave the search's prediction stale)
        totals["threshold"] = mixed["threshold"]
    return {"layers": records, "totals": totals}


def _db(errors: dict[str, float] | None) -> str:
    return "" if not errors else f"{errors['sqnr_db']:.1f}"


def align_columns(rows: list[tuple[str, ...]], first_width: int = 48) -> list[str]:
    """``rows`` as aligned text lines: the first two columns left-aligned, the others right-aligned;
    the first column is cut to its last ``first_width`` characters (layer names are long)."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    widths[0] = min(widths[0], first_width)
    return ["  ".join((c[-widths[i]:] if i == 0 else c).ljust(widths[i]) if i < 2 else c.rjust(widths[i])
                      for i, c in enumerate(row)).rstrip() for row in rows]


def format_table(summary: dict[str, Any]) -> str:
    """The summary as a text table: one line per layer, then the totals."""
    rows = [("layer", "op", "alone dB", "precision", "params", "MACs %")]
    for r in summary["layers"]:
        sensitivity = r.get("sensitivity", {})
        rows.append((r["name"], r["op"], _db(sensitivity.get("quantized_alone")), r["precision"],
                     f"{r['params']:,}", f"{100 * r['macs_share']:.1f}"))
    lines = align_columns(rows)
    t = summary["totals"]
    text = (f"{t['int8_layers']}/{t['layers']} layers int8, {100 * t['int8_macs_share']:.1f}% of "
            f"{t['macs']:,} MACs in int8")
    if "int16_layers" in t:
        text += f", {t['int16_layers']} layers int16 ({100 * t['int16_macs_share']:.1f}% of MACs)"
    if "size_before" in t:
        text += f"; size {t['size_before']:,} -> {t['size_after']:,} bytes ({t['compression']:.2f}x)"
    if "predicted" in t:
        p = t["predicted"]
        text += (f"; predicted output error {p['nsr']:.2e} (SQNR {p['sqnr_db']:.1f} dB, cosine {p['cosine']:.4f}) "
                 f"for threshold {t['threshold']}")
    return "\n".join(lines + [text])
