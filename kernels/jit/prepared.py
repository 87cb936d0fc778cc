"""Prepared kernels: the hot ops specialized once, when the executor plans a step, for their constant
inputs (the protocol is in :mod:`..registry`). Each computes the kernel's result bit for bit; cases
not covered here return None from ``prepare`` and run the kernel itself.

QLinearConv and QLinearMatMul with constant weights and quantization parameters become one
weights-left GEMM on BLAS, ``acc (G, N, P) = W' (G, N, K) @ cols (G, K, P)``:

* ``W' = w - w_zero_point`` is prepared once: float32 when ``max|x| * max_n sum_k |W'[n, k]|`` (plus
  ``|w[k]| + |w[k+1]|`` of each pair corrected below) is below 2**24, so every partial sum in any order
  is an exact float32 integer; else float64 (exact below 2**53).
* ``cols`` hold the raw input values, padding being the input zero point ``za``; since
  ``sum_k (x - za) W' = sum_k x W' - za sum_k W'``, the row offset ``bias - za sum_k W'`` is added
  during requantization (``fused.requantize_rows``), which wraps to int32 as the reference does. For a
  convolution ``P`` runs over output pixels and ``N`` over output channels (NCHW comes out directly);
  a MatMul ``A (M, K) @ B (K, N)`` is computed as ``B'^T @ A^T``. ``K`` is in the reference's order
  (kernel position, then channel, see ``reference.conv``), which decides the AVX2 pairs.
* x86 AVX2 pair saturation (``accumulation="avx2_pair_saturate"``, uint8 x int8): the reference's
  result is the exact sum plus ``sat16(p) - p`` for every pair ``(k, k+1)`` (k even) of raw products
  ``p = x[k] w[k] + x[k+1] w[k+1]``. With ``0 <= x <= 255``, ``|p| > 32767`` needs ``w[k] w[k+1] >= 0`` and
  ``255 (|w[k]| + |w[k+1]|) > 32767``, a property of the weights alone: those pairs are listed once and
  ``fused.saturate_pairs`` adds their corrections (zero where a pair does not saturate). Pairs left
  out cannot saturate, so this is the reference's result for every input.
* Depthwise convolutions (one channel per group) that the reference accumulates exactly run
  ``fused.depthwise_requantize`` on NCHW, in float32 under the same 2**24 bound, else in int32.

QuantizeLinear and DequantizeLinear with constant float32 parameters (per tensor or per axis), and
8/16-bit integers, run one ``fused`` loop that writes the output type directly.
"""

from __future__ import annotations

import math

import numpy as np
from numpy.lib.stride_tricks import as_strided
from onnx import TensorProto

from ..reference.conv import conv_pads
from ..reference.quantize import integer_range, quantize_output_dtype
from ..registry import RUNTIME
from . import fused

FLOAT32_EXACT = 2 ** 24
EIGHT_BIT = (np.dtype(np.uint8), np.dtype(np.int8))
NATIVE = EIGHT_BIT + (np.dtype(np.uint16), np.dtype(np.int16))  # integer outputs numba writes directly


def _constant(*values) -> bool:
    return all(v is not RUNTIME and v is not None for v in values)


def _scalar(value, dtype=None) -> np.ndarray:
    return np.asarray(value, dtype).reshape(())


def _per_row(value, rows: int, dtype) -> np.ndarray:
    """A per-tensor or per-row parameter as a contiguous ``(rows,)`` vector."""
    value = np.asarray(value, dtype).reshape(-1)
    return np.ascontiguousarray(np.broadcast_to(value, (rows,)))


def _risky_pairs(weights: np.ndarray):
    """``(group, row, k, w[k], w[k+1])`` (int64) of every pair of a uint8 x int8 product that can leave
    int16 (module docstring)."""
    w = weights.astype(np.int64)
    even = w.shape[-1] // 2 * 2
    first, second = w[..., 0:even:2], w[..., 1:even:2]
    risky = (first * second >= 0) & (255 * (np.abs(first) + np.abs(second)) > 32767)
    group, row, pair = np.nonzero(risky)
    return group, row, 2 * pair, first[risky], second[risky]


