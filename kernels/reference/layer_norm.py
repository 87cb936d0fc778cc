"""LayerNormalization (numpy): onnxruntime 1.32's CPU kernel on x86 with AVX2, rounding step for step.

``onnx.reference`` (the fallback) sums with numpy's pairwise summation and divides by the standard
deviation; onnxruntime 1.32 on any x86 CPU with AVX2+FMA (native AVX512-VNNI and ``qemu -cpu
Haswell-v4`` alike) runs MLAS's vectorized LayerNorm kernel, which computes per normalized row of
``n`` elements, in float32::

    mean = float32(sum(x) / n)                         (summed in float64: the exact mean, rounded once)
    d    = x - mean
    v[l] = fma(d[k], d[k], v[l])                       (8 lanes, l = k mod 8, k in order)
    var  = ((v0+v4) + (v2+v6)) + ((v1+v5) + (v3+v7))   (the AVX horizontal reduction)
    inv  = 1 / sqrt(var / n + epsilon)
    y    = fma(d * inv, scale, bias)

Measured bit for bit against onnxruntime 1.32 (natively and under qemu) for float32 rows whose
length is a multiple of 8 (8, 16, 384, 1536; ``tests/kernels/test_layer_norm.py``). Rows of other
lengths (a scalar tail, or under 8 elements where MLAS falls back to a scalar loop) are not
modelled: they run ``onnx.reference``'s formula. The difference matters after a QuantizeLinear: a
few ulps move a value across a rounding boundary now and then, a 1-LSB difference that then spreads
through a transformer (MiniLM: the first tensor the executor got wrong against onnxruntime under
qemu, 1 element of 159,744, grew to 51 LSB and 0.38 % of elements > 1 LSB by the last layer).
The optional outputs are the mean and ``1 / std`` (``InvStdDev``).
"""

from __future__ import annotations

import numpy as np

from ..registry import register

_F32, _F64 = np.float32, np.float64


def fma_f32(a, b, c) -> np.ndarray:
    """``fma(a, b, c)`` of float32 arrays, rounded once to float32 (as ``vfmadd`` does).

    ``a * b`` is exact in float64; ``s = a * b + c`` rounds once more, with the error ``e`` (TwoSum)
    exact. ``float32(s)`` is the correctly rounded result unless ``s`` lies exactly halfway between
    two float32 values and ``e != 0``: then the true sum is just off the tie, on ``e``'s side.
    """
    a, b, c = np.broadcast_arrays(np.asarray(a, _F32), np.asarray(b, _F32), np.asarray(c, _F32))
    p = a.astype(_F64) * b.astype(_F64)
    c64 = c.astype(_F64)
    s = p + c64
    t = s - p
    e = (p - (s - t)) + (c64 - t)
    r = s.astype(_F32)
    above = r.astype(_F64) > s
    lo = np.where(above, np.nextafter(r, _F32(-np.inf)), r)
    hi = np.where(above, r, np.nextafter(r, _F32(np.inf)))
    tie = (s == (lo.astype(_F64) + hi.astype(_F64)) / 2) & (e != 0)
    return np.where(tie, np.where(e > 0, hi, lo), r).astype(_F32)


def layer_norm_avx2(x: np.ndarray, scale: np.ndarray, bias: np.ndarray | None, epsilon: float):
    """MLAS's AVX2 LayerNorm on float32 rows ``x`` (rows, n), ``n`` a multiple of 8."""
    rows, n = x.shape
    mean = (x.astype(_F64).sum(axis=1) / n).astype(_F32)
    d = x - mean[:, None]
    lanes = np.zeros((rows, 8), _F32)
    for k in range(0, n, 8):
        chunk = d[:, k:k + 8]
        lanes = fma_f32(chunk, chunk, lanes)
    half = lanes[:, 0:4] + lanes[:, 4:8]
    quarter = half[:, 0:2] + half[:, 2:4]
    var = quarter[:, 0] + quarter[:, 1]
    inv = _F32(1) / np.sqrt(var / _F32(n) + _F32(epsilon))
    y = fma_f32(d * inv[:, None], np.broadcast_to(scale, x.shape),
                np.broadcast_to(np.zeros(n, _F32) if bias is None else bias, x.shape))
    return y, mean, inv


def layer_norm_formula(x: np.ndarray, scale: np.ndarray, bias: np.ndarray | None, epsilon: float):
    """The ONNX definition as ``onnx.reference`` computes it (rows not modelled above)."""
    t = x.dtype.type
    mean = np.sum(x, axis=1) / t(x.shape[1])
    d = x - mean[:, None]
    inv = np.reciprocal(np.sqrt(np.sum(d * d, axis=1) / t(x.shape[1]) + t(epsilon)))
    y = d * inv[:, None] * scale
    if bias is not None:
        y = y + bias
    return y, mean, inv


@register("LayerNormalization", since=17)
def LayerNormalization(X, Scale, B=None, *, axis=-1, epsilon=1e-5, stash_type=1):
    """onnxruntime's LayerNormalization on an AVX2 CPU; outputs ``(Y, Mean, InvStdDev)``."""
    x = np.asarray(X)
    axis = axis + x.ndim if axis < 0 else axis
    rows = int(np.prod(x.shape[:axis], dtype=np.int64))
    size = int(np.prod(x.shape[axis:], dtype=np.int64))
    work = x.dtype if x.dtype in (np.float32, np.float64) else np.dtype(_F32)
    flat = x.reshape(rows, size).astype(work, copy=False)
    scale = np.broadcast_to(np.asarray(Scale, work), x.shape[axis:]).reshape(-1)
    bias = None if B is None else np.broadcast_to(np.asarray(B, work), x.shape[axis:]).reshape(-1)
    if work == _F32 and size >= 8 and size % 8 == 0:
        y, mean, inv = layer_norm_avx2(flat, scale, bias, float(epsilon))
    else:
        y, mean, inv = layer_norm_formula(flat, scale, bias, float(epsilon))
    stats_shape = x.shape[:axis] + (1,) * (x.ndim - axis)
    return (y.astype(x.dtype, copy=False).reshape(x.shape), mean.astype(_F32).reshape(stats_shape),
            inv.astype(_F32).reshape(stats_shape))
