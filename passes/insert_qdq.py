"""QDQ insertion: materialize every QuantSpec as QuantizeLinear / DequantizeLinear nodes.

* An activation ``v`` with a spec gets ``q = QuantizeLinear(v, s, zp)``, ``v' = DequantizeLinear(q, s,
  zp)`` right after its producer, and every reader of ``v`` reads ``v'`` — one quantizer per tensor,
  so all readers share one scale, as onnxruntime's fused kernels require. When ``v`` is a graph
  output, ``v'`` takes its name, so the model's interface is unchanged.
* A weight gets ``DequantizeLinear(QuantizeLinear(W))`` with its per-channel axis (the simulation form;
  ``fold-quantized-weights`` then stores the integers).
* The bias of a quantized Conv or Gemm becomes int32 with ``scale = s_input · s_weight`` (per output
  channel) and zero point 0, read through a DequantizeLinear: the form onnxruntime fuses into
  QLinearConv / QGemm (Jacob et al. 2018, eq. 7-9).
* An absorbed activation (Relu, Clip; see ``assign-precision``) is removed: its input is quantized
  with its output's spec, whose saturation performs the clipping.
"""

from __future__ import annotations

import numpy as np
from onnx import TensorProto

from qcompiler.ir import Graph, Model, Node, QuantSpec, Value
from qcompiler.pass_manager import Pass, PassResult, register_pass

from .cleanup import bypass_all

BIAS_OPS = ("Conv", "Gemm")


def _param(graph: Graph, base: str, array: np.ndarray) -> Value:
    return graph.add_initializer(Value(graph.unique_name(base), const=np.asarray(array)))


def quantize_pair(graph: Graph, value: Value, spec: QuantSpec) -> tuple[Node, Node]:
    """The (QuantizeLinear, DequantizeLinear) nodes for ``value`` with ``spec`` (not yet inserted)."""
    scale = _param(graph, f"{value.name}_scale", spec.scale)
    zero_point = _param(graph, f"{value.name}_zero_point", spec.zero_point)
    attrs = {} if spec.axis is None else {"axis": spec.axis}
    quantized = Value(graph.unique_name(f"{value.name}_quantized"), spec.dtype, value.shape)
    restored = Value(graph.unique_name(f"{value.name}_dequantized"), value.dtype, value.shape)
    q = Node("QuantizeLinear", [value, scale, zero_point], [quantized], attrs=dict(attrs),
             name=graph.unique_name(f"{value.name}_QuantizeLinear"))
    dq = Node("DequantizeLinear", [quantized, scale, zero_point], [restored], attrs=dict(attrs),
              name=graph.unique_name(f"{value.name}_DequantizeLinear"))
    restored.quant = spec
    return q, dq


def insert_pair(graph: Graph, value: Value, spec: QuantSpec) -> Value:
    """Insert Q/DQ for ``value`` and route every reader through the DQ output, which is returned.

    A graph output stays ``value``: the caller hands it to the DQ output (:meth:`Graph.replace_outputs`).
    """
    readers = value.uses()
    q, dq = quantize_pair(graph, value, spec)
    producer = value.producer()
    if producer is None:
        graph.prepend(q, dq)
    else:
        graph.insert_after(producer, q, dq)
    restored = dq.outputs[0]
    for node, index in readers:
        node.set_input(index, restored)
    value.quant = None
    return restored


def bias_values(node: Node, x_spec: QuantSpec, w_spec: QuantSpec, bias: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """int32 bias and its scales ``s_x · s_w`` (per output channel)."""
    channels = bias.shape[-1] if bias.ndim else 1
    scale = (np.float64(x_spec.scale) * np.broadcast_to(w_spec.scale.astype(np.float64), (channels,)))
    scale = np.where(scale > 0, scale, 1.0)
    integers = np.clip(np.rint(bias.astype(np.float64) / scale), -(2**31), 2**31 - 1).astype(np.int32)
    return integers, scale.astype(np.float32)


def quantize_bias(graph: Graph, node: Node) -> bool:
    """Replace a float bias of a quantized Conv/Gemm by int32 + DequantizeLinear."""
    if node.op_type not in BIAS_OPS or len(node.inputs) < 3 or node.inputs[2] is None:
        return False
    x, w, b = node.inputs[0], node.inputs[1], node.inputs[2]
    x_spec, w_spec = x.quant, w.quant
    if b.const is None or x_spec is None or w_spec is None or b.const.ndim > 1:
        return False
    if x_spec.axis is not None:
        return False
    integers, scale = bias_values(node, x_spec, w_spec, b.const)
    int_bias = _param(graph, f"{b.name}_quantized", integers)
    scale_value = _param(graph, f"{b.name}_scale", scale)
    zero = _param(graph, f"{b.name}_zero_point", np.zeros(scale.shape, np.int32))
    restored = Value(graph.unique_name(f"{b.name}_dequantized"), TensorProto.FLOAT, b.const.shape)
    dq = Node("DequantizeLinear", [int_bias, scale_value, zero], [restored], attrs={"axis": 0},
              name=graph.unique_name(f"{b.name}_DequantizeLinear"))
    graph.insert_before(node, dq)
    node.set_input(2, restored)
    return True


@register_pass("insert-qdq")
class InsertQDQ(Pass):
    """Insert QuantizeLinear/DequantizeLinear for every value with a QuantSpec; int32 biases."""

    def call(self, model: Model) -> PassResult:
        graph = model.graph
        absorbed = [node for node in graph if node.meta.get("absorbed")]
        for node in absorbed:
            node.inputs[0].quant = node.outputs[0].quant
        changed = bool(bypass_all(graph, absorbed))
        pending = [v for v in graph.values() if v.quant is not None and not _is_restored(v)]
        restored = {value: insert_pair(graph, value, value.quant) for value in pending}
        graph.replace_outputs({v: restored[v] for v in graph.outputs if v in restored})
        for node in graph:
            if node.meta.get("quantize"):
                changed |= quantize_bias(graph, node)
        return PassResult(model, changed or bool(pending))


def _is_restored(value: Value) -> bool:
    """A DequantizeLinear output: it already is the quantized form of a value."""
    producer = value.producer()
    return producer is not None and producer.op_type == "DequantizeLinear"