class WeightsLeftGemm:
    """``acc = W' @ cols`` with prepared weights, exact, plus the AVX2 pair corrections when asked.

    ``weights`` (G, N, K) raw integers, ``zero_point`` broadcasting against (G, N, 1), ``x_dtype`` the
    type of the values in ``cols``.
    """

    def __init__(self, weights: np.ndarray, zero_point, x_dtype: np.dtype, saturating: bool):
        adjusted = weights.astype(np.int64) - np.asarray(zero_point, np.int64)
        pairs = _risky_pairs(weights) if saturating else None
        # the largest partial sum: the exact terms, plus each listed pair's correction, |sat(p) - p| <= |p|
        bound = np.abs(adjusted).sum(axis=-1)
        if pairs is not None:
            np.add.at(bound, pairs[:2], np.abs(pairs[3]) + np.abs(pairs[4]))
        lo, hi = integer_range(x_dtype)
        self.dtype = np.dtype(np.float32 if max(-lo, hi) * int(bound.max(initial=0)) < FLOAT32_EXACT else np.float64)
        self.weights = adjusted.astype(self.dtype)
        self.row_sums = adjusted.sum(axis=-1).reshape(-1)
        self.pairs = None if pairs is None else pairs[:3] + tuple(v.astype(self.dtype) for v in pairs[3:]) + (
            np.array([-32768, 32767], self.dtype),)

    def __call__(self, cols: np.ndarray) -> np.ndarray:
        acc = np.matmul(self.weights, cols)
        if self.pairs is not None and len(self.pairs[0]):
            fused.saturate_pairs(acc, cols, *self.pairs)
        return acc


class Requantize:
    """The per-row requantization of an accumulator: offsets, float32 multipliers, zero points."""

    def __init__(self, offset, multiplier, zero_point, rows: int):
        self.dtype = np.asarray(zero_point).dtype
        self.lo, self.hi = integer_range(self.dtype)
        self.offset = _per_row(offset, rows, np.int64)
        self.multiplier = _per_row(multiplier, rows, np.float32)
        self.zero_point = _per_row(zero_point, rows, np.float32)

    def __call__(self, acc: np.ndarray) -> np.ndarray:
        out = np.empty(acc.shape, self.dtype)
        fused.requantize_rows(acc, self.offset, self.multiplier, self.zero_point, self.lo, self.hi, out)
        return out


def _saturating(accumulation: str, x_dtype, w_dtype) -> bool:
    return accumulation == "avx2_pair_saturate" and x_dtype == np.uint8 and w_dtype == np.int8


