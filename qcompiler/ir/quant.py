"""Quantization schemes and the one home of quantization math.

Affine quantization (Jacob et al. 2018, "Quantization and Training of Neural Networks for Efficient
Integer-Arithmetic-Only Inference"): ``q = saturate(round_half_even(x / scale) + zero_point)`` and
``x ≈ (q - zero_point) * scale``.

Two types describe a decision:

* :class:`Scheme` says *how* a kind of tensor is quantized before any range is known: the integer type,
  symmetric or not, reduced range, the granularity (per tensor, per axis, per block of ``block_size``
  elements along the axis, as ONNX opset 21's blocked Q/DQ) and when the scale is known (``static``:
  from calibration or from the constant weight; ``dynamic``: computed at run time from the tensor
  itself, as ``DynamicQuantizeLinear`` does).
* :class:`QuantSpec` is the concrete decision for one value: type, scale, zero point, axis, block size.
  A weight-only scheme is a plan that gives weights a spec and leaves activations float.

Everything that turns numbers into integers and back is here and nowhere else: :func:`integer_range`
and :func:`storage_dtype` (one table, one int4 storage convention: the ml_dtypes ``int4``/``uint4`` that
onnx itself uses, one element per byte), :func:`broadcast_param` (ONNX's per-axis and blocked layouts),
:func:`quantize_values` / :func:`dequantize_values` (the ONNX operators' arithmetic, shared with the
numpy reference kernels), :func:`quantize`, :func:`dequantize`, :func:`fake_quantize`, the int32 bias of
a quantized layer (:func:`quantize_bias`, :func:`quantize_biases`), the Q/DQ form of a spec
(:func:`qdq_attributes`, :func:`min_opset`), and packed sub-byte storage (:func:`integer_type`,
:func:`bit_width`, :func:`unsigned_offset`, :func:`pack_bits` / :func:`unpack_bits`: onnxruntime's
MatMulNBits layout).
"""

from __future__ import annotations

from dataclasses import dataclass
from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal

import numpy as np
from onnx import TensorProto
from onnx.helper import np_dtype_to_tensor_dtype, tensor_dtype_to_np_dtype

if TYPE_CHECKING:
    from ._core import Node

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
"""(qmin, qmax) of every integer element type Q/DQ can produce (opsets 10-25)."""

INT32_RANGE = (-(2**31), 2**31 - 1)


class NotAnIntegerType(ValueError, NotImplementedError):
    """A quantized type that is not an integer type of :data:`INTEGER_RANGES` (float, float8, float4).

    A ValueError for the compiler's specs, and a NotImplementedError for the kernels, which refuse
    float8/float4 by design: this compiler targets integer arithmetic.
    """


def _tensor_type(dtype: int | np.dtype | type) -> int:
    return dtype if isinstance(dtype, int) else np_dtype_to_tensor_dtype(np.dtype(dtype))


def integer_range(dtype: int | np.dtype | type) -> tuple[int, int]:
    """(qmin, qmax) of a quantized element type, given as an ONNX type or a numpy dtype."""
    tensor_type = _tensor_type(dtype)
    try:
        return INTEGER_RANGES[tensor_type]
    except KeyError:
        raise NotAnIntegerType(f"not a quantized integer type: {TensorProto.DataType.Name(tensor_type)}") from None


def storage_dtype(dtype: int) -> np.dtype:
    """The numpy dtype that holds values of a quantized ONNX type (ml_dtypes int4/uint4/int2/uint2 for
    the sub-byte types, one element per byte: what onnx's own numpy helpers use)."""
    integer_range(dtype)
    return np.dtype(tensor_dtype_to_np_dtype(dtype))


INTEGER_TYPES = {(2, True): TensorProto.INT2, (2, False): TensorProto.UINT2, (4, True): TensorProto.INT4,
                 (4, False): TensorProto.UINT4, (8, True): TensorProto.INT8, (8, False): TensorProto.UINT8,
                 (16, True): TensorProto.INT16, (16, False): TensorProto.UINT16}
"""(bits, signed) -> the ONNX integer type."""

SIXTEEN_BIT = (TensorProto.INT16, TensorProto.UINT16)
"""The 16-bit integer types (A16: activations that 8 bits cannot keep)."""


