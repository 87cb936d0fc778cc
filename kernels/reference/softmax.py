"""Softmax (numpy, opset 13): onnxruntime 1.32's MLAS float kernels on x86, rounding step for step.

onnxruntime computes a float32 Softmax with ``MlasComputeSoftmax`` (onnxruntime/core/mlas/lib/
compute.cpp), one row of ``n`` elements along the axis at a time: the row maximum ``M`` (exact in any
order), then a kernel that writes ``e[k] = exp(x[k] - M)`` and returns their sum ``S``, then
``y[k] = e[k] * (1 / S)`` (``1 / S`` rounded once, then one rounded product per element). Which
exp-and-sum kernel runs depends on the CPU, and the two differ in their last bits (a single Softmax
node gives different results on 26 % of elements natively on AVX512 and under ``qemu -cpu
Haswell-v4``):

* ``fma3`` (AVX2 + FMA3, ``MlasComputeSumExpF32KernelFma3`` in x86_64/TransKernelFma3.S)::

      t  = max(x + (-M), -88.3762626647949)            (vaddps, then the lower clamp)
      b  = fma(t, 1/ln 2, 12582912)                    (round to integer by the 1.5 * 2^23 bias)
      m  = b - 12582912
      r  = fma(m, -6.93145752e-1, t); r = fma(m, -1.42860677e-6, r)     (ln 2 split high/low)
      p  = 0x1.694000p-10; p = fma(p, r, c) for c in 0x1.125edcp-7, 0x1.555b5ap-5, 0x1.555450p-3,
           0x1.fffff6p-2, 1, 1
      e  = p * float_bits((bits(b) << 23) + 0x3F800000)        (2^m built in the exponent field)
      S  = ((s0+s1) + (s2+s3)) + ((s4+s5) + (s6+s7))  (s_l: 8 lanes, s_l = sum of e[k], k = l mod 8,
                                                        in order from 0; two vhaddps then the halves)

* ``avx512f`` (``MlasComputeSumExpF32KernelAvx512F`` in x86_64/TransKernelAvx512F.S): the same
  polynomial, but the lower clamp is -103.9720840454, ``2^m`` is applied with ``vscalefps``
  (``p * 2^m`` rounded once, gradual underflow), and the sum runs in 16 lanes reduced as
  ``u_l = s_l + s_(l+8)`` followed by the 8-lane reduction above.

The constants are those of ``MlasExpConstants`` (compute.cpp). Measured bit for bit against
onnxruntime 1.32: ``avx512f`` natively on an AMD EPYC with AVX-512, ``fma3`` under ``qemu-x86_64 -cpu
Haswell-v4``, on 385,792 elements each (rows of 1 to 384 elements: multiples of 8 and 16 and the
masked tails between; normal logits of scales 0.5, 3 and 30; rows with -10000 masks);
``tests/kernels/test_softmax_erf.py`` keeps 11 lengths from 1 to 129.
Which one the executor uses is the profile's ``isa`` (:mod:`qcompiler.executor.profiles`):
``x86-avx2`` -> ``fma3``, ``x86-vnni`` -> ``avx512f``. Without one (``isa=None``), or for other
dtypes, the ONNX formula as ``onnx.reference`` computes it. NaN inputs are not modelled.
"""

from __future__ import annotations

import numpy as np

from ..registry import register
from .layer_norm import fma_f32

_F32 = np.float32

ISAS = ("fma3", "avx512f")

_LOWER = {"fma3": _F32(-88.3762626647949), "avx512f": _F32(-103.9720840454)}
_ROUNDING_BIAS = _F32(12582912.0)  # 1.5 * 2^23
_LOG2_RECIPROCAL = _F32(1.44269504088896341)
_LOG2_HIGH = _F32(-6.93145752e-1)
_LOG2_LOW = _F32(-1.42860677e-6)
_POLY = tuple(_F32(float.fromhex(h)) for h in
              ("0x1.694000p-10", "0x1.125edcp-7", "0x1.555b5ap-5", "0x1.555450p-3", "0x1.fffff6p-2",
               "0x1.000000p+0", "0x1.000000p+0"))


def exp_shifted(x: np.ndarray, negative_maximum: np.ndarray, isa: str) -> np.ndarray:
    """``exp(x - M)`` per element of rows ``x`` (rows, n) as MLAS's sum-of-exp kernel for ``isa``."""
    t = np.maximum(x + negative_maximum[:, None], _LOWER[isa])
    biased = fma_f32(t, _LOG2_RECIPROCAL, _ROUNDING_BIAS)
    m = biased - _ROUNDING_BIAS
    r = fma_f32(m, _LOG2_HIGH, t)
    r = fma_f32(m, _LOG2_LOW, r)
    p = np.full_like(r, _POLY[0])
    for c in _POLY[1:]:
        p = fma_f32(p, r, c)
    if isa == "avx512f":  # vscalefps: p * 2^m, one rounding
        return (p.astype(np.float64) * np.exp2(m.astype(np.float64))).astype(_F32)
    bits = (biased.view(np.int32).astype(np.int64) << 23) + 0x3F800000  # vpslld, vpaddd: wrap in 32 bits
    return p * (bits & 0xFFFFFFFF).astype(np.uint32).view(_F32)


def lane_sum(e: np.ndarray, lanes: int) -> np.ndarray:
    """Row sums of ``e`` (rows, n) accumulated in ``lanes`` vector lanes and reduced as MLAS does."""
    acc = np.zeros((e.shape[0], lanes), _F32)
    for k in range(0, e.shape[1], lanes):
        chunk = e[:, k:k + lanes]
        acc[:, :chunk.shape[1]] += chunk
    if lanes == 16:  # vextractf64x4 + vaddps
        acc = acc[:, :8] + acc[:, 8:]
    return ((acc[:, 0] + acc[:, 1]) + (acc[:, 2] + acc[:, 3])) + ((acc[:, 4] + acc[:, 5]) + (acc[:, 6] + acc[:, 7]))


def softmax_mlas(x: np.ndarray, isa: str) -> np.ndarray:
    """MLAS's Softmax of float32 rows ``x`` (rows, n) on ``isa``."""
    if x.shape[1] == 0:
        return x.copy()
    e = exp_shifted(x, -x.max(axis=1), isa)
    scale = _F32(1) / lane_sum(e, 16 if isa == "avx512f" else 8)
    return e * scale[:, None]


def softmax_formula(x: np.ndarray, axis: int) -> np.ndarray:
    """The ONNX definition as ``onnx.reference`` computes it."""
    if x.size == 0:
        return x
    y = np.exp(x - x.max(axis=axis, keepdims=True))
    y /= y.sum(axis=axis, keepdims=True)
    return y.astype(x.dtype)


@register("Softmax", since=13)
def Softmax(input, *, axis=-1, isa=None):
    """Softmax along ``axis``: MLAS's arithmetic on ``isa`` (``fma3``/``avx512f``) for float32, else the
    formula. A non-last axis is moved last and back, as onnxruntime transposes."""
    x = np.asarray(input)
    if isa is None or x.dtype != _F32 or x.ndim == 0:
        return softmax_formula(x, axis)
    if isa not in ISAS:
        raise ValueError(f"unknown isa {isa!r}; known: {', '.join(ISAS)}")
    moved = np.moveaxis(x, axis, -1)
    y = softmax_mlas(np.ascontiguousarray(moved).reshape(-1, moved.shape[-1]), isa)
    return np.moveaxis(y.reshape(moved.shape), -1, axis)