def qlinear_conv(args, *, auto_pad="NOTSET", dilations=None, group=1, kernel_shape=None, pads=None, strides=None,
                 accumulation="exact"):
    """Prepare QLinearConv (1-D and 2-D) with constant weights, scales, zero points and bias."""
    x, x_scale, x_zero_point, w, w_scale, w_zero_point, y_scale, y_zero_point, *rest = args
    bias = rest[0] if rest else None
    if not _constant(x_scale, x_zero_point, w, w_scale, w_zero_point, y_scale, y_zero_point) or bias is RUNTIME:
        return None
    x_dtype, y_dtype = np.asarray(x_zero_point).dtype, np.asarray(y_zero_point).dtype
    if (w.ndim not in (3, 4) or x_dtype not in EIGHT_BIT or y_dtype not in EIGHT_BIT or w.dtype not in EIGHT_BIT
            or any(np.size(v) != 1 for v in (x_scale, x_zero_point, y_scale, y_zero_point))
            or (kernel_shape is not None and list(kernel_shape) != list(w.shape[2:]))):
        return None
    nd, m, cg = w.ndim - 2, w.shape[0], w.shape[1]
    if m % group or np.size(w_zero_point) not in (1, m) or np.size(w_scale) not in (1, m):
        return None
    strides = list(strides) if strides is not None else [1] * nd
    dilations = list(dilations) if dilations is not None else [1] * nd
    w_zero = np.asarray(w_zero_point).reshape(-1)
    saturating = _saturating(accumulation, x_dtype, w.dtype)
    depthwise = cg == 1 and m == group
    if depthwise and np.all(w_zero == w_zero[0]):
        saturating = False  # MLAS's depthwise kernel is exact (reference.conv)
    za = int(_scalar(x_zero_point))
    w_scale = np.asarray(w_scale, np.float32)
    multiplier = _scalar(x_scale, np.float32) * w_scale.reshape(-1) / _scalar(y_scale, np.float32)
    bias = np.zeros(m, np.int64) if bias is None else np.asarray(bias, np.int64).reshape(-1)
    w4 = w if nd == 2 else w[:, :, None, :]
    kernel = w4.shape[2:]
    geometry = _ConvGeometry(kernel, strides, dilations, pads, auto_pad, nd)
    if depthwise and not saturating:
        w_dw = w4[:, 0].astype(np.int32) - _per_row(w_zero, m, np.int32).reshape(m, 1, 1)
        requantize = Requantize(bias - za * w_dw.reshape(m, -1).sum(axis=1), multiplier, _scalar(y_zero_point), m)
        lo, hi = integer_range(x_dtype)
        exact32 = max(-lo, hi) * int(np.abs(w_dw).reshape(m, -1).sum(axis=1).max()) < FLOAT32_EXACT
        w_dw = w_dw.astype(np.float32 if exact32 else np.int32)

        def depthwise_conv(x, *_):
            xp, (oh, ow) = geometry.padded(x, m, za, w_dw.dtype)
            out = np.empty((xp.shape[0], m, oh, ow), requantize.dtype)
            fused.depthwise_requantize(xp, w_dw, requantize.offset, requantize.multiplier,
                                       requantize.zero_point[0], requantize.lo, requantize.hi, geometry.strides2,
                                       geometry.dilations2, out)
            return geometry.output(out)

        return depthwise_conv
    mg = m // group
    rows = w4.reshape(group, mg, cg, -1).transpose(0, 1, 3, 2).reshape(group, mg, -1)
    gemm = WeightsLeftGemm(rows, w_zero.reshape((group, mg, 1) if w_zero.size > 1 else (1, 1, 1)), x_dtype, saturating)
    requantize = Requantize(bias - za * gemm.row_sums, multiplier, _scalar(y_zero_point), m)

    def conv(x, *_):
        xp, (oh, ow) = geometry.padded(x, group * cg, za)
        batch = xp.shape[0]
        out = requantize(gemm(geometry.columns(xp, group, cg, (oh, ow), gemm.dtype)).reshape(m, -1))
        out = out.reshape(m, batch, oh, ow)
        return geometry.output(out.reshape(1, m, oh, ow) if batch == 1 else
                               np.ascontiguousarray(out.transpose(1, 0, 2, 3)))

    return conv


class _ConvGeometry:
    """Pads, output size and patches of a 1-D or 2-D convolution (1-D as 2-D with height 1)."""

    def __init__(self, kernel, strides, dilations, pads, auto_pad, nd):
        self.kernel, self.strides, self.dilations, self.pads, self.auto_pad, self.nd = \
            tuple(kernel), strides, dilations, pads, auto_pad, nd
        self.strides2 = tuple(strides) if nd == 2 else (1, strides[0])
        self.dilations2 = tuple(dilations) if nd == 2 else (1, dilations[0])
        self._cache: dict = {}

    def _layout(self, spatial: tuple[int, ...]):
        """``(begin pads, end pads, output size)`` in 2-D for the input's spatial shape."""
        if spatial not in self._cache:
            pads = conv_pads(spatial, self.kernel[2 - self.nd:], self.strides, self.dilations, self.pads,
                             self.auto_pad)
            begin, end = (pads[:2], pads[2:]) if self.nd == 2 else ([0, pads[0]], [0, pads[1]])
            size = spatial if self.nd == 2 else (1,) + tuple(spatial)
            out = tuple((s + b + e - (k - 1) * d - 1) // st + 1 for s, b, e, k, d, st in
                        zip(size, begin, end, self.kernel, self.dilations2, self.strides2, strict=True))
            if min(out) < 1:
                raise ValueError(f"kernel extent larger than padded input {spatial}")
            self._cache[spatial] = (begin, end, out)
        return self._cache[spatial]

    def padded(self, x: np.ndarray, channels: int, pad_value: int, dtype=None):
        """``(x as 4-D, padded with pad_value: (N, C, Hp, Wp), in dtype (default x's), output size)``."""
        if x.ndim != self.nd + 2 or x.shape[1] != channels:
            raise ValueError(f"channels do not fit the weights: x {x.shape}, {channels} channels expected")
        begin, end, out = self._layout(x.shape[2:])
        x4 = x if self.nd == 2 else x[:, :, None, :]
        dtype = dtype or x.dtype
        if any(begin) or any(end):
            n, c, h, w = x4.shape
            xp = np.full((n, c, h + begin[0] + end[0], w + begin[1] + end[1]), pad_value, dtype)
            xp[:, :, begin[0]:begin[0] + h, begin[1]:begin[1] + w] = x4
        else:
            xp = np.ascontiguousarray(x4, dtype)
        return xp, out

    def columns(self, xp: np.ndarray, group: int, cg: int, out: tuple[int, int], dtype) -> np.ndarray:
        """The patches ``(G, KH*KW*Cg, N*OH*OW)`` in ``dtype`` (k order kernel position, then channel): one
        strided copy of ``xp``."""
        sn, sc, sh, sw = xp.strides
        (kh, kw), (th, tw), (dh, dw) = self.kernel, self.strides2, self.dilations2
        view = as_strided(xp, (group, kh, kw, cg, xp.shape[0]) + out,
                          (cg * sc, dh * sh, dw * sw, sc, sn, th * sh, tw * sw), writeable=False)
        return view.astype(dtype, order="C").reshape(group, kh * kw * cg, -1)

    def output(self, out: np.ndarray) -> np.ndarray:
        """``(N, M, OH, OW)`` back to the convolution's rank."""
        return out if self.nd == 2 else out.reshape(out.shape[:2] + out.shape[3:])


