"""Write a trained :class:`~qcompiler.qat.graph.QuantizedModel` back as the QDQ model it came from: the
same nodes, new integer weight initializers (in their stored type: int8 holding 4-bit, ternary or binary
values, int4, ...), new weight, activation and bias scales. Only initializer values change, so onnxruntime
runs the result exactly as fast as the model fine-tuning started from.

The integers are computed with :mod:`qcompiler.ir.quant` (round half to even, saturation, the bias's
float64 ``s_x · s_w``), which is what the fake quantizers compute in the forward pass.
"""

from __future__ import annotations

import numpy as np
import torch

from .. import ir
from ..ir.quant import QuantSpec, quantize_bias, quantize_values, saturate
from .graph import QuantizedModel, _broadcast_np


def _numpy(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().cpu().numpy()


def _set(model: ir.Model, name: str, array: np.ndarray) -> None:
    value = model.find_value(name)
    if value is None or value.const is None:
        raise RuntimeError(f"initializer {name!r} not found in the model being written")
    value.const = array


def trained_model(module: QuantizedModel) -> ir.Model:
    """A copy of the module's IR model with the trained integers and scales in its initializers."""
    model = module.model.clone()
    for key, q in module.weights.items():
        weight, scale = _numpy(module.parameters_[f"weight_{key}"]), _numpy(module.weight_scale(key)).astype(np.float32)
        spec = QuantSpec(0, scale, q.zero_point, axis=q.axis, block_size=q.block_size)  # for broadcasting only
        if q.binary:
            integers = np.where(weight >= 0, 1, -1)
        else:
            integers = quantize_values(weight, _broadcast_np(scale, weight.shape, spec),
                                       _broadcast_np(q.zero_point, weight.shape, spec), q.storage)
            integers = np.clip(integers.astype(np.int64), q.qmin, q.qmax)  # the trained range (4 bits in int8)
        _set(model, q.integers, saturate(integers.astype(np.float64), q.storage))
        _set(model, q.scale, scale.reshape(np.shape(model.find_value(q.scale).const)))
    for key, q in module.activations.items():
        scale = np.asarray(_numpy(module.activation_scale(key)), np.float32).reshape(())
        for name in q.scales:
            _set(model, name, scale.reshape(np.shape(model.find_value(name).const)).astype(np.float32))
        zero = float(np.asarray(q.zero_point).reshape(()))
        for low, high, qmin, qmax in q.clips:  # the narrowed range's bounds follow the step
            _set(model, low, np.asarray((qmin - zero) * scale, np.float32))
            _set(model, high, np.asarray((qmax - zero) * scale, np.float32))
    for key, q in module.biases.items():
        x_spec = QuantSpec(0, np.asarray(_numpy(module.activation_scale(q.activation)), np.float32), np.zeros((), np.int8))
        w_spec = QuantSpec(0, _numpy(module.weight_scale(q.weight)).astype(np.float32), np.zeros((), np.int8))
        integers, scale = quantize_bias(_numpy(module.parameters_[f"bias_{key}"]), x_spec, w_spec)
        _set(model, q.integers, integers.reshape(np.shape(model.find_value(q.integers).const)))
        _set(model, q.scale, scale.reshape(np.shape(model.find_value(q.scale).const)))
    return model