def integer_type(bits: int, signed: bool) -> int:
    """The ONNX integer type of ``bits`` bits (2, 4, 8 or 16), signed or not."""
    try:
        return INTEGER_TYPES[bits, signed]
    except KeyError:
        raise NotAnIntegerType(f"no {'signed' if signed else 'unsigned'} ONNX integer type of {bits} bits") from None


def bit_width(dtype: int) -> int:
    """The number of bits of an integer type of :data:`INTEGER_TYPES`."""
    qmin, qmax = integer_range(dtype)
    return (qmax - qmin).bit_length()


def unsigned_offset(dtype: int) -> int:
    """What maps ``dtype``'s values onto the unsigned type of the same width: ``-qmin`` (8 for int4, 0 for
    uint4). ``q + offset`` with ``zero_point + offset`` is the same quantization in the unsigned type."""
    return -integer_range(dtype)[0]


def pack_bits(values: np.ndarray, bits: int) -> np.ndarray:
    """Pack unsigned ``bits``-bit integers (2, 4 or 8) along the last axis into uint8, ``8 // bits`` values
    per byte, the first one in the lowest bits; the last axis is zero-padded to whole bytes. This is the
    layout of onnxruntime's ``MatMulNBits`` weights and zero points (and of ONNX's packed int4 tensors)."""
    if bits not in (2, 4, 8):
        raise ValueError(f"only 2, 4 and 8-bit values pack into whole bytes, not {bits}")
    per_byte = 8 // bits
    values = np.asarray(values).astype(np.uint8)
    pad = -values.shape[-1] % per_byte
    if pad:
        values = np.concatenate([values, np.zeros(values.shape[:-1] + (pad,), np.uint8)], axis=-1)
    grouped = values.reshape(values.shape[:-1] + (-1, per_byte))
    packed = np.zeros(grouped.shape[:-1], np.uint8)
    for j in range(per_byte):
        packed |= (grouped[..., j] & ((1 << bits) - 1)) << np.uint8(bits * j)
    return packed


def unpack_bits(packed: np.ndarray, bits: int, count: int) -> np.ndarray:
    """The first ``count`` unsigned values along the last axis of :func:`pack_bits`' bytes, as uint8."""
    per_byte = 8 // bits
    shifts = (np.arange(per_byte, dtype=np.uint8) * bits).astype(np.uint8)
    values = (np.asarray(packed, np.uint8)[..., None] >> shifts) & np.uint8((1 << bits) - 1)
    return values.reshape(values.shape[:-2] + (-1,))[..., :count]


def channel_shape(ndim: int, axis: int | None) -> list[int]:
    """The shape that broadcasts a per-channel vector (scale, zero point) along ``axis`` of an
    ``ndim``-dimensional tensor: ``-1`` at ``axis``, 1 elsewhere (all 1 when ``axis`` is None)."""
    shape = [1] * ndim
    if axis is not None:
        shape[axis] = -1
    return shape


