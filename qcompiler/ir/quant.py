"""QuantSpec: the quantization decision attached to a value.

Affine quantization (Jacob et al. 2018, "Quantization and Training of Neural Networks for Efficient
Integer-Arithmetic-Only Inference"): ``q = saturate(round_half_even(x / scale) + zero_point)`` and
``x ≈ (q - zero_point) * scale``. A spec is per-tensor (``axis`` None), per-channel (``axis`` set, one
scale per slice along it) or blocked (``axis`` and ``block_size``: one scale per block of
``block_size`` elements along ``axis``, as in ONNX opset 21).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from onnx import TensorProto

_RANGES = {
    TensorProto.INT8: (-128, 127),
    TensorProto.UINT8: (0, 255),
    TensorProto.INT16: (-32768, 32767),
    TensorProto.UINT16: (0, 65535),
    TensorProto.INT4: (-8, 7),
    TensorProto.UINT4: (0, 15),
}


_STORAGE = {
    TensorProto.INT8: np.int8,
    TensorProto.UINT8: np.uint8,
    TensorProto.INT16: np.int16,
    TensorProto.UINT16: np.uint16,
    TensorProto.INT4: np.int8,
    TensorProto.UINT4: np.uint8,
}


def storage_dtype(dtype: int) -> type[np.integer]:
    """The numpy type that holds values of a quantized ONNX element type (int4 in int8)."""
    integer_range(dtype)
    return _STORAGE[dtype]


def integer_range(dtype: int) -> tuple[int, int]:
    """(qmin, qmax) of a quantized ONNX element type."""
    try:
        return _RANGES[dtype]
    except KeyError:
        raise ValueError(f"not a quantized integer type: {TensorProto.DataType.Name(dtype)}") from None


def channel_shape(ndim: int, axis: int | None) -> list[int]:
    """The shape that broadcasts a per-channel vector (scale, zero point) along ``axis`` of an
    ``ndim``-dimensional tensor: ``-1`` at ``axis``, 1 elsewhere (all 1 when ``axis`` is None)."""
    shape = [1] * ndim
    if axis is not None:
        shape[axis] = -1
    return shape


@dataclass(frozen=True, eq=False)
class QuantSpec:
    """How one value is quantized.

    Attributes:
        dtype: the quantized ONNX element type (INT8, UINT8, INT16, UINT16, INT4, UINT4).
        scale: float32 array, shape () per-tensor or (C,) per-channel / (C, blocks) blocked.
        zero_point: integer array of the same shape as ``scale``.
        axis: channel axis, or None for per-tensor.
        block_size: elements per block along ``axis`` for blocked quantization, else None.
    """

    dtype: int
    scale: np.ndarray
    zero_point: np.ndarray
    axis: int | None = None
    block_size: int | None = None

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, QuantSpec):
            return NotImplemented
        return (
            (self.dtype, self.axis, self.block_size) == (other.dtype, other.axis, other.block_size)
            and np.array_equal(self.scale, other.scale)
            and np.array_equal(self.zero_point, other.zero_point)
        )

    __hash__ = None  # mutable-looking arrays inside: not hashable

    @property
    def qmin(self) -> int:
        return integer_range(self.dtype)[0]

    @property
    def qmax(self) -> int:
        return integer_range(self.dtype)[1]

    @property
    def per_channel(self) -> bool:
        return self.axis is not None and self.block_size is None

    @property
    def symmetric(self) -> bool:
        """True when zero maps to the middle of the integer range (0 for signed types)."""
        qmin, qmax = integer_range(self.dtype)
        middle = 0 if qmin < 0 else (qmax + 1) // 2
        return bool(np.all(self.zero_point == middle))

    @classmethod
    def from_range(
        cls,
        lo: float | np.ndarray,
        hi: float | np.ndarray,
        dtype: int,
        *,
        symmetric: bool,
        axis: int | None = None,
        reduce_range: bool = False,
    ) -> QuantSpec:
        """The spec that maps [lo, hi] onto the integer range of ``dtype``.

        The range is first widened to include 0 (so zero is exactly representable, as padding and
        ReLU need). Symmetric: ``scale = max(|lo|, |hi|) / ((qmax - qmin) // 2)`` (127 for int8, so
        the values use the restricted range [-127, 127]) and the zero point is the middle of the
        range. Asymmetric: ``scale = (hi - lo) / (qmax - qmin)`` and
        ``zero_point = round(qmin - lo / scale)``. ``reduce_range`` uses one bit less (7-bit values in
        an 8-bit type), the setting that avoids int16 saturation on x86 without VNNI.
        """
        qmin, qmax = integer_range(dtype)
        if reduce_range:
            qmin, qmax = (qmin // 2, qmax // 2) if qmin < 0 else (qmin, qmax // 2)
        lo = np.minimum(np.asarray(lo, dtype=np.float64), 0.0)
        hi = np.maximum(np.asarray(hi, dtype=np.float64), 0.0)
        if symmetric:
            half = (qmax - qmin) // 2  # 127 for int8: the restricted range [-127, 127]
            scale = np.maximum(np.abs(lo), np.abs(hi)) / half
            zero_point = np.full(scale.shape, 0 if qmin < 0 else (qmin + qmax + 1) // 2)
        else:
            scale = (hi - lo) / float(qmax - qmin)
            safe = np.where(scale > 0, scale, 1.0)
            zero_point = np.clip(np.round(qmin - lo / safe), qmin, qmax)
        scale = np.where(scale > 0, scale, 1.0).astype(np.float32)
        return cls(dtype, scale, zero_point.astype(storage_dtype(dtype)), axis=axis)
