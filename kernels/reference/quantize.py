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

from ..registry import register

INTEGER_RANGES = {
    TensorProto.UINT8: (0, 255),
    TensorProto.INT8: (-128, 127),
    TensorProto.UINT16: (0, 65535),
    TensorProto.INT16: (-32768, 32767),
    TensorProto.UINT4: (0, 15),
    TensorProto.INT4: (-8, 7),
    TensorProto.UINT2: (0, 3),
    TensorProto.INT2: (-2, 1),
}


def integer_range(dtype) -> tuple[int, int]:
    """``(lo, hi)`` of a quantized integer numpy dtype; ``NotImplementedError`` for other types."""
    tensor_type = np_dtype_to_tensor_dtype(np.dtype(dtype))
    if tensor_type not in INTEGER_RANGES:
        raise NotImplementedError(f"quantized type {np.dtype(dtype)} is not an integer type we support")
    return INTEGER_RANGES[tensor_type]


def saturate_cast(y: np.ndarray, dtype) -> np.ndarray:
    """Clamp the integral float array ``y`` to ``dtype``'s range and cast. NaN becomes the minimum.

    NaN -> minimum is what ``onnx.reference`` (rint(NaN) -> INT_MIN, then clip) and MLAS (``maxps``
    returns its second operand, the lower bound, for NaN) both do.
    """
    lo, hi = integer_range(dtype)
    return np.minimum(np.where(y >= lo, y, lo), hi).astype(dtype)


def requantize(acc: np.ndarray, multiplier, zero_point, dtype) -> np.ndarray:
    """``y = saturate(round_half_even(float32(acc) * multiplier) + zero_point)``.

    ``acc`` is the int32 accumulator, ``multiplier`` (``x_scale * w_scale / y_scale``) and
    ``zero_point`` broadcast against it. The product is taken in float32, as MLAS's
    ``MlasRequantizeOutput`` does (int32 -> float32 conversion, float32 multiply, round to nearest
    even); the zero point is then added exactly and the result saturated to ``dtype``.
    """
    with np.errstate(over="ignore"):  # overflow to +-inf saturates below
        scaled = np.rint(acc.astype(np.float32) * np.asarray(multiplier, np.float32))
    return saturate_cast(scaled.astype(np.float64) + np.asarray(zero_point, np.float64), dtype)


def broadcast_param(param: np.ndarray, shape: tuple[int, ...], axis: int, block_size: int) -> np.ndarray:
    """Reshape a scale or zero point so it broadcasts against an input of ``shape``.

    Per-tensor: ``param`` has one element. Per-axis: 1-D of length ``shape[axis]``. Blocked
    (``block_size > 0``): same rank as the input, ``ceil(shape[axis] / block_size)`` along ``axis``;
    each entry is repeated ``block_size`` times and the last block may be partial.
    """
    param = np.asarray(param)
    if param.size == 1 and param.ndim <= 1:
        return param.reshape(())
    axis = axis + len(shape) if axis < 0 else axis
    if not block_size:
        if param.ndim != 1 or param.shape[0] != shape[axis]:
            raise ValueError(f"per-axis parameter of shape {param.shape} does not fit input {shape} on axis {axis}")
        return param.reshape([-1 if d == axis else 1 for d in range(len(shape))])
    if block_size < 0:
        raise ValueError(f"block_size must be positive, got {block_size}")
    blocks = -(-shape[axis] // block_size)
    expected = shape[:axis] + (blocks,) + shape[axis + 1:]
    if param.shape != expected:
        raise ValueError(f"blocked parameter of shape {param.shape} does not fit input {shape}: expected {expected}")
    return np.repeat(param, block_size, axis=axis).take(range(shape[axis]), axis=axis)


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
    with np.errstate(over="ignore"):  # overflow to +-inf saturates below
        y = np.rint(x.astype(compute) / scale).astype(np.float64)
    if y_zero_point is not None:
        y += broadcast_param(y_zero_point, x.shape, axis, block_size).astype(np.float64)
    return saturate_cast(y, dtype)


@register("DequantizeLinear", since=10)
def DequantizeLinear(x, x_scale, x_zero_point=None, *, axis=1, block_size=0, output_dtype=0):
    """``y = (x - x_zero_point) * x_scale``.

    The difference is exact (int64), converted to the output type (``output_dtype``, else
    ``x_scale``'s type) and multiplied by the scale in that type. int32 input (bias) has no zero point.
    """
    if x.dtype != np.int32:
        integer_range(x.dtype)
    out = np.dtype(tensor_dtype_to_np_dtype(output_dtype)) if output_dtype else np.asarray(x_scale).dtype
    diff = x.astype(np.int64)
    if x_zero_point is not None:
        diff -= broadcast_param(x_zero_point, x.shape, axis, block_size).astype(np.int64)
    return diff.astype(out) * broadcast_param(x_scale, x.shape, axis, block_size).astype(out)
