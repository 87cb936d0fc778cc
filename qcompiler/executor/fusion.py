"""onnxruntime's QDQ node-unit fusions, as an analysis of the IR.

onnxruntime (CPU provider, graph optimizations on) replaces a ``DequantizeLinear`` -> op ->
``QuantizeLinear`` node unit by one integer kernel: the op's ``ort_fusion`` (``float_output_fusion``
for a unit without the Q) in :mod:`qcompiler.ops`. This module finds the units it would fuse, with the
selection rules of ``core/optimizer/qdq_transformer/selectors_actions/qdq_selectors.cc`` (onnxruntime
1.32), for the fused kernels whose arithmetic differs from running the unit in float:

==================  ==========================================  =====================================
op                  fused kernel                                 why it differs from the float unit
==================  ==========================================  =====================================
Conv                QLinearConv                                  int32 accumulation, one requantize
MatMul (+Q)         QLinearMatMul                                int32 accumulation, one requantize
MatMul (no Q)       com.microsoft::MatMulIntegerToFloat          int32 accumulation
Gemm (+Q or not)    com.microsoft::QGemm                         int32 accumulation, int32 bias
Add                 com.microsoft::QLinearAdd                    MLAS's float formula on raw integers
GlobalAveragePool   com.microsoft::QLinearGlobalAveragePool      int32 sum, one requantize
Softmax             com.microsoft::QLinearSoftmax                exp lookup table, truncated scale
==================  ==========================================  =====================================

onnxruntime's other QDQ rules do not change values: dropping Q/DQ around MaxPool, Reshape,
Transpose, ... (``q(dq(x)) == x`` for equal parameters), QLinearConcat/Sigmoid/LeakyRelu (lookup
tables of ``q(f(dq(x)))``, the unfused computation up to the float function's last bit); the executor
runs those units unfused, as it does QLinearAveragePool's, which it does not model yet.

Selection (``NodeGroupSelector::CheckQDQNodes`` and the per-op ``Check``): every input counted by the
rule comes from a DequantizeLinear (onnxruntime first gives each consumer a DQ of its own,
``EnsureUniqueDQForNodeUnit``, duplicating a DQ with several consumers or one that is also a graph
output, so neither sharing nor a graph output matters); the op's output is
consumed by QuantizeLinear nodes only, exactly one, and is not a graph output; a Relu or Clip
between the op and the Q is absorbed when the Q's range makes it redundant; activation and output
types agree and are 8-bit; int8 activations fuse only where the target allows them (not on x86,
where onnxruntime's ``QDQIsInt8Allowed`` is false); a bias is int32. Zero-point inputs must be present.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from onnx import TensorProto

from .. import ir
from ..ops import MS, OpQuant, lookup

EIGHT_BIT = (TensorProto.UINT8, TensorProto.INT8)


@dataclass(frozen=True)
class Fusion:
    """A node unit onnxruntime fuses: ``kernel`` (``(domain, op_type)``) reads ``inputs`` and writes
    ``outputs``; ``nodes`` are the IR nodes it replaces (DQs that also feed other nodes still run)."""

    kernel: tuple[str, str]
    target: ir.Node
    inputs: tuple[ir.Value | None, ...]
    outputs: tuple[ir.Value, ...]
    dequantize: tuple[ir.Node, ...]
    tail: tuple[ir.Node, ...]  # the QuantizeLinear (and an absorbed Relu/Clip), possibly empty
    attrs: dict = field(default_factory=dict)

    @property
    def nodes(self) -> tuple[ir.Node, ...]:
        return self.dequantize + (self.target,) + self.tail


def _is(node: ir.Node | None, op_type: str) -> bool:
    return node is not None and node.op_type == op_type and node.domain in ("", "ai.onnx")


def _const(value: ir.Value | None):
    return None if value is None else value.const


def quantized_type(node: ir.Node) -> int | None:
    """The integer type a DequantizeLinear reads or a QuantizeLinear writes."""
    zero_point = node.inputs[2] if len(node.inputs) > 2 else None
    if zero_point is not None and zero_point.dtype is not None:
        return zero_point.dtype
    if _is(node, "QuantizeLinear"):
        return node.attrs.get("output_dtype") or TensorProto.UINT8
    return node.inputs[0].dtype


def _redundant_clip(clip: ir.Node, q: ir.Node) -> bool:
    """Relu/Clip before ``q`` whose bounds the quantized range already enforces (``IsClipMadeRedundantByQ``)."""
    scale, zero = _const(q.inputs[1]), _const(q.inputs[2] if len(q.inputs) > 2 else None)
    if scale is None or zero is None or scale.size != 1:
        return False
    info = np.iinfo(zero.dtype)
    lo = (info.min - int(zero)) * float(scale)
    hi = (info.max - int(zero)) * float(scale)
    if _is(clip, "Relu"):
        return int(zero) == info.min
    bounds = [_const(v) if v is not None else None for v in clip.inputs[1:3]]
    if len(bounds) < 2:
        bounds += [None] * (2 - len(bounds))
    low = float(bounds[0]) if bounds[0] is not None else clip.attrs.get("min", -np.inf)
    high = float(bounds[1]) if bounds[1] is not None else clip.attrs.get("max", np.inf)
    return low <= lo and high >= hi


def _output_unit(node: ir.Node, graph_outputs: set) -> tuple[ir.Node | None, ir.Node | None] | None:
    """``(q, clip)``: the one QuantizeLinear after ``node`` (None if there is none), through a
    redundant Relu/Clip; None when the selection fails (``GetQDQSelection`` and ``CheckQDQNodes``)."""
    out = node.outputs[0]
    if out is None or out in graph_outputs:
        return None
    uses = out.uses()
    clip = uses[0].node if len(uses) == 1 else None
    if not (_is(clip, "Relu") or _is(clip, "Clip")) or clip.outputs[0] in graph_outputs \
            or len(clip.outputs[0].uses()) != 1:
        clip = None
    qs = [use.node for use in (clip or node).outputs[0].uses() if _is(use.node, "QuantizeLinear")]
    if clip is not None and (len(qs) != 1 or not _redundant_clip(clip, qs[0])):
        return None
    if not qs:
        return None, None
    return (qs[0], clip) if len(qs) == 1 and len(uses) == 1 else None


def _dq_parents(node: ir.Node) -> list[ir.Node | None] | None:
    """The DequantizeLinear feeding each input (None for an absent or non-DQ input); None when a DQ
    lacks a zero point. A DQ that is also a graph output counts: onnxruntime duplicates it for the
    unit (``EnsureUniqueDQForNodeUnit``)."""
    parents = []
    for value in node.inputs:
        producer = value.producer() if value is not None else None
        if _is(producer, "DequantizeLinear"):
            if len(producer.inputs) < 3 or producer.inputs[2] is None:
                return None
            parents.append(producer)
        else:
            parents.append(None)
    return parents


def find_fusion(node: ir.Node, graph_outputs: set, *, opset: int, int8_allowed: bool = False) -> Fusion | None:
    """The fusion onnxruntime applies with ``node`` as target, if any."""
    op = lookup(node)
    rule = _RULES.get(op.ort_fusion)
    if rule is None:
        return None
    dqs = _dq_parents(node)
    unit = _output_unit(node, graph_outputs)
    if dqs is None or unit is None:
        return None
    fusion = rule(node, op, dqs, *unit, int8_allowed)
    if fusion is not None and node.op_type == "Softmax":
        fusion.attrs.update(axis=node.attrs.get("axis", -1 if opset >= 13 else 1), opset=opset)
    return fusion


def _present(node: ir.Node) -> list[int]:
    return [i for i, v in enumerate(node.inputs) if v is not None]


def _types_ok(dq_types: list[int], out_type: int | None, int8_allowed: bool, weight: int | None = None) -> bool:
    activation = dq_types[0]
    if activation not in EIGHT_BIT or (out_type is not None and out_type != activation):
        return False
    if weight is not None and weight not in EIGHT_BIT:
        return False
    return activation != TensorProto.INT8 or (int8_allowed and weight in (None, TensorProto.INT8))


def _make(kernel, node, dqs, q, clip, inputs, attrs=None) -> Fusion:
    outputs = (q.outputs[0],) if q is not None else (node.outputs[0],)
    tail = tuple(n for n in (clip, q) if n is not None)
    return Fusion(kernel, node, tuple(inputs), outputs, tuple(d for d in dqs if d is not None), tail, attrs or {})


def _dq_args(dq: ir.Node) -> list[ir.Value]:
    return [dq.inputs[0], dq.inputs[1], dq.inputs[2]]


def _q_args(q: ir.Node) -> list[ir.Value]:
    return [q.inputs[1], q.inputs[2]]


def _conv(node, op: OpQuant, dqs, q, clip, int8_allowed):
    present = _present(node)
    if q is None or any(dqs[i] is None for i in present) or len(present) < 2:
        return None
    bias = dqs[2] if len(dqs) > 2 else None
    if bias is not None and quantized_type(bias) != TensorProto.INT32:
        return None
    types = [quantized_type(dqs[0]), quantized_type(dqs[1])]
    if not _types_ok(types[:1], quantized_type(q), int8_allowed, weight=types[1]):
        return None
    inputs = _dq_args(dqs[0]) + _dq_args(dqs[1]) + _q_args(q) + [bias.inputs[0] if bias is not None else None]
    return _make(op.ort_fusion, node, dqs, q, clip, inputs, dict(node.attrs))


def _matmul(node, op: OpQuant, dqs, q, clip, int8_allowed):
    if any(d is None for d in dqs[:2]):
        return None
    types = [quantized_type(dqs[0]), quantized_type(dqs[1])]
    if not _types_ok(types[:1], quantized_type(q) if q is not None else None, int8_allowed, weight=types[1]):
        return None
    if q is not None:
        return _make(op.ort_fusion, node, dqs, q, clip, _dq_args(dqs[0]) + _dq_args(dqs[1]) + _q_args(q))
    if clip is not None:
        return None
    a, b = _dq_args(dqs[0]), _dq_args(dqs[1])
    return _make(op.float_output_fusion, node, dqs, None, None, [a[0], b[0], a[1], b[1], a[2], b[2], None])


def _gemm(node, op: OpQuant, dqs, q, clip, int8_allowed):
    present = _present(node)
    if any(dqs[i] is None for i in present) or (q is None and clip is not None):
        return None
    types = [quantized_type(dqs[0]), quantized_type(dqs[1])]
    if not _types_ok(types[:1], quantized_type(q) if q is not None else None, True, weight=types[1]):
        return None
    if types[0] == TensorProto.INT8 and types[1] != TensorProto.INT8:
        return None
    bias = dqs[2] if len(dqs) > 2 else None
    if bias is not None and (node.attrs.get("beta", 1.0) != 1.0 or node.attrs.get("alpha", 1.0) != 1.0
                             or quantized_type(bias) != TensorProto.INT32):
        return None  # QGemm scales the int32 bias by alpha too: onnxruntime fuses none with a bias and alpha != 1
    inputs = (_dq_args(dqs[0]) + _dq_args(dqs[1]) + [bias.inputs[0] if bias is not None else None]
              + (_q_args(q) if q is not None else [None, None]))
    attrs = {k: node.attrs[k] for k in ("alpha", "transA", "transB") if k in node.attrs}
    return _make(op.ort_fusion if q is not None else op.float_output_fusion, node, dqs, q, clip, inputs, attrs)


def _add(node, op: OpQuant, dqs, q, clip, int8_allowed):
    if q is None or len(_present(node)) != 2 or any(d is None for d in dqs):
        return None
    types = [quantized_type(d) for d in dqs]
    if types[0] != types[1] or not _types_ok(types[:1], quantized_type(q), True):
        return None
    return _make(op.ort_fusion, node, dqs, q, clip, _dq_args(dqs[0]) + _dq_args(dqs[1]) + _q_args(q))


def _unary(node, op: OpQuant, dqs, q, clip, int8_allowed):
    if q is None or sum(d is not None for d in dqs) != 1 or dqs[0] is None:
        return None
    if not _types_ok([quantized_type(dqs[0])], quantized_type(q), True):
        return None
    attrs = {"channels_last": 0} if op.ort_fusion == (MS, "QLinearGlobalAveragePool") else {}
    return _make(op.ort_fusion, node, dqs, q, clip, _dq_args(dqs[0]) + _q_args(q), attrs)


_RULES = {("", "QLinearConv"): _conv, ("", "QLinearMatMul"): _matmul, (MS, "QGemm"): _gemm,
          (MS, "QLinearAdd"): _add, (MS, "QLinearGlobalAveragePool"): _unary, (MS, "QLinearSoftmax"): _unary}
"""The fused kernels modelled (see the table above), keyed by kernel: each rule selects an op's unit."""


