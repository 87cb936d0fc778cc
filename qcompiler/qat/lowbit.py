"""Lower a compiled QDQ model's weights before fine-tuning: 4-bit, ternary or binary. Post-training quantization does not reach these widths; they are starting points that
fine-tuning (:func:`qcompiler.qat.finetune`) trains. The first and last weight layers keep their 8-bit
weights, as is usual in low-bit training (Esser et al. 2020; Rastegari et al. 2016).

* ``int4``: per channel, symmetric, integers -7..7 stored in the weight's int8 initializer, step
  ``max|w| / 7`` (LSQ then learns it).
* ``ternary`` (TWN: Li et al. 2016): integers in {-1, 0, 1}, step ``alpha = mean(|w| : |w| > 0.7 mean|w|)`` per
  channel.
* ``binary`` (XNOR-Net: Rastegari et al. 2016): integers ``sign(w)`` in {-1, 1}, step ``mean|w|`` per channel.

All three stay int8 initializers read by ``DequantizeLinear``, which onnxruntime runs as it runs the 8-bit
model: smaller files after compression, no speed-up on CPU (there are no ternary or binary kernels).

4-bit activations (:func:`lower_activations`) stay in their uint8/int8 storage: a ``Clip`` to the 16 levels
``(qmin - z) · s .. (qmax - z) · s`` goes before the QuantizeLinear, whose step grows by ``255 / 15`` (the range
kept). ``uint4`` Q/DQ (opset 21) would say it more directly, but onnxruntime 1.32's optimizer fuses those into
QLinearConv / MaxPool on ``uint4`` tensors and then refuses its own graph ("Type 'tensor(uint4)' ... of
operator (QLinearConv) is invalid"). The price: a layer whose output goes through the Clip is no longer a
DequantizeLinear -> Conv -> QuantizeLinear unit, so onnxruntime runs it in float (slower than int8; there
are no 4-bit activation kernels on CPU anyway). The outputs of MaxPool, Reshape, Flatten, ... take the new
step without a Clip: they move values that are already on the 16 levels.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from .. import ir
from ..errors import UserError
from ..ir.quant import QuantSpec, broadcast_param, dequantize_values, integer_range, quantize_bias, spec_of_qdq

WeightForm = Literal["int4", "ternary", "binary"]
LAYERS = ("Conv", "Gemm", "MatMul", "ConvTranspose")


def _weight_layers(model: ir.Model) -> list[tuple[ir.Node, ir.Node]]:
    """(layer, weight DequantizeLinear) in graph order."""
    found = []
    for node in model.graph:
        if node.op_type in LAYERS and len(node.inputs) > 1 and node.inputs[1] is not None:
            producer = node.inputs[1].producer()
            if producer is not None and producer.op_type == "DequantizeLinear" and producer.inputs[0].const is not None:
                found.append((node, producer))
    return found


def _channel_reduce(values: np.ndarray, axis: int | None, reduce) -> np.ndarray:
    if axis is None:
        return np.asarray(reduce(values.reshape(-1)), np.float64).reshape(())
    moved = np.moveaxis(values, axis, 0).reshape(values.shape[axis], -1)
    return np.array([reduce(row) for row in moved], np.float64)


def _lower_weight(dq: ir.Node, form: WeightForm) -> None:
    spec = spec_of_qdq(dq)
    if spec.block_size is not None or np.any(np.asarray(spec.zero_point) != 0) or integer_range(spec.dtype)[0] >= 0:
        raise UserError(f"{dq.name}: only symmetric per-channel or per-tensor weights can be lowered to {form}")
    data = dq.inputs[0]
    stored = np.asarray(data.const)
    weight = dequantize_values(stored, broadcast_param(spec.scale, stored.shape, spec.axis, None), None, np.float32)
    magnitude = np.abs(weight.astype(np.float64))
    if form == "int4":
        scale = _channel_reduce(magnitude, spec.axis, np.max) / 7
        limit = 7
    elif form == "ternary":
        def alpha(row):
            kept = row[row > 0.7 * row.mean()]
            return kept.mean() if kept.size else 0.0
        scale, limit = _channel_reduce(magnitude, spec.axis, alpha), 1
    else:
        scale, limit = _channel_reduce(magnitude, spec.axis, np.mean), 1
    scale = np.where(scale > 0, scale, 1.0).astype(np.float32)
    step = broadcast_param(scale, stored.shape, spec.axis, None)
    if form == "binary":
        integers = np.where(weight >= 0, 1, -1)
    else:
        integers = np.clip(np.rint(weight / step), -limit, limit)
    data.const = integers.astype(stored.dtype)
    dq.inputs[1].const = scale.reshape(np.shape(dq.inputs[1].const))


def lower_precision(model: ir.Model, weights: WeightForm) -> int:
    """Lower the weights of every layer of ``model`` but the first and last to ``weights`` (in place; see the
    module docstring); returns how many layers were lowered."""
    if weights not in ("int4", "ternary", "binary"):
        raise UserError(f"weights must be int4, ternary or binary, not {weights!r}")
    inner = _weight_layers(model)[1:-1]
    for layer, dq in inner:
        _lower_weight(dq, weights)
        _requantize_bias(layer, dq)
    return len(inner)


def _requantize_bias(layer: ir.Node, weight_dq: ir.Node) -> None:
    """Give the layer's int32 bias the new scale ``s_x · s_w``: onnxruntime fuses a QDQ layer into its integer
    kernel only when the bias scale is that product."""
    if len(layer.inputs) < 3 or layer.inputs[2] is None:
        return
    bias_dq, input_dq = layer.inputs[2].producer(), layer.inputs[0].producer()
    if bias_dq is None or bias_dq.op_type != "DequantizeLinear" or bias_dq.inputs[0].const is None \
            or input_dq is None or input_dq.op_type != "DequantizeLinear" or input_dq.inputs[1].const is None:
        return
    integers, scale = np.asarray(bias_dq.inputs[0].const), np.asarray(bias_dq.inputs[1].const)
    bias = (integers.astype(np.float64) * scale.astype(np.float64)).astype(np.float32)
    x_spec, w_spec = spec_of_qdq(input_dq), spec_of_qdq(weight_dq)
    new_integers, new_scale = quantize_bias(bias, QuantSpec(x_spec.dtype, x_spec.scale, x_spec.zero_point),
                                            w_spec)
    bias_dq.inputs[0].const = new_integers.reshape(integers.shape)
    bias_dq.inputs[1].const = new_scale.reshape(scale.shape)


MOVEMENT = {"MaxPool", "Flatten", "Reshape", "Transpose", "Squeeze", "Unsqueeze", "Concat", "Slice", "Gather",
            "Split", "Identity", "GlobalMaxPool"}


def _kept_activations(model: ir.Model) -> set[str]:
    """The first layer's quantized input and the last layer's output: they stay 8-bit."""
    layers = _weight_layers(model)
    if not layers:
        return set()
    kept = {layers[-1][0].outputs[0].name}
    dq = layers[0][0].inputs[0].producer()
    q = dq.inputs[0].producer() if dq is not None and dq.op_type == "DequantizeLinear" else None
    if q is not None and q.op_type == "QuantizeLinear":
        kept.add(q.inputs[0].name)
    return kept


def lower_activations(model: ir.Model, bits: int = 4) -> int:
    """Narrow every per-tensor activation Q/DQ pair but the first layer's input and the last layer's output to
    ``bits`` (in place; see the module docstring); returns how many were narrowed."""
    if not 2 <= bits < 8:
        raise UserError(f"activation bits must be 2..7, not {bits}")
    graph, kept, count = model.graph, _kept_activations(model), 0
    for node in list(graph):
        if node.op_type != "QuantizeLinear" or node.inputs[0].name in kept or node.inputs[1].const is None:
            continue
        readers = node.outputs[0].consumers()
        if len(readers) != 1 or readers[0].op_type != "DequantizeLinear" or len(node.inputs) < 3:
            continue
        spec = spec_of_qdq(node)
        if spec.axis is not None:
            continue
        lo, hi = integer_range(spec.dtype)
        levels = 2 ** bits
        ratio = (hi - lo) / (levels - 1)
        low = -(levels // 2) if lo < 0 else 0
        scale = np.float32(float(np.asarray(spec.scale).reshape(())) * ratio)
        zero = int(np.clip(np.rint(float(np.asarray(spec.zero_point).reshape(())) / ratio), low, low + levels - 1))
        for qdq in (node, readers[0]):
            qdq.inputs[1].const = np.asarray(scale).reshape(np.shape(qdq.inputs[1].const))
            qdq.inputs[2].const = np.asarray(zero, np.asarray(spec.zero_point).dtype).reshape(
                np.shape(qdq.inputs[2].const))
        count += 1
        producer = node.inputs[0].producer()
        if producer is not None and producer.op_type in MOVEMENT:
            continue
        source = node.inputs[0]
        bounds = []
        for suffix, level in (("_min", low), ("_max", low + levels - 1)):
            bound = ir.Value(graph.unique_name(f"{source.name}_{bits}bit{suffix}"),
                             const=np.asarray((level - zero) * scale, np.float32))
            graph.add_initializer(bound)
            bounds.append(bound)
        clipped = ir.Value(graph.unique_name(f"{source.name}_{bits}bit"), dtype=source.dtype, shape=source.shape)
        graph.insert_before(node, ir.Node("Clip", [source, *bounds], [clipped],
                                          name=graph.unique_name(f"{node.name}_{bits}bit_clip")))
        node.set_input(0, clipped)
    return count
