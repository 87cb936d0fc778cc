"""numba loops of the prepared kernels (:mod:`.prepared`): each reads its input once and writes the
final integer (or float) output, with no intermediate int32 or float64 array.

The arithmetic is the reference's, as in :mod:`.loops`:

- ``requantize_rows``: the accumulator is an exact integer held in a float (the BLAS result), plus
  an int64 row offset (bias and zero-point terms), wrapped to int32 as the reference wraps; then
  ``rint(float32(acc) * multiplier) + zero_point`` in float32, saturated (NaN -> ``lo``).
- ``saturate_pairs``: the x86 AVX2 pair saturation as a correction of an exact sum (see
  :mod:`.prepared`): ``acc += clamp(p, -32768, 32767) - p`` for each listed pair product ``p``;
  every term is an integer below 2**24, so the float arithmetic is exact.
- ``depthwise_requantize``: the exact depthwise 2-D sum (int32, or float32 where exact), on input padded
  with its zero point (padding contributes ``x_zero_point * w``, cancelled by the row offset), then
  requantized.
- ``quantize``/``dequantize``/``hard_sigmoid``: one pass over ``(outer, C, inner)``, the parameters per
  ``C``, float32 as the reference (division, not a reciprocal; product and sum rounded separately).

Each loop compiles once per combination of input and output dtypes it meets (uint8/int8 outputs,
float32/float64 accumulators), then loads from numba's cache.
"""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True, inline="always")
def _saturate(v, low, high):
    return min(v, high) if v >= low else low


@njit(cache=True)
def requantize_rows(acc, offset, multiplier, zero_point, lo, hi, out):
    """``out[r, p] = saturate(rint(float32(wrap32(acc[r, p] + offset[r])) * multiplier[r]) + zero_point[r])``."""
    rows, size = acc.shape
    low, high = np.float32(lo), np.float32(hi)
    for r in range(rows):
        m, z, b = multiplier[r], zero_point[r], offset[r]
        for p in range(size):
            total = np.int32(np.int64(acc[r, p]) + b)  # wraps modulo 2**32
            out[r, p] = _saturate(np.rint(np.float32(total) * m) + z, low, high)


@njit(cache=True)
def saturate_pairs(acc, cols, group, row, k, b0, b1, limits):
    """``acc (G, N, P) += clamp(p) - p`` with ``p = cols[g, k] * b0 + cols[g, k + 1] * b1`` for each listed
    pair; ``limits`` = (-32768, 32767) in the accumulator's type, so the loop stays in that type."""
    size = acc.shape[2]
    low, high = limits[0], limits[1]
    for i in range(group.shape[0]):
        target, first, second = acc[group[i], row[i]], cols[group[i], k[i]], cols[group[i], k[i] + 1]
        w0, w1 = b0[i], b1[i]
        for p in range(size):
            pair = first[p] * w0 + second[p] * w1
            target[p] += min(max(pair, low), high) - pair


@njit(cache=True)
def depthwise_requantize(xp, w, offset, multiplier, zero_point, lo, hi, strides, dilations, out):
    """``xp (N, C, Hp, Wp)`` padded with the input zero point, ``w (C, KH, KW)`` (weight zero point
    subtracted), both int32, or both float32 where every sum is an integer below 2**24 (exact) ->
    requantized ``out (N, C, OH, OW)``.

    Each tap adds a shifted input row to the accumulator row; with unit strides the whole plane is
    one flat run (``acc[i * Wp + j]``, the columns past ``OW`` computed and discarded), a long
    contiguous loop that vectorizes.
    """
    batch, channels, out_h, out_w = out.shape
    kernel_h, kernel_w = w.shape[1], w.shape[2]
    width = xp.shape[3]
    sh, sw, dh, dw = strides[0], strides[1], dilations[0], dilations[1]
    flat = sh == 1 and sw == 1
    pitch = width if flat else out_w
    low, high = np.float32(lo), np.float32(hi)
    acc = np.empty(out_h * pitch, xp.dtype)
    for n in range(batch):
        for c in range(channels):
            plane = xp[n, c].ravel()
            acc[:] = 0
            for a in range(kernel_h):
                for e in range(kernel_w):
                    weight = w[c, a, e]
                    if flat:  # slices, so the loop indices are known non-negative and the loop vectorizes
                        source = plane[a * dh * width + e * dw:]
                        for t in range(out_h * width - (kernel_w - 1) * dw):
                            acc[t] += source[t] * weight
                    else:
                        for i in range(out_h):
                            source, target = plane[(i * sh + a * dh) * width + e * dw:], acc[i * pitch:]
                            if sw == 1:
                                for j in range(out_w):
                                    target[j] += source[j] * weight
                            else:
                                for j in range(out_w):
                                    target[j] += source[j * sw] * weight
            m, b = multiplier[c], offset[c]
            for i in range(out_h):
                for j in range(out_w):
                    total = np.int32(np.int64(acc[i * pitch + j]) + b)
                    out[n, c, i, j] = _saturate(np.rint(np.float32(total) * m) + zero_point, low, high)


@njit(cache=True)
def quantize(x, scale, zero_point, lo, hi, out):
    """``out = saturate(rint(x / scale[c]) + zero_point[c])`` over ``x (outer, C, inner)`` float32."""
    outer, channels, inner = x.shape
    low, high = np.float32(lo), np.float32(hi)
    for o in range(outer):
        for c in range(channels):
            d, z = scale[c], zero_point[c]
            for i in range(inner):
                out[o, c, i] = _saturate(np.rint(x[o, c, i] / d) + z, low, high)


@njit(cache=True)
def dequantize(x, scale, zero_point, out):
    """``out = float32(x - zero_point[c]) * scale[c]`` over ``x (outer, C, inner)`` (8/16-bit integers)."""
    outer, channels, inner = x.shape
    for o in range(outer):
        for c in range(channels):
            d, z = scale[c], zero_point[c]
            for i in range(inner):
                out[o, c, i] = np.float32(np.int32(x[o, c, i]) - z) * d


@njit(cache=True)
def hard_sigmoid(x, alpha, beta, out):
    """``out = max(0, min(1, x * alpha + beta))`` over flat float32 arrays, one rounding per operation;
    NaN stays NaN (as ``np.minimum``/``np.maximum``)."""
    one, zero = np.float32(1), np.float32(0)
    for i in range(x.shape[0]):
        v = x[i] * alpha + beta
        if v > one:
            v = one
        if v < zero:
            v = zero
        out[i] = v
