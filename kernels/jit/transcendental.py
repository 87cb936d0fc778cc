"""numba loops for MLAS's float Softmax and Erf (the arithmetic of :mod:`..reference.softmax` and
:mod:`..reference.erf`, element by element; bit-exact with them, ``tests/kernels/test_softmax_erf.py``).

The numpy reference emulates ``fma`` with whole-array float64 passes: 17.6 ms for the final Softmax
over PP-OCRv4's 13 x 6625 classes (the formula: 0.07 ms; the whole executor ran in 10 ms). Here
``fma32`` is LLVM's fma intrinsic (one rounding, as ``vfmadd``) and the loops run per element:
0.23 ms. ``2^m`` is read from :data:`EXPONENT_BITS`, the float32 whose bits are
``(k << 23) mod 2^32``, as ``vpslld``/``vpaddd`` build it.
"""

from __future__ import annotations

import math

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

from ..reference import erf as erf_ref
from ..reference import softmax as softmax_ref
from ..registry import register

_F32 = np.float32

EXPONENT_BITS = ((np.arange(512, dtype=np.uint64) << 23) & 0xFFFFFFFF).astype(np.uint32).view(_F32)
"""``EXPONENT_BITS[k]``: the float32 with bit pattern ``(k << 23) mod 2^32`` (``k`` mod 512)."""

_POWERS_OF_TWO = np.ldexp(1.0, np.arange(-160, 40))  # 2^(j - 160)
_SOFTMAX_CONST = np.array([softmax_ref._ROUNDING_BIAS, softmax_ref._LOG2_RECIPROCAL, softmax_ref._LOG2_HIGH,
                           softmax_ref._LOG2_LOW], _F32)
_SOFTMAX_POLY = np.array(softmax_ref._POLY, _F32)
_ERF_CONST = np.array([erf_ref._UPPER, erf_ref._SPLIT, erf_ref._EXP_LOWER, erf_ref._EXP_C, erf_ref._LOG2_RECIPROCAL,
                       erf_ref._LOG2_HIGH, erf_ref._LOG2_LOW], _F32)
_ERF_SMALL, _ERF_BIG, _ERF_EXP = (np.array(c, _F32) for c in (erf_ref._SMALL, erf_ref._BIG, erf_ref._EXP))


@intrinsic
def fma32(typingctx, a, b, c):
    """``a * b + c`` of float32 scalars rounded once: LLVM's ``llvm.fma.f32`` (``vfmadd`` where the CPU
    has FMA, a correctly rounded ``fmaf`` call where not; never a separate multiply and add)."""
    signature = types.float32(types.float32, types.float32, types.float32)

    def codegen(context, builder, sig, args):
        f32 = ir.FloatType()
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(f32, [f32, f32, f32]), "llvm.fma.f32")
        return builder.call(fn, args)

    return signature, codegen


@njit(cache=True)
def _softmax_rows(x, lanes, lower, avx512, const, poly, exponent_bits, powers_of_two):
    rows, n = x.shape
    out = np.empty_like(x)
    bias, log2_reciprocal, log2_high, log2_low = const[0], const[1], const[2], const[3]
    acc = np.zeros(16, np.float32)
    for i in range(rows):
        maximum = x[i, 0]
        nan = False
        for k in range(n):
            v = x[i, k]
            if v != v:
                nan = True
            elif v > maximum:
                maximum = v
        if nan:
            maximum = np.float32(np.nan)
        negative_maximum = -maximum
        for lane in range(16):
            acc[lane] = np.float32(0)
        for k in range(n):
            t = x[i, k] + negative_maximum
            if lower > t:
                t = lower
            biased = fma32(t, log2_reciprocal, bias)
            m = biased - bias
            r = fma32(m, log2_high, t)
            r = fma32(m, log2_low, r)
            p = poly[0]
            for j in range(1, poly.shape[0]):
                p = fma32(p, r, poly[j])
            if avx512:  # vscalefps; m is in [-150, 0] after the clamp
                j = int(m) + 160
                e = np.float32(np.float64(p) * (powers_of_two[j] if 0 <= j < powers_of_two.shape[0]
                                                else math.ldexp(1.0, int(m))))
            else:
                e = p * exponent_bits[(int(m) + 127) & 511]
            out[i, k] = e
            acc[k & (lanes - 1)] += e
        if lanes == 16:
            for lane in range(8):
                acc[lane] = acc[lane] + acc[lane + 8]
        total = ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]))
        scale = np.float32(1) / total
        for k in range(n):
            out[i, k] = out[i, k] * scale
    return out


