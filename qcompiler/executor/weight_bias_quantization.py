"""onnxruntime's ``WeightBiasQuantization``, as an IR rewrite: float weights and biases of layers that sit
between a DequantizeLinear and a QuantizeLinear are quantized by onnxruntime itself.

``core/optimizer/qdq_transformer/weight_bias_quantization.cc`` (onnxruntime 1.32, before the QDQ
propagation and fusions): a Conv, ConvTranspose or Gemm whose input 0 comes from a DequantizeLinear with
a scalar scale, whose output reaches a QuantizeLinear along a path without branches (through Relu or Clip
only), and whose weight is a float32 initializer or a DequantizeLinear output (then with a float 1-D
bias initializer) gets:

* the float weight quantized to int8 per tensor, asymmetric, by ``GetQuantizationParameter`` (``qmath.h``):
  ``lo = min(min w, 0)``, ``hi = max(max w, 0)``, ``s = (hi - lo) / 255`` in float32 (1 when ``hi == lo``),
  ``zp = round_half_even(clamp(-128 - lo / s, -128, 127))``; then ``QuantizeLinear`` (constant-folded);
* the float bias quantized to int32 with scale ``s_x · s_w`` (per channel when the weight's is) and zero
  point 0: ``Cast(Round(b / (s_x · s_w)))``.

The layer then is a Q/DQ node unit like the others, and fuses into an integer kernel (QLinearConv,
QGemm). A layer the compiler kept in float therefore runs in int8 under onnxruntime when its input is
quantized and its output is quantized right after it. The executor applies the rewrite on its copy of
the model so that it computes what onnxruntime does.
"""

from __future__ import annotations

import numpy as np
from onnx import TensorProto

from .. import ir
from ..ir.quant import quantize_values

LAYERS = ("Conv", "ConvTranspose", "Gemm")


def _is(node: ir.Node | None, op_type: str) -> bool:
    return node is not None and node.op_type == op_type and node.domain in ("", "ai.onnx")


def _scalar(value: ir.Value | None) -> bool:
    """``optimizer_utils::IsScalar``: shape ``()`` or ``(1,)``."""
    shape = value.const.shape if value is not None and value.const is not None else getattr(value, "shape", None)
    return shape in ((), (1,))


def _reaches_quantize(node: ir.Node) -> bool:
    """``IsNoBranchPathToQuantizeLinear``: one reader after another (Relu or Clip) until a QuantizeLinear."""
    while len(node.outputs) == 1:
        readers = node.outputs[0].uses()
        if len(readers) != 1:
            return False
        reader = readers[0].node
        if _is(reader, "QuantizeLinear"):
            return True
        if not (_is(reader, "Relu") or _is(reader, "Clip")):
            return False
        node = reader
    return False


def _weight_parameters(w: np.ndarray) -> tuple[np.float32, np.int8]:
    lo, hi = np.float32(min(w.min(), 0)), np.float32(max(w.max(), 0))
    scale = np.float32(1) if hi == lo else np.float32((hi - lo) / np.float32(255))
    zero_point = np.rint(np.clip(np.float32(-128) - lo / scale, -128, 127))
    return scale, np.int8(zero_point)


def _dq(graph: ir.Graph, node: ir.Node, integers: np.ndarray, scale: np.ndarray, zero_point: np.ndarray,
        stem: str, axis: int | None) -> ir.Value:
    values = [graph.add_initializer(ir.Value(graph.unique_name(f"{node.name}_{stem}{suffix}"), const=array))
              for suffix, array in (("_q", integers), ("_scale", scale), ("_zp", zero_point))]
    restored = ir.Value(graph.unique_name(f"{node.name}_{stem}_dq"), dtype=TensorProto.FLOAT, shape=integers.shape)
    graph.insert_before(node, ir.Node("DequantizeLinear", values, [restored], attrs={} if axis is None else
                                      {"axis": axis}, name=graph.unique_name(f"{node.name}_{stem}_dq")))
    return restored


def quantize_layer_weights(model: ir.Model) -> None:
    """The rewrite of the module docstring, in place on ``model``'s main graph."""
    graph = model.graph
    for node in [n for n in graph if n.op_type in LAYERS and n.domain in ("", "ai.onnx")]:
        x_dq, w = node.inputs[0].producer(), node.inputs[1]
        bias = node.inputs[2] if len(node.inputs) > 2 else None
        if not _is(x_dq, "DequantizeLinear") or not _scalar(x_dq.inputs[1]) or not _reaches_quantize(node):
            continue
        w_dq = w.producer() if _is(w.producer(), "DequantizeLinear") else None
        if w_dq is None and (w.const is None or w.const.dtype != np.float32 or w.name not in graph.initializers):
            continue
        if bias is not None and (bias.const is None or bias.const.ndim != 1):
            continue
        if w_dq is not None and bias is None:
            continue
        if w_dq is not None:
            w_scale = w_dq.inputs[1].const
            if w_scale is None:
                continue
            if w_scale.size != 1:
                axis = w_dq.attrs.get("axis", 1) % len(w.shape)
                expected = 0 if node.op_type != "Gemm" else (0 if node.attrs.get("transB", 0) else 1)
                if w_dq.attrs.get("block_size", 0) or w_scale.shape != (len(bias.const),) or axis != expected:
                    continue
        else:
            w_scale, w_zero = _weight_parameters(w.const)
            node.set_input(1, _dq(graph, node, quantize_values(w.const, w_scale, w_zero, np.int8),
                                  np.asarray(w_scale), np.asarray(w_zero), "weight", None))
        if bias is not None:
            x_scale = x_dq.inputs[1].const
            if x_scale is None:
                continue
            bias_scale = (np.float32(x_scale.reshape(())) * np.asarray(w_scale, np.float32)).astype(np.float32)
            integers = np.rint(bias.const.astype(np.float32) / bias_scale).astype(np.int32)
            node.set_input(2, _dq(graph, node, integers, bias_scale, np.zeros(bias_scale.shape, np.int32), "bias",
                                  0 if bias_scale.size != 1 else None))
