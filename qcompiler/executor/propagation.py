"""onnxruntime's QDQ propagation, as an IR rewrite (on a copy: the executor never edits its input).

Before fusing node units, onnxruntime's ``QDQPropagationTransformer``
(``core/optimizer/qdq_transformer/qdq_propagation.cc``, onnxruntime 1.32) inserts
QuantizeLinear -> DequantizeLinear pairs across the data-movement ops whose descriptor says
``ort_propagates`` (:mod:`qcompiler.ops`: MaxPool, Reshape, Transpose, Squeeze, Unsqueeze and Slice,
not Flatten), through their first input and output:

* **Q backward**: for ``X -> op -> ... -> Q`` (each edge X's only use, not a graph output), a pair
  with the Q's parameters goes onto each edge before an op of the chain, stopping at a DQ.
  ``Softmax -> Reshape -> Q`` becomes ``Softmax -> Q -> DQ -> Reshape -> Q``: now Softmax is a
  node unit of its own (QLinearSoftmax).
* **DQ forward**: for ``DQ -> op -> ...`` (the DQ's only use), a pair with the DQ's parameters goes
  onto every edge after an op of the chain that does not already end in a Q:
  ``DQ -> Transpose -> MatMul`` becomes ``DQ -> Transpose -> Q -> DQ -> MatMul``.

Only scalar, constant scales and zero points propagate. The pairs do not change any value (a
data-movement op of dequantized values yields dequantized values, and ``q(dq(x)) == x``); they change
which node units the fusion selector then finds, and so which integer kernels run.
"""

from __future__ import annotations

from .. import ir
from ..ops import lookup
from .weight_bias_quantization import quantize_layer_weights


def _is(node: ir.Node | None, op_type: str) -> bool:
    return node is not None and node.op_type == op_type and node.domain in ("", "ai.onnx")


def _scalar_params(node: ir.Node) -> bool:
    params = [v for v in node.inputs[1:3] if v is not None]
    return all(v.const is not None and v.const.size == 1 for v in params)


def _propagates(node: ir.Node | None) -> bool:
    return node is not None and lookup(node).ort_propagates


def _sole_use(value: ir.Value, outputs: set) -> bool:
    """The edge into this value's reader is the only one (ORT's single-edge check)."""
    return value.producer() is None or (value not in outputs and len(value.uses()) == 1)


def _insert_pair(graph: ir.Graph, value: ir.Value, readers: list[tuple[ir.Node, int]], params: ir.Node) -> None:
    """``value -> Q -> DQ -> reader`` for each reader (one Q, one DQ per reader), with ``params``'s
    scale and zero point."""
    scale_zero = [v for v in params.inputs[1:3] if v is not None]
    quantized = ir.Value(graph.unique_name(value.name + "_pre_q"), dtype=params.inputs[2].dtype
                         if len(params.inputs) > 2 and params.inputs[2] is not None else None, shape=value.shape)
    q = ir.Node("QuantizeLinear", [value] + scale_zero, [quantized], name=graph.unique_name(value.name + "_q"))
    anchor = value.producer()
    if anchor is None:
        graph.insert_before(readers[0][0], q)
    else:
        graph.insert_after(anchor, q)
    for index, (reader, slot) in enumerate(readers):
        restored = ir.Value(graph.unique_name(value.name + f"_post_dq{index or ''}"), dtype=value.dtype,
                            shape=value.shape)
        dq = ir.Node("DequantizeLinear", [quantized] + scale_zero, [restored],
                     name=graph.unique_name(value.name + f"_dq{index or ''}"))
        graph.insert_after(q, dq)
        reader.set_input(slot, restored)


def _propagate_q_backward(graph: ir.Graph, q: ir.Node, outputs: set) -> None:
    value = q.inputs[0]
    if not _scalar_params(q) or not _sole_use(value, outputs):
        return
    node = value.producer()
    while _propagates(node):
        before = node.inputs[0]
        if not _sole_use(before, outputs) or _is(before.producer(), "DequantizeLinear"):
            return
        _insert_pair(graph, before, [(node, 0)], q)
        node = before.producer()


def _propagate_dq_forward(graph: ir.Graph, dq: ir.Node, outputs: set) -> None:
    out = dq.outputs[0]
    if out in outputs or len(out.uses()) != 1 or not _scalar_params(dq):
        return
    pending = [out.uses()[0].node]
    while pending:
        node = pending.pop()
        if not _propagates(node) or node.outputs[0] in outputs:
            continue
        readers = [(use.node, use.index) for use in node.outputs[0].uses()  # a subgraph's capture (index -1) keeps
                   if use.index >= 0 and not _is(use.node, "QuantizeLinear")]  # reading the value itself
        if not readers:
            continue
        _insert_pair(graph, node.outputs[0], readers, dq)
        pending.extend(reader for reader, _ in readers)


def propagate_qdq(model: ir.Model) -> ir.Model:
    """A copy of ``model`` with onnxruntime's Q/DQ pairs inserted (main graph), after its quantization of
    the float weights and biases of layers between Q/DQ (:mod:`.weight_bias_quantization`)."""
    model = model.clone()
    quantize_layer_weights(model)
    graph = model.graph
    outputs = set(graph.outputs)
    for node in [n for n in graph if _is(n, "QuantizeLinear")]:
        _propagate_q_backward(graph, node, outputs)
    for node in [n for n in graph if _is(n, "DequantizeLinear")]:
        _propagate_dq_forward(graph, node, outputs)
    return model