def softmax_rows(x: np.ndarray, isa: str) -> np.ndarray:
    """MLAS's Softmax of float32 rows ``x`` (rows, n) on ``isa``, as :func:`..reference.softmax.softmax_mlas`."""
    if x.shape[1] == 0 or x.shape[0] == 0:
        return x.copy()
    avx512 = isa == "avx512f"
    return _softmax_rows(np.ascontiguousarray(x, _F32), 16 if avx512 else 8, softmax_ref._LOWER[isa], avx512,
                         _SOFTMAX_CONST, _SOFTMAX_POLY, EXPONENT_BITS, _POWERS_OF_TWO)


@njit(cache=True)
def _erf_magnitudes(x, const, small_poly, big_poly, exp_poly, exponent_bits):
    upper, split, exp_lower, exp_c = const[0], const[1], const[2], const[3]
    log2_reciprocal, log2_high, log2_low = const[4], const[5], const[6]
    out = np.empty_like(x)
    for i in range(x.shape[0]):
        magnitude = abs(x[i])
        a = magnitude if magnitude < upper else upper
        if a >= split:
            q = big_poly[0]
            for j in range(1, big_poly.shape[0]):
                q = fma32(q, a, big_poly[j])
            q = fma32(q, a, a)
            t = -q
            if t < exp_lower:
                t = exp_lower
            v = fma32(log2_reciprocal, t, exp_c) - exp_c
            f = fma32(v, log2_high, t)
            f = fma32(v, log2_low, f)
            y = exp_poly[0]
            for j in range(1, exp_poly.shape[0]):
                y = fma32(y, f, exp_poly[j])
            out[i] = np.float32(1) - y * exponent_bits[(int(v) + 127) & 511]
        else:
            s = a * a
            p = small_poly[0]
            for j in range(1, small_poly.shape[0]):
                p = fma32(p, s, small_poly[j])
            out[i] = fma32(p, a, a)
    return out


def erf_fma3(x: np.ndarray) -> np.ndarray:
    """MLAS's AVX2/FMA3 Erf of a float32 array, as :func:`..reference.erf.erf_fma3`."""
    x = np.ascontiguousarray(x, _F32)
    flat = x.reshape(-1)
    out = _erf_magnitudes(flat, _ERF_CONST, _ERF_SMALL, _ERF_BIG, _ERF_EXP, EXPONENT_BITS)
    out = (out.view(np.uint32) | (flat.view(np.uint32) & np.uint32(0x80000000))).view(_F32)
    return out.reshape(x.shape)


@register("Softmax", since=13, backend="jit")
def Softmax(input, *, axis=-1, isa=None):
    """The reference Softmax; float32 with an ``isa`` runs in the numba loop above."""
    x = np.asarray(input)
    if isa is None or x.dtype != _F32 or x.ndim == 0:
        return softmax_ref.Softmax(x, axis=axis, isa=isa)
    if isa not in softmax_ref.ISAS:
        raise ValueError(f"unknown isa {isa!r}; known: {', '.join(softmax_ref.ISAS)}")
    moved = np.moveaxis(x, axis, -1)
    y = softmax_rows(np.ascontiguousarray(moved).reshape(-1, moved.shape[-1]), isa)
    return np.moveaxis(y.reshape(moved.shape), -1, axis)


@register("Erf", since=9, backend="jit")
def Erf(input, *, isa=None):
    """The reference Erf; float32 with an ``isa`` runs in the numba loop above."""
    x = np.asarray(input)
    if isa is None or x.dtype != _F32:
        return erf_ref.Erf(x, isa=isa)
    if isa not in softmax_ref.ISAS:
        raise ValueError(f"unknown isa {isa!r}; known: {', '.join(softmax_ref.ISAS)}")
    return erf_fma3(x)
