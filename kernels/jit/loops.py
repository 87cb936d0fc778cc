"""The numba loops: integer GEMM (both accumulation profiles), requantize, quantize.

Each ``@njit(cache=True)`` function is compiled for exactly one signature (the wrappers below cast
their arguments), well under a second each on first use here, then loaded from numba's cache. The
arithmetic is the reference's, written as loops:

- GEMM: int16 operands, products in int32, accumulation in an int32 array. Every store into it
  truncates, so the sum wraps modulo 2**32 exactly as the reference's int64-then-wrap does.
- Floats stay float32 where the reference uses float32 (numba keeps float32 op float32 in float32);
  ``np.rint`` rounds half to even; ``fastmath`` is off.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from ..reference.gemm import Arithmetic
from ..reference.quantize import integer_range


@njit(cache=True)
def _gemm_exact(a, b):
    batch, m_size, k_size = a.shape
    n_size = b.shape[2]
    out = np.zeros((batch, m_size, n_size), np.int32)
    for t in range(batch):
        for m in range(m_size):
            row = out[t, m]
            for k in range(k_size):
                av = np.int32(a[t, m, k])
                bk = b[t, k]
                for n in range(n_size):
                    row[n] += av * np.int32(bk[n])
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
def _saturate(value, lo, hi):
    """float64 -> int32 clamp to [lo, hi]; NaN becomes lo, as in the reference."""
    if not value >= lo:
        return np.int32(lo)
    return np.int32(min(value, hi))


@njit(cache=True)
def _requantize(acc, multiplier, zero_point, lo, hi):
    out = np.empty(acc.size, np.int32)
    for i in range(acc.size):
        scaled = np.rint(np.float32(acc[i]) * multiplier[i])
        out[i] = _saturate(np.float64(scaled) + zero_point[i], lo, hi)
    return out


@njit(cache=True)
def _quantize(x, scale, zero_point, lo, hi):
    out = np.empty(x.size, np.int32)
    for i in range(x.size):
        out[i] = _saturate(np.float64(np.rint(x[i] / scale[i])) + zero_point[i], lo, hi)
    return out


def _c(value, dtype) -> np.ndarray:
    """A C-contiguous writable array: numba compiles read-only arrays as another signature."""
    array = np.ascontiguousarray(value, dtype)
    return array if array.flags.writeable else array.copy()


def _flat(value, shape, dtype) -> np.ndarray:
    return _c(np.broadcast_to(np.asarray(value, dtype), shape), dtype).reshape(-1)


def gemm_exact(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return _gemm_exact(_c(a, np.int16), _c(b, np.int16))


def gemm_pair_saturate(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return _gemm_pair_saturate(_c(a, np.int16), _c(b, np.int16))


def requantize(acc: np.ndarray, multiplier, zero_point, dtype) -> np.ndarray:
    """Same contract as the reference ``requantize``."""
    lo, hi = integer_range(dtype)
    shape = np.broadcast_shapes(acc.shape, np.shape(multiplier), np.shape(zero_point))
    out = _requantize(_flat(acc, shape, np.int32), _flat(multiplier, shape, np.float32),
                      _flat(zero_point, shape, np.int32), lo, hi)
    return out.reshape(shape).astype(dtype)


def quantize(x: np.ndarray, scale: np.ndarray, zero_point, dtype) -> np.ndarray:
    """``saturate(rint(x / scale) + zero_point)`` for float32 ``x`` and ``scale`` broadcast against it."""
    lo, hi = integer_range(dtype)
    out = _quantize(_flat(x, x.shape, np.float32), _flat(scale, x.shape, np.float32),
                    _flat(zero_point, x.shape, np.int32), lo, hi)
    return out.reshape(x.shape).astype(dtype)


JIT = Arithmetic(gemm_exact, gemm_pair_saturate, requantize)