def find_fusions(model: ir.Model, *, int8_allowed: bool = False) -> list[Fusion]:
    """Every fusion onnxruntime applies in ``model``'s main graph (subgraphs run unfused)."""
    outputs = set(model.graph.outputs)
    found = [find_fusion(node, outputs, opset=model.opset, int8_allowed=int8_allowed) for node in model.graph]
    return [f for f in found if f is not None]


SAFE_WEIGHT = 64
"""The largest weight magnitude whose u8 x s8 pair sums fit an int16 (``2 * 255 * 64 = 32640``)."""


def saturating_units(model: ir.Model) -> list[Fusion]:
    """Fused u8 x s8 units whose constant weights can overflow an int16 pair."""
    units = []
    for fusion in find_fusions(model):
        if lookup(fusion.target).weight_input is None:
            continue
        activation = fusion.dequantize[0]
        weight = fusion.dequantize[1] if len(fusion.dequantize) > 1 else None
        if weight is None or activation.inputs[2].dtype != TensorProto.UINT8 or weight.inputs[0].const is None:
            continue
        w, zero = weight.inputs[0].const, weight.inputs[2].const
        if w.dtype != np.int8 or np.any(zero != 0) or np.abs(w.astype(np.int32)).max() <= SAFE_WEIGHT:
            continue
        depthwise = w.shape[1] == 1 and w.shape[0] == fusion.target.attrs.get("group", 1)
        if fusion.kernel == ("", "QLinearConv") and depthwise:
            continue  # depthwise, one weight zero point: MLAS's exact depthwise kernel
        units.append(fusion)
    return units
