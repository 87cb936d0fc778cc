"""The fast loops: exact integer GEMM on float32 BLAS (exact by construction, see :func:`gemm_exact`),
and numba loops for the pair-saturating GEMM, depthwise 2-D convolution, requantize and quantize.

Each ``@njit(cache=True)`` function is compiled for exactly one signature (the wrappers below cast
their arguments), well under a second each on first use here, then loaded from numba's cache. The
arithmetic is the reference's, written as loops:

- GEMM: int16 operands, products in int32, accumulation in an int32 array. Every store into it
  truncates, so the sum wraps modulo 2**32 exactly as the reference's int64-then-wrap does.
- Floats stay float32 where the reference uses float32 (numba keeps float32 op float32 in float32);
  ``np.rint`` rounds half to even; ``fastmath`` is off. Adding the integer zero point in float32 is
  exact wherever the result is not saturated.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from ..reference.gemm import Arithmetic
from ..reference.quantize import integer_range


@njit(cache=True)
def _gemm_pair_saturate_dot(a, bt):
    batch, m_size, k_size = a.shape
    n_size = bt.shape[1]
    pairs = k_size // 2
    out = np.zeros((batch, m_size, n_size), np.int32)
    for t in range(batch):
        for m in range(m_size):
            arow = a[t, m]
            for n in range(n_size):
                brow = bt[t, n]
                acc = np.int32(0)
                for j in range(pairs):
                    pair = (np.int32(arow[2 * j]) * np.int32(brow[2 * j])
                            + np.int32(arow[2 * j + 1]) * np.int32(brow[2 * j + 1]))
                    acc += min(max(pair, -32768), 32767)
                if k_size % 2:  # the last product pairs with zero padding
                    last = np.int32(arow[k_size - 1]) * np.int32(brow[k_size - 1])
                    acc += min(max(last, -32768), 32767)
                out[t, m, n] = acc
    return out


@njit(cache=True)
def _gemm_pair_saturate(a, b):
    batch, m_size, k_size = a.shape
    n_size = b.shape[2]
    out = np.zeros((batch, m_size, n_size), np.int32)
    for t in range(batch):
        for m in range(m_size):
            row = out[t, m]
            for k in range(0, k_size, 2):
                # an odd K's last product pairs with zero padding, as in MLAS's packed K
                last = min(k + 1, k_size - 1)
                a0 = np.int32(a[t, m, k])
                a1 = np.int32(a[t, m, last]) if last > k else np.int32(0)
                b0, b1 = b[t, k], b[t, last]
                for n in range(n_size):
                    pair = a0 * np.int32(b0[n]) + a1 * np.int32(b1[n])
                    row[n] += min(max(pair, -32768), 32767)
    return out


@njit(cache=True)
def _depthwise2d(xp, w, stride_h, stride_w, dilation_h, dilation_w, out_h, out_w):
    """Channels-last: ``xp (N, Hp, Wp, C)``, ``w (KH, KW, C)`` -> ``(N, out_h, out_w, C)``; the channel
    loop is innermost and contiguous, so it vectorizes."""
    batch, channels = xp.shape[0], xp.shape[3]
    kernel_h, kernel_w = w.shape[0], w.shape[1]
    out = np.zeros((batch, out_h, out_w, channels), np.int32)
    for n in range(batch):
        for i in range(out_h):
            for j in range(out_w):
                acc = out[n, i, j]
                for a in range(kernel_h):
                    for b in range(kernel_w):
                        pixel = xp[n, i * stride_h + a * dilation_h, j * stride_w + b * dilation_w]
                        weight = w[a, b]
                        for c in range(channels):
                            acc[c] += np.int32(pixel[c]) * np.int32(weight[c])
    return out


@njit(cache=True)
def _requantize(acc, multiplier, zero_point, lo, hi):
    """``acc (outer, C, inner)`` with per-``C`` multiplier and zero point. In float32: the rounded
    product plus the zero point is exact below 2**24, and anything larger saturates; NaN becomes ``lo``
    (``not v >= lo``), as in the reference. Branch-free, so the inner loop vectorizes."""
    outer, channels, inner = acc.shape
    out = np.empty(acc.shape, np.int32)
    low, high = np.float32(lo), np.float32(hi)
    for o in range(outer):
        for c in range(channels):
            m, z = multiplier[c], np.float32(zero_point[c])
            for i in range(inner):
                v = np.rint(np.float32(acc[o, c, i]) * m) + z
                out[o, c, i] = np.int32(min(v, high) if v >= low else low)
    return out


@njit(cache=True)
def _quantize(x, scale, zero_point, lo, hi):
    """``x (outer, C, inner)`` with per-``C`` scale and zero point; float32 as :func:`_requantize`."""
    outer, channels, inner = x.shape
    out = np.empty(x.shape, np.int32)
    low, high = np.float32(lo), np.float32(hi)
    for o in range(outer):
        for c in range(channels):
            d, z = scale[c], np.float32(zero_point[c])
            for i in range(inner):
                v = np.rint(x[o, c, i] / d) + z
                out[o, c, i] = np.int32(min(v, high) if v >= low else low)
    return out


@njit(cache=True)
def _dequantize(x, scale, zero_point):
    """``x (outer, C, inner)`` int32 with per-``C`` float32 scale and int32 zero point -> float32: the
    difference (exact: the quantized types are at most 16-bit, and int32 input has no zero point)
    rounded to float32, times the scale, as the reference."""
    outer, channels, inner = x.shape
    out = np.empty(x.shape, np.float32)
    for o in range(outer):
        for c in range(channels):
            d, z = scale[c], zero_point[c]
            for i in range(inner):
                out[o, c, i] = np.float32(x[o, c, i] - z) * d
    return out


def _c(value, dtype) -> np.ndarray:
    """A C-contiguous writable array: numba compiles read-only arrays as another signature."""
    array = np.ascontiguousarray(value, dtype)
    return array if array.flags.writeable else array.copy()


def _per_channel(data, shape, params, dtypes):
    """``data`` as ``(outer, C, inner)`` and each parameter as a length-``C`` vector, ``C`` being the one
    axis along which the parameters vary (``C = 1`` when all are per tensor); parameters that vary
    along several axes are broadcast in full (``C`` = every element)."""
    data = data if data.shape == tuple(shape) else np.broadcast_to(data, shape)
    axes = set()
    for param in params:
        pshape = (1,) * (len(shape) - np.ndim(param)) + np.shape(param)
        axes |= {i for i, d in enumerate(pshape) if d != 1}
    if len(axes) > 1:
        flat = (1, int(np.prod(shape)), 1)
        return (_c(data, data.dtype).reshape(flat),
                [_c(np.broadcast_to(np.asarray(p, t), shape), t).reshape(-1) for p, t in zip(params, dtypes)])
    if axes:
        axis = axes.pop()
        layout = (int(np.prod(shape[:axis])), shape[axis], int(np.prod(shape[axis + 1:])))
    else:  # per tensor: one channel, every element in the contiguous inner loop
        layout = (1, 1, int(np.prod(shape)))
    vectors = [_c(np.broadcast_to(np.asarray(p, t).reshape(-1), (layout[1],)) if np.size(p) == 1 else
                  np.asarray(p, t).reshape(-1), t) for p, t in zip(params, dtypes)]
    return _c(data, data.dtype).reshape(layout), vectors


NARROW = 64
"""Below this many output columns the pair-saturating GEMM runs as dot products over k (contiguous rows
of ``a`` and of ``b`` transposed), which vectorizes where a short column loop would not. Pairs are
formed over the same k either way: both forms agree bit for bit."""

FLOAT32_EXACT = 2 ** 24
"""float32 represents every integer below 2**24 exactly."""


def _magnitude(x: np.ndarray) -> int:
    return max(-int(x.min(initial=0)), int(x.max(initial=0)))


def gemm_exact(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The exact integer GEMM on float32 BLAS, in slices of k short enough to stay exact.

    With ``|a| <= A`` and ``|b| <= B``, every product is an integer of at most ``A * B`` and a slice of
    ``s = floor((2**24 - 1) / (A * B))`` products sums to less than 2**24: every float32 operation
    of the slice is exact, whatever order or FMA the BLAS uses. The slices are added in int64 and
    wrapped to int32. For 8-bit operands (``A * B <= 255 * 255``) one slice covers 258 values of k.
    """
    bound = max(1, _magnitude(a) * _magnitude(b))
    step = max(1, (FLOAT32_EXACT - 1) // bound)
    a32, b32 = a.astype(np.float32), b.astype(np.float32)
    k = a.shape[-1]
    if k <= step:
        return np.matmul(a32, b32).astype(np.int32)
    total = np.zeros(a.shape[:-1] + b.shape[-1:], np.int64)
    for start in range(0, k, step):
        total += np.matmul(a32[..., start:start + step], b32[:, start:start + step]).astype(np.int64)
    return total.astype(np.int32)


def gemm_pair_saturate(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    if b.shape[2] < NARROW:
        return _gemm_pair_saturate_dot(_c(a, np.int16), _c(np.swapaxes(b, 1, 2), np.int16))
    return _gemm_pair_saturate(_c(a, np.int16), _c(b, np.int16))


def depthwise2d(xp: np.ndarray, w: np.ndarray, strides, dilations, out) -> np.ndarray:
    """``(N, C, *out)`` (a channels-last result, transposed back as a view)."""
    result = _depthwise2d(_c(np.moveaxis(xp, 1, -1), np.int16), _c(np.moveaxis(w, 0, -1), np.int16),
                          int(strides[0]), int(strides[1]), int(dilations[0]), int(dilations[1]), int(out[0]),
                          int(out[1]))
    return np.moveaxis(result, -1, 1)


def requantize(acc: np.ndarray, multiplier, zero_point, dtype) -> np.ndarray:
    """Same contract as the reference ``requantize``."""
    lo, hi = integer_range(dtype)
    shape = np.broadcast_shapes(acc.shape, np.shape(multiplier), np.shape(zero_point))
    data, (m, z) = _per_channel(np.asarray(acc, np.int32), shape, (multiplier, zero_point), (np.float32, np.int32))
    return _requantize(data, m, z, lo, hi).reshape(shape).astype(dtype)


def quantize(x: np.ndarray, scale: np.ndarray, zero_point, dtype) -> np.ndarray:
    """``saturate(rint(x / scale) + zero_point)`` for float32 ``x`` and ``scale`` broadcast against it."""
    lo, hi = integer_range(dtype)
    data, (d, z) = _per_channel(np.asarray(x, np.float32), x.shape, (scale, zero_point), (np.float32, np.int32))
    return _quantize(data, d, z, lo, hi).reshape(x.shape).astype(dtype)


def dequantize(x: np.ndarray, scale, zero_point) -> np.ndarray:
    """``float32(x - zero_point) * scale`` for float32 ``scale`` and ``zero_point`` broadcast against ``x``."""
    data, (d, z) = _per_channel(np.asarray(x, np.int32), x.shape, (scale, zero_point), (np.float32, np.int32))
    return _dequantize(data, d, z).reshape(x.shape)


JIT = Arithmetic(gemm_exact, gemm_pair_saturate, requantize, depthwise2d)