def broadcast_param(param: np.ndarray, shape: tuple[int, ...], axis: int | None, block_size: int | None) -> np.ndarray:
    """Reshape a scale or zero point so that it broadcasts against a tensor of ``shape``.

    Per tensor: ``param`` has one element. Per axis: 1-D of length ``shape[axis]``. Blocked
    (``block_size > 0``): the tensor's rank, ``ceil(shape[axis] / block_size)`` along ``axis``; each entry
    is repeated ``block_size`` times and the last block may be partial (ONNX opset 21).
    """
    param = np.asarray(param)
    if param.size == 1 and param.ndim <= 1:
        return param.reshape(())
    if axis is None:
        raise ValueError(f"parameter of shape {param.shape} needs an axis")
    axis = axis + len(shape) if axis < 0 else axis
    if not block_size:
        if param.ndim != 1 or param.shape[0] != shape[axis]:
            raise ValueError(f"per-axis parameter of shape {param.shape} does not fit input {shape} on axis {axis}")
        return param.reshape(channel_shape(len(shape), axis))
    if block_size < 0:
        raise ValueError(f"block_size must be positive, got {block_size}")
    blocks = -(-shape[axis] // block_size)
    expected = shape[:axis] + (blocks,) + shape[axis + 1:]
    if param.shape != expected:
        raise ValueError(f"blocked parameter of shape {param.shape} does not fit input {shape}: expected {expected}")
    return np.repeat(param, block_size, axis=axis).take(range(shape[axis]), axis=axis)


def saturate(y: np.ndarray, dtype: int | np.dtype | type) -> np.ndarray:
    """Clamp the integral float array ``y`` to ``dtype``'s range and cast. NaN becomes the minimum.

    NaN -> minimum is what ``onnx.reference`` (rint(NaN) -> INT_MIN, then clip) and MLAS (``maxps``
    returns its second operand, the lower bound, for NaN) both do.
    """
    numpy_type = storage_dtype(dtype) if isinstance(dtype, int) else np.dtype(dtype)
    lo, hi = INT32_RANGE if numpy_type == np.int32 else integer_range(numpy_type)
    return np.minimum(np.where(y >= lo, y, lo), hi).astype(numpy_type)


def quantize_values(x: np.ndarray, scale: np.ndarray, zero_point: np.ndarray | int, dtype) -> np.ndarray:
    """ONNX QuantizeLinear on broadcastable arrays: ``saturate(round_half_even(x / scale) + zero_point)``.

    The division is done in ``scale``'s float type (float32 for every spec of this compiler), the zero
    point is added exactly, and the result is saturated to ``dtype`` (an ONNX type or numpy dtype). A float
    zero point (weight-only, MatMulNBits) is added before the rounding: ``round_half_even(x / scale + z)``,
    the nearest level of the grid ``(q - z) · scale``.
    """
    scale, zero_point = np.asarray(scale), np.asarray(zero_point)
    with np.errstate(over="ignore", divide="ignore", invalid="ignore"):  # +-inf and NaN saturate below
        if zero_point.dtype.kind == "f":
            return saturate(np.rint(x.astype(scale.dtype) / scale + zero_point.astype(scale.dtype)), dtype)
        y = np.rint(x.astype(scale.dtype) / scale).astype(np.float64)
    return saturate(y + zero_point.astype(np.float64), dtype)


def dequantize_values(q: np.ndarray, scale: np.ndarray, zero_point: np.ndarray | int | None,
                      out_dtype: np.dtype | type | None = None) -> np.ndarray:
    """ONNX DequantizeLinear on broadcastable arrays: ``(q - zero_point) * scale``.

    The difference is exact (int64), then converted to the output type (``out_dtype``, else ``scale``'s
    type) and multiplied by the scale in that type; with a float zero point it is taken in the output type.
    """
    out = np.dtype(out_dtype) if out_dtype is not None else np.asarray(scale).dtype
    if zero_point is not None and np.asarray(zero_point).dtype.kind == "f":
        return (q.astype(out) - np.asarray(zero_point).astype(out)) * np.asarray(scale).astype(out)
    diff = q.astype(np.int64)
    if zero_point is not None:
        diff = diff - np.asarray(zero_point).astype(np.int64)
    return diff.astype(out) * np.asarray(scale).astype(out)


Granularity = Literal["tensor", "axis", "block"]


@dataclass(frozen=True, eq=False)
class QuantSpec:
    """How one value is quantized.

    Attributes:
        dtype: the quantized ONNX element type (a key of :data:`INTEGER_RANGES`).
        scale: float32 array: shape () per tensor, (C,) per axis, or the value's rank with
            ``ceil(n / block_size)`` along ``axis`` when blocked (ONNX opset 21's layout).
        zero_point: integer array of the same shape as ``scale``, in :func:`storage_dtype`; or float32, a
            *float zero point* (weight-only, written only as MatMulNBits, whose grid is ``(q - z) · scale``).
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
            and self.float_zero_point == other.float_zero_point
            and np.array_equal(np.asarray(self.zero_point, np.float64), np.asarray(other.zero_point, np.float64))
        )

    __hash__ = None  # mutable-looking arrays inside: not hashable

    @property
    def qmin(self) -> int:
        return integer_range(self.dtype)[0]

    @property
    def qmax(self) -> int:
        return integer_range(self.dtype)[1]

    @property
    def granularity(self) -> Granularity:
        if self.axis is None:
            return "tensor"
        return "axis" if self.block_size is None else "block"

    @property
    def float_zero_point(self) -> bool:
        """The zero point is a float (see the class docstring), not an integer of the type."""
        return np.asarray(self.zero_point).dtype.kind == "f"

    @property
    def per_channel(self) -> bool:
        return self.granularity == "axis"

    @property
    def symmetric(self) -> bool:
        """True when zero maps to the middle of the integer range (0 for signed types)."""
        return not self.float_zero_point and bool(np.all(np.asarray(self.zero_point, np.int64) == _middle(self.dtype)))

    def float_range(self) -> tuple[np.ndarray, np.ndarray]:
        """(lowest, highest) float value the spec represents: ``(qmin - zp) · scale``, ``(qmax - zp) · scale``."""
        zero_point = np.asarray(self.zero_point, np.float64)
        ends = ((self.qmin - zero_point) * self.scale, (self.qmax - zero_point) * self.scale)
        return np.minimum(*ends), np.maximum(*ends)  # a negative scale (full_range) swaps them

    def broadcast(self, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
        """(scale, zero point) shaped to broadcast against a tensor of ``shape``."""
        return (broadcast_param(self.scale, shape, self.axis, self.block_size),
                broadcast_param(self.zero_point, shape, self.axis, self.block_size))

    @classmethod
    def from_range(
        cls,
        lo: float | np.ndarray,
        hi: float | np.ndarray,
        dtype: int,
        *,
        symmetric: bool,
        axis: int | None = None,
        block_size: int | None = None,
        reduce_range: bool = False,
        full_range: bool = False,
        float_zero_point: bool = False,
    ) -> QuantSpec:
        """The spec that maps [lo, hi] onto the integer range of ``dtype``.

        ``lo`` and ``hi`` are scalars (per tensor), vectors along ``axis`` (per axis) or arrays in the
        blocked layout. The range is first widened to include 0 (so zero is exactly representable, as
        padding and ReLU need). Symmetric: ``scale = max(|lo|, |hi|) / ((qmax - qmin) // 2)`` (127 for
        int8, so the values use the restricted range [-127, 127]) and the zero point is the middle of
        the range. Asymmetric: ``scale = (hi - lo) / (qmax - qmin)`` and
        ``zero_point = round(qmin - lo / scale)``. ``reduce_range`` uses one bit less (7-bit values in
        an 8-bit type), the setting that avoids int16 saturation on x86 without VNNI.

        ``full_range`` (symmetric only) uses every level of the type instead: the endpoint of larger
        magnitude, with its sign, maps exactly onto ``qmin`` (``scale = extreme / (qmin - middle)``,
        negative when that endpoint is positive), and the other side, at most as large, reaches ``qmax``
        (one step short of ``-qmin``) before it saturates. For int4 that is 16 levels instead of 15, a step
        of ``max|w| / 8`` instead of ``/ 7`` — the grid onnxruntime's blockwise MatMulNBits quantizer uses.

        ``float_zero_point`` (asymmetric only) keeps ``zero_point = qmin - lo / scale`` unrounded, in float32:
        ``lo`` and ``hi`` then fall exactly on ``qmin`` and ``qmax``.
        """
        if float_zero_point and symmetric:
            raise ValueError("a float zero point is asymmetric")
        qmin, qmax = integer_range(dtype)
        if reduce_range:
            qmin, qmax = (qmin // 2, qmax // 2) if qmin < 0 else (qmin, qmax // 2)
        lo = np.minimum(np.asarray(lo, dtype=np.float64), 0.0)
        hi = np.maximum(np.asarray(hi, dtype=np.float64), 0.0)
        if symmetric and full_range:
            extreme = np.where(np.abs(lo) >= np.abs(hi), lo, hi)
            scale = extreme / float(qmin - _middle(dtype))
            zero_point = np.full(scale.shape, _middle(dtype))
        elif symmetric:
            half = (qmax - qmin) // 2  # 127 for int8: the restricted range [-127, 127]
            scale = np.maximum(np.abs(lo), np.abs(hi)) / half
            zero_point = np.full(scale.shape, _middle(dtype))
        else:
            scale = (hi - lo) / float(qmax - qmin)
            safe = np.where(scale > 0, scale, 1.0)
            zero_point = qmin - lo / safe
            if float_zero_point:
                return cls(dtype, safe.astype(np.float32), np.asarray(zero_point, np.float32), axis=axis,
                           block_size=block_size)
            zero_point = np.clip(np.round(zero_point), qmin, qmax)
        scale = np.where(scale != 0, scale, 1.0).astype(np.float32)
        # an array even per tensor (np.round of a 0-d array gives a scalar), as the class promises
        return cls(dtype, scale, np.asarray(zero_point).astype(storage_dtype(dtype)), axis=axis, block_size=block_size)


def dynamic_spec(x: np.ndarray) -> QuantSpec:
    """The per-tensor uint8 spec ONNX ``DynamicQuantizeLinear`` computes from ``x`` at run time, in float32
    as onnxruntime does (``GetQuantizationParameter``): the range widened to include 0, ``scale = (hi - lo)
    / 255`` (1 for an all-zero tensor), ``zero_point = round_half_even(clamp(0 - lo / scale, 0, 255))``."""
    x = np.asarray(x, np.float32)
    lo = np.minimum(x.min(initial=np.float32(0)), np.float32(0))
    hi = np.maximum(x.max(initial=np.float32(0)), np.float32(0))
    scale = np.float32(1) if hi == lo else np.float32((hi - lo) / np.float32(255))
    zero_point = np.rint(np.clip(np.float32(0) - lo / scale, np.float32(0), np.float32(255)))
    return QuantSpec(TensorProto.UINT8, np.asarray(scale, np.float32), np.asarray(zero_point, np.uint8))


def _middle(dtype: int) -> int:
    """The zero point of a symmetric spec: 0 for signed types, the middle of the range for unsigned."""
    qmin, qmax = integer_range(dtype)
    return 0 if qmin < 0 else (qmax + 1) // 2


def tensor_range(x: np.ndarray, axis: int | None, block_size: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(min, max) of ``x`` per tensor, per slice along ``axis``, or per block of ``block_size`` along
    ``axis`` (in the blocked layout of :class:`QuantSpec`)."""
    if axis is None:
        return np.asarray(x.min()), np.asarray(x.max())
    axis = axis % x.ndim
    if block_size is None:
        others = tuple(i for i in range(x.ndim) if i != axis)
        return x.min(axis=others), x.max(axis=others)
    blocks = -(-x.shape[axis] // block_size)
    pad = blocks * block_size - x.shape[axis]
    widths = [(0, pad if i == axis else 0) for i in range(x.ndim)]
    split = x.shape[:axis] + (blocks, block_size) + x.shape[axis + 1:]
    blocked = (np.pad(x, widths, mode="edge") if pad else x).reshape(split)  # a view unless a block is partial
    lo, hi = blocked.min(axis=axis + 1), blocked.max(axis=axis + 1)
    return lo, hi


@dataclass(frozen=True)
class Scheme:
    """How a kind of tensor is quantized, before its range is known (data, hashable).

    Attributes:
        dtype: the quantized ONNX element type.
        symmetric: zero point in the middle of the range (weights) or fitted to the range (activations).
        granularity: "tensor", "axis" (one scale per slice along the axis) or "block".
        block_size: elements per block along the axis, for "block".
        reduce_range: one bit less than the type holds (x86 without VNNI).
        dynamic: the scale is computed at run time from the tensor (no calibration).
        full_range: symmetric on every level of the type, the larger endpoint on ``qmin`` with a signed
            scale (see :meth:`QuantSpec.from_range`); weight-only blocks, whose kernels never saturate.
        float_zero_point: asymmetric with a float zero point per block or channel (see :class:`QuantSpec`):
            weight-only, for MatMulNBits.
    """

    dtype: int
    symmetric: bool
    granularity: Granularity = "tensor"
    block_size: int | None = None
    reduce_range: bool = False
    dynamic: bool = False
    full_range: bool = False
    float_zero_point: bool = False

    def __post_init__(self) -> None:
        integer_range(self.dtype)
        if self.float_zero_point and (self.symmetric or self.granularity == "tensor" or self.dynamic):
            raise ValueError("a float zero point is weight-only: asymmetric, per axis or per block")
        if self.full_range and (not self.symmetric or self.reduce_range):
            raise ValueError("full_range is a symmetric grid on the whole type: not asymmetric, not reduce_range")
        if (self.granularity == "block") != (self.block_size is not None):
            raise ValueError(f"block_size {self.block_size} does not fit granularity {self.granularity!r}")
        if self.block_size is not None and self.block_size < 2:
            raise ValueError(f"block_size must be at least 2, not {self.block_size}")
        if self.dynamic and (self.dtype, self.symmetric, self.granularity) != (TensorProto.UINT8, False, "tensor"):
            raise ValueError("a dynamic scheme is uint8, asymmetric, per tensor (ONNX DynamicQuantizeLinear)")

    def spec_from_range(self, lo, hi, axis: int | None = None) -> QuantSpec:
        """The spec of a tensor whose observed range is [lo, hi] (per the scheme's granularity: per-axis and
        blocked ranges need their ``axis``)."""
        if self.granularity != "tensor" and axis is None:
            raise ValueError(f"a {self.granularity} scheme needs the axis its ranges run along")
        return QuantSpec.from_range(lo, hi, self.dtype, symmetric=self.symmetric,
                                    axis=None if self.granularity == "tensor" else axis,
                                    block_size=self.block_size, reduce_range=self.reduce_range,
                                    full_range=self.full_range, float_zero_point=self.float_zero_point)

    def spec_for(self, x: np.ndarray, axis: int | None = None) -> QuantSpec:
        """The min/max spec of a constant tensor: per tensor, per slice along ``axis`` or per block."""
        used_axis = None if self.granularity == "tensor" else axis
        lo, hi = tensor_range(x, used_axis, self.block_size)
        return self.spec_from_range(lo, hi, used_axis)


QUANTIZE_ELEMENTS = 1 << 22
""":func:`quantize` works on slices of about this many elements along the first axis: its float64
temporaries stay small on a weight of 10^8 elements (an LLM's output projection)."""


def quantize(x: np.ndarray, spec: QuantSpec) -> np.ndarray:
    """The integers of ``x`` under ``spec`` (ONNX QuantizeLinear: round half to even, saturate), computed
    :data:`QUANTIZE_ELEMENTS` at a time along the first axis (whole blocks when the blocks run along it)."""
    x = np.asarray(x, np.float32)
    if x.ndim == 0 or x.size <= QUANTIZE_ELEMENTS:
        scale, zero_point = spec.broadcast(x.shape)
        return quantize_values(x, scale.astype(np.float32), zero_point, spec.dtype)
    axis = None if spec.axis is None else spec.axis % x.ndim
    step = max(1, QUANTIZE_ELEMENTS * x.shape[0] // x.size)
    if spec.block_size and axis == 0:
        step = max(1, step // spec.block_size) * spec.block_size
    out = np.empty(x.shape, storage_dtype(spec.dtype))
    for start in range(0, x.shape[0], step):
        rows = slice(start, start + step)
        part = x[rows]
        scale, zero_point = (broadcast_param(_first_axis_slice(p, rows, axis, spec.block_size), part.shape, axis,
                                             spec.block_size) for p in (spec.scale, spec.zero_point))
        out[rows] = quantize_values(part, scale.astype(np.float32), zero_point, spec.dtype)
    return out


def _first_axis_slice(param: np.ndarray, rows: slice, axis: int | None, block_size: int | None) -> np.ndarray:
    """The part of a scale or zero point that covers ``rows`` of the tensor's first axis."""
    param = np.asarray(param)
    if param.size == 1 and param.ndim <= 1 or (axis != 0 and not block_size):
        return param  # per tensor, or per channel along another axis
    if axis == 0 and block_size:
        return param[rows.start // block_size:-(-rows.stop // block_size)]
    return param[rows]  # per channel along the first axis, or blocks along another axis (params of the tensor's rank)


def dequantize(q: np.ndarray, spec: QuantSpec) -> np.ndarray:
    """The float32 values of the integers ``q`` under ``spec`` (ONNX DequantizeLinear)."""
    scale, zero_point = spec.broadcast(q.shape)
    return dequantize_values(q, scale.astype(np.float32), zero_point, np.float32)


def fake_quantize(x: np.ndarray, spec: QuantSpec) -> np.ndarray:
    """``DequantizeLinear(QuantizeLinear(x))`` with ``spec``, float32: what the deployed model computes."""
    return dequantize(quantize(x, spec), spec)


def quantize_bias(bias: np.ndarray, x_spec: QuantSpec, w_spec: QuantSpec) -> tuple[np.ndarray, np.ndarray]:
    """(int32 bias, its float32 scale per output channel) for a layer with a 1-D (or scalar) ``bias``, input
    ``x_spec`` and weight ``w_spec``: :func:`quantize_biases` of one layer."""
    return quantize_biases([(bias, x_spec, w_spec)])[0]


def quantize_biases(layers: Sequence[tuple[np.ndarray, QuantSpec, QuantSpec]]) -> list[tuple[np.ndarray, np.ndarray]]:
    """(int32 bias, its float32 scale per output channel) for each layer ``(bias, x_spec, w_spec)``, its bias
    1-D (or a scalar, then one channel).

    The bias scale is ``s_x · s_w`` per output channel in float64 (Jacob et al. 2018, eq. 7-9), a zero
    product (an all-zero weight channel) becoming 1; the integers are ``round_half_even(b / scale)``
    saturated to int32, zero point 0. Every layer's biases and scales are laid end to end so that a
    model's thousands of layers cost a few array operations instead of a dozen each; element by element
    the numbers are those of one layer at a time.
    """
    channels = [bias.shape[-1] if bias.ndim else 1 for bias, _, _ in layers]
    if not layers:
        return []

    def per_channel(params: list[np.ndarray]) -> np.ndarray:
        """One float64 entry per channel of every layer: a per-tensor parameter repeated over its layer."""
        flat = [np.asarray(param, np.float64).reshape(-1) for param in params]
        repeats = []
        for param, count in zip(flat, channels):
            if param.size not in (1, count):
                raise ValueError(f"a scale of {param.size} values for a bias of {count} channels")
            repeats.extend([count] if param.size == 1 else [1] * count)
        return np.repeat(np.concatenate(flat), repeats)

    product = per_channel([x.scale for _, x, _ in layers]) * per_channel([w.scale for _, _, w in layers])
    scale = np.where(product > 0, product, 1.0)
    biases = np.concatenate([bias.reshape(-1) for bias, _, _ in layers], dtype=np.float64)
    with np.errstate(over="ignore"):
        integers = saturate(np.rint(biases / scale), np.int32)
    scale = scale.astype(np.float32)
    ends = np.cumsum(channels).tolist()
    return [(integers[end - count:end], scale[end - count:end]) for end, count in zip(ends, channels)]


def qdq_attributes(spec: QuantSpec) -> dict[str, int]:
    """The ``axis`` / ``block_size`` attributes of the QuantizeLinear / DequantizeLinear of ``spec``."""
    attrs: dict[str, int] = {}
    if spec.axis is not None:
        attrs["axis"] = spec.axis
    if spec.block_size is not None:
        attrs["block_size"] = spec.block_size
    return attrs


def min_opset(spec: QuantSpec) -> int:
    """The lowest default-domain opset whose Q/DQ can express ``spec``: 13 for per-axis int8/uint8
    (10 per tensor), 21 for int16/uint16, int4/uint4 and blocks, 25 for int2/uint2."""
    if spec.dtype in (TensorProto.INT2, TensorProto.UINT2):
        return 25
    if spec.dtype not in (TensorProto.INT8, TensorProto.UINT8) or spec.block_size is not None:
        return 21
    return 13 if spec.axis is not None else 10


def spec_of_qdq(node: Node) -> QuantSpec:
    """The spec a QuantizeLinear or DequantizeLinear node with a constant scale (and zero point, when it
    has one) applies, its attributes read as ONNX reads them (``axis`` defaults to 1; ``block_size`` 0
    means none; no zero point means 0 of the integer type, uint8 for a QuantizeLinear that names none).
    The scale is read as float32 (a float16 model's scales are float16)."""
    scale = np.asarray(node.inputs[1].const, dtype=np.float32)
    given = node.inputs[2] if len(node.inputs) > 2 else None
    integer = node.outputs[0] if node.op_type == "QuantizeLinear" else node.inputs[0]
    dtype = integer.dtype or (given.dtype if given is not None else TensorProto.UINT8)
    zero_point = given.const if given is not None else np.zeros(scale.shape, storage_dtype(dtype))
    block_size = node.attrs.get("block_size") or None
    axis = node.attrs.get("axis", 1) if scale.size > 1 or block_size else None
    return QuantSpec(dtype, scale, zero_point, axis=axis, block_size=block_size)
