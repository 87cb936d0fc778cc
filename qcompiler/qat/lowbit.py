"""Lower a compiled QDQ model's precision before fine-tuning: 4-bit, ternary or binary weights, 4-bit
activations. Post-training quantization does not reach these widths; they are starting points that
fine-tuning (:func:`qcompiler.qat.finetune`) trains. The first and last weight layers keep their weights,
and the first layer's input and the last layer's output keep their activation quantizers (8-bit), as
is usual in low-bit training (Esser et al. 2020; Rastegari et al. 2016).

* ``int4``: per channel, symmetric, integers -7..7 stored in the weight's int8 initializer, step
  ``max|w| / 7`` (LSQ then learns it).
* ``ternary`` (TWN: Li et al. 2016): integers in {-1, 0, 1}, step ``alpha = mean(|w| : |w| > 0.7 mean|w|)`` per
  channel.
* ``binary`` (XNOR-Net: Rastegari et al. 2016): integers ``sign(w)`` in {-1, 1}, step ``mean|w|`` per channel.

All three stay int8 initializers read by ``DequantizeLinear``, which onnxruntime runs as it runs the 8-bit
model: smaller files after compression, no speed-up on CPU (there are no ternary or binary kernels).
4-bit activations become ``uint4``/``int4`` Q/DQ (ONNX opset 21), the range of the 8-bit quantizer kept.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import onnx
from onnx import TensorProto
from onnx.helper import tensor_dtype_to_np_dtype

from .. import ir
from ..errors import UserError
from ..ir.quant import broadcast_param, dequantize_values, integer_range, spec_of_qdq

WeightForm = Literal["int4", "ternary", "binary"]
LAYERS = ("Conv", "Gemm", "MatMul", "ConvTranspose")
_NARROW = {TensorProto.UINT8: TensorProto.UINT4, TensorProto.INT8: TensorProto.INT4}


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


def _lower_activation(quantize: ir.Node, dequantize: ir.Node) -> None:
    spec = spec_of_qdq(quantize)
    narrow = _NARROW.get(spec.dtype)
    if narrow is None or spec.axis is not None:
        return
    (lo, hi), (nlo, nhi) = integer_range(spec.dtype), integer_range(narrow)
    ratio = (hi - lo) / (nhi - nlo)
    scale = (np.asarray(spec.scale, np.float64) * ratio).astype(np.float32)
    zero = np.clip(np.rint(nlo + (np.asarray(spec.zero_point, np.float64) - lo) / ratio), nlo, nhi)
    zero = zero.astype(tensor_dtype_to_np_dtype(narrow))
    for node in (quantize, dequantize):
        node.inputs[1].const = scale.reshape(np.shape(node.inputs[1].const))
        node.inputs[2].const = zero.reshape(np.shape(node.inputs[2].const))
        node.inputs[2].dtype = narrow
    quantize.outputs[0].dtype = narrow


def _upgrade_opset(model: ir.Model, version: int) -> None:
    """Raise the default opset number to ``version`` when no op of the model changed meaning in between."""
    current = model.opset
    if current >= version:
        return
    changed = sorted({n.op_type for n in model.graph if not n.domain and n.op_type not in ("QuantizeLinear",
                                                                                           "DequantizeLinear")
                      and onnx.defs.get_schema(n.op_type, version).since_version > current})
    if changed:
        raise UserError(f"4-bit activations need opset {version}; the model's opset {current} would have to be "
                        f"converted for {', '.join(changed)} (run qcompiler optimize with a newer opset first)")
    model.opset_imports[""] = version


def lower_precision(model: ir.Model, *, weights: WeightForm | None = None, activation_bits: int | None = None) -> dict:
    """Lower ``model`` in place (see the module docstring); returns what was lowered."""
    layers = _weight_layers(model)
    inner = layers[1:-1]
    if weights is not None:
        if weights not in ("int4", "ternary", "binary"):
            raise UserError(f"weights must be int4, ternary or binary, not {weights!r}")
        for _, dq in inner:
            _lower_weight(dq, weights)
    lowered_activations = 0
    if activation_bits is not None:
        if activation_bits != 4:
            raise UserError(f"activation bits: only 4 is supported, not {activation_bits}")
        kept = set()
        if layers:
            first_input = layers[0][0].inputs[0].producer()  # the DequantizeLinear of the first layer's input
            if first_input is not None and first_input.op_type == "DequantizeLinear":
                quantize = first_input.inputs[0].producer()
                if quantize is not None and quantize.op_type == "QuantizeLinear":
                    kept.add(quantize.inputs[0].name)
            kept.add(layers[-1][0].outputs[0].name)
        _upgrade_opset(model, 21)
        for node in list(model.graph):
            if node.op_type != "QuantizeLinear" or node.inputs[0].name in kept:
                continue
            readers = node.outputs[0].consumers()
            if len(readers) == 1 and readers[0].op_type == "DequantizeLinear" and node.inputs[1].const is not None:
                _lower_activation(node, readers[0])
                lowered_activations += 1
    return {"weights": weights, "weight_layers_lowered": len(inner) if weights else 0,
            "activation_bits": activation_bits, "activations_lowered": lowered_activations}