def qlinear_matmul(args, *, accumulation="exact"):
    """Prepare QLinearMatMul with constant parameters (``a``'s per tensor) and a constant 2-D ``b``, or a
    ``b`` computed at run time (per-tensor parameters, exact accumulation)."""
    a, a_scale, a_zero_point, b, b_scale, b_zero_point, y_scale, y_zero_point = args
    if b is RUNTIME:
        return _qlinear_matmul_runtime(args, accumulation)
    if not _constant(a_scale, a_zero_point, b, b_scale, b_zero_point, y_scale, y_zero_point) or b.ndim != 2:
        return None
    k, n = b.shape
    x_dtype, y_dtype = np.asarray(a_zero_point).dtype, np.asarray(y_zero_point).dtype
    if (x_dtype not in EIGHT_BIT or y_dtype not in EIGHT_BIT or b.dtype not in EIGHT_BIT
            or np.size(a_scale) != 1 or np.size(a_zero_point) != 1
            or any(np.size(v) not in (1, n) for v in (b_scale, b_zero_point, y_scale, y_zero_point))):
        return None
    gemm = WeightsLeftGemm(np.ascontiguousarray(b.T)[None], np.asarray(b_zero_point).reshape(1, -1, 1)
                           if np.size(b_zero_point) > 1 else np.asarray(b_zero_point).reshape(1, 1, 1),
                           x_dtype, _saturating(accumulation, x_dtype, b.dtype))
    multiplier = (_scalar(a_scale, np.float32) * np.asarray(b_scale, np.float32).reshape(-1)
                  / np.asarray(y_scale, np.float32).reshape(-1))
    requantize = Requantize(-int(_scalar(a_zero_point)) * gemm.row_sums, multiplier, y_zero_point, n)

    def matmul(a, *_):
        if a.shape[-1] != k:
            raise ValueError(f"MatMul shapes do not match: {a.shape} @ {b.shape}")
        cols = a.reshape(-1, k).T.astype(gemm.dtype, order="C")[None]
        return np.ascontiguousarray(requantize(gemm(cols)[0]).T).reshape(a.shape[:-1] + (n,))

    return matmul


