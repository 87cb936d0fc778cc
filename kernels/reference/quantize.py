"""QuantizeLinear, DequantizeLinear and ``requantize`` (numpy reference).

Integer quantized types only: uint8, int8, uint16, int16, and the sub-byte uint4, int4, uint2, int2
(opsets 21 and 25). Sub-byte values use the numpy dtypes onnx itself uses for them
(``onnx.helper.tensor_dtype_to_np_dtype``, i.e. ml_dtypes ``int4``...), one element per byte, so an
array's dtype always tells its ONNX type. float8/float4 quantization is refused
(``NotImplementedError``): this compiler targets integer arithmetic.
"""

from __future__ import annotations

import numpy as np
from onnx import TensorProto
from onnx.helper import np_dtype_to_tensor_dtype, tensor_dtype_to_np_dtype

from qcompiler.ir.quant import (broadcast_param, dequantize_values, dynamic_spec, integer_range, quantize_values,
                                saturate)

from ..registry import register

__all__ = ["DequantizeLinear", "DynamicQuantizeLinear", "QuantizeLinear", "broadcast_param", "integer_range",
           "quantize_output_dtype",
           "requantize", "saturate"]


def requantize(acc: np.ndarray, multiplier, zero_point, dtype) -> np.ndarray:
    """``y = saturate(round_half_even(float32(acc) * multiplier) + zero_point)``.

    ``acc`` is the int32 accumulator, ``multiplier`` (``x_scale * w_scale / y_scale``) and
    ``zero_point`` broadcast against it. The product is taken in float32, as MLAS's
    ``MlasRequantizeOutput`` does (int32 -> float32 conversion, float32 multiply, round to nearest
    even); the zero point is then added exactly and the result saturated to ``dtype``.
    """
    with np.errstate(over="ignore"):  # overflow to +-inf saturates below
        scaled = np.rint(acc.astype(np.float32) * np.asarray(multiplier, np.float32))
    return saturate(scaled.astype(np.float64) + np.asarray(zero_point, np.float64), dtype)


def quantize_output_dtype(y_zero_point, output_dtype: int) -> np.dtype:
    """The output dtype: ``y_zero_point``'s type, else ``output_dtype``, else uint8."""
    if y_zero_point is not None:
        dtype = np.asarray(y_zero_point).dtype
        if output_dtype and np_dtype_to_tensor_dtype(dtype) != output_dtype:
            raise ValueError(f"output_dtype {output_dtype} disagrees with y_zero_point of type {dtype}")
        return dtype
    return np.dtype(tensor_dtype_to_np_dtype(output_dtype or TensorProto.UINT8))


@register("QuantizeLinear", since=10)
def QuantizeLinear(x, y_scale, y_zero_point=None, *, axis=1, block_size=0, output_dtype=0,
                   precision=0, saturate=1):
    """``y = saturate(round_half_even(x / y_scale) + y_zero_point)``.

    The division is done in ``precision``'s type if given, else in ``y_scale``'s type. ``saturate``
    only concerns float8 outputs, which are refused.
    """
    dtype = quantize_output_dtype(y_zero_point, output_dtype)
    integer_range(dtype)  # refuse float8/float4 before computing anything
    compute = np.dtype(tensor_dtype_to_np_dtype(precision)) if precision else np.asarray(y_scale).dtype
    scale = broadcast_param(y_scale, x.shape, axis, block_size).astype(compute)
    zero_point = 0 if y_zero_point is None else broadcast_param(y_zero_point, x.shape, axis, block_size)
    return quantize_values(x, scale, zero_point, dtype)


@register("DequantizeLinear", since=10)
def DequantizeLinear(x, x_scale, x_zero_point=None, *, axis=1, block_size=0, output_dtype=0):
    """``y = (x - x_zero_point) * x_scale``.

    The difference is exact (int64), converted to the output type (``output_dtype``, else
    ``x_scale``'s type) and multiplied by the scale in that type. int32 input (bias) has no zero point.
    """
    if x.dtype != np.int32:
        integer_range(x.dtype)
    out = np.dtype(tensor_dtype_to_np_dtype(output_dtype)) if output_dtype else np.asarray(x_scale).dtype
    zero_point = None if x_zero_point is None else broadcast_param(x_zero_point, x.shape, axis, block_size)
    return dequantize_values(x, broadcast_param(x_scale, x.shape, axis, block_size), zero_point, out)


@register("DynamicQuantizeLinear", since=11)
def DynamicQuantizeLinear(x):
    """``(y, y_scale, y_zero_point)``: uint8 per tensor, the parameters from ``x``'s own range
    (:func:`qcompiler.ir.quant.dynamic_spec`, onnxruntime's float32 arithmetic), ``y`` as QuantizeLinear."""
    spec = dynamic_spec(x)
    y = quantize_values(np.asarray(x, np.float32), spec.scale, spec.zero_point, np.uint8)
    return y, spec.scale, spec.zero_point


register("QuantizeLinear", domain="com.microsoft", since=1)(QuantizeLinear)  # 16-bit Q/DQ below opset 21
register("DequantizeLinear", domain="com.microsoft", since=1)(DequantizeLinear)