def _qlinear_matmul_runtime(args, accumulation: str):
    """Both operands at run time: ``(a - za) @ (b - zb)`` by numpy's matmul (its broadcasting is the
    operator's) in float32 where ``K max|a - za| max|b - zb| < 2**24``, else float64; then requantized."""
    _, a_scale, a_zero_point, _, b_scale, b_zero_point, y_scale, y_zero_point = args
    params = (a_scale, a_zero_point, b_scale, b_zero_point, y_scale, y_zero_point)
    if not _constant(*params) or any(np.size(v) != 1 for v in params):
        return None
    a_dtype, b_dtype = np.asarray(a_zero_point).dtype, np.asarray(b_zero_point).dtype
    if (a_dtype not in EIGHT_BIT or b_dtype not in EIGHT_BIT or np.asarray(y_zero_point).dtype not in EIGHT_BIT
            or _saturating(accumulation, a_dtype, b_dtype)):
        return None
    za, zb = int(_scalar(a_zero_point)), int(_scalar(b_zero_point))
    (alo, ahi), (blo, bhi) = integer_range(a_dtype), integer_range(b_dtype)
    product = max(ahi - za, za - alo) * max(bhi - zb, zb - blo)
    multiplier = _scalar(a_scale, np.float32) * _scalar(b_scale, np.float32) / _scalar(y_scale, np.float32)
    requantize = Requantize(0, multiplier, y_zero_point, 1)

    def matmul(a, _a_scale, _a_zero_point, b, *_):
        if a.dtype != a_dtype or b.dtype != b_dtype:
            raise ValueError(f"input types {a.dtype}, {b.dtype} differ from their zero points'")
        dtype = np.float32 if a.shape[-1] * product < FLOAT32_EXACT else np.float64
        acc = np.matmul(np.subtract(a, dtype(za), dtype=dtype), np.subtract(b, dtype(zb), dtype=dtype))
        return requantize(acc.reshape(1, -1)).reshape(acc.shape)

    return matmul


def _axis_layout(shape: tuple[int, ...], axis: int, channels: int) -> tuple[int, int, int] | None:
    """``(outer, C, inner)`` of an input of ``shape`` with parameters along ``axis`` (``channels`` of
    them, 1 = per tensor); None when they do not fit (the kernel then raises its own error)."""
    if channels == 1:
        return 1, 1, math.prod(shape)
    axis = axis + len(shape) if axis < 0 else axis
    if not 0 <= axis < len(shape) or shape[axis] != channels:
        return None
    return math.prod(shape[:axis]), channels, math.prod(shape[axis + 1:])


def _parameters(scale, zero_point, axis, block_size, zero_dtype):
    """``(scale float32 (C,), zero point (C,))`` for per-tensor or per-axis parameters, else None."""
    scale = np.asarray(scale)
    if block_size or scale.dtype != np.float32 or scale.ndim > 1:
        return None
    zero = np.zeros(scale.size, zero_dtype) if zero_point is None else np.asarray(zero_point, zero_dtype).reshape(-1)
    return (np.ascontiguousarray(scale.reshape(-1)), zero) if zero.size == scale.size else None


def quantize_linear(args, *, axis=1, block_size=0, output_dtype=0, precision=0, saturate=1, kernel=None):
    """Prepare QuantizeLinear of float32 by constant float32 parameters into an 8/16-bit type."""
    x, y_scale, *rest = args
    y_zero_point = rest[0] if rest else None
    if y_scale is RUNTIME or y_zero_point is RUNTIME or precision not in (0, TensorProto.FLOAT):
        return None
    dtype = quantize_output_dtype(y_zero_point, output_dtype)
    params = _parameters(y_scale, y_zero_point, axis, block_size, np.float32)
    if params is None or dtype not in NATIVE:
        return None
    scale, zero = params
    lo, hi = integer_range(dtype)

    def quantize(x, *inputs):
        layout = _axis_layout(x.shape, axis, scale.size)
        if x.dtype != np.float32 or layout is None:
            return kernel(x, *inputs, axis=axis, block_size=block_size, output_dtype=output_dtype,
                          precision=precision, saturate=saturate)
        out = np.empty(x.shape, dtype)
        fused.quantize(np.ascontiguousarray(x).reshape(layout), scale, zero, lo, hi, out.reshape(layout))
        return out

    return quantize


def dequantize_linear(args, *, axis=1, block_size=0, output_dtype=0, kernel=None):
    """Prepare DequantizeLinear of 8/16-bit integers by constant float32 parameters into float32."""
    x, x_scale, *rest = args
    x_zero_point = rest[0] if rest else None
    if x_scale is RUNTIME or x_zero_point is RUNTIME or output_dtype not in (0, TensorProto.FLOAT):
        return None
    params = _parameters(x_scale, x_zero_point, axis, block_size, np.int32)
    if params is None:
        return None
    scale, zero = params

    def dequantize(x, *inputs):
        layout = _axis_layout(x.shape, axis, scale.size)
        if x.dtype not in NATIVE or layout is None:
            return kernel(x, *inputs, axis=axis, block_size=block_size, output_dtype=output_dtype)
        out = np.empty(x.shape, np.float32)
        fused.dequantize(np.ascontiguousarray(x).reshape(layout), scale, zero, out.reshape(layout))
        return out

    return dequantize
