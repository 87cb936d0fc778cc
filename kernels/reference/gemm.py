"""The integer matrix-multiply core behind MatMulInteger, QLinearMatMul and (via im2col) the integer
convolutions, with the accumulation profiles that model the target's arithmetic.

    C[b, m, n] = sum_k (A[b, m, k] - za[b, m]) * (B[b, k, n] - zb[b, n])      (int32)

``accumulation="exact"``
    The exact sum, wrapped to int32 (two's complement) in the rare case it leaves int32: the ONNX spec
    lets "accumulation overflow if and only if in 32 bits". This is what onnx.reference and x86 with
    VNNI (``vpdpbusd``) compute.

``accumulation="avx2_pair_saturate"``
    x86 with AVX2 but without VNNI, onnxruntime's MLAS u8 x s8 GEMM kernel. ``vpmaddubsw`` multiplies
    the raw uint8 A by the raw int8 B (zero points not yet applied) and adds the products of the two
    adjacent k ``(2j, 2j+1)`` into an int16 *with signed saturation*; ``vpmaddwd``/``vpaddd`` then
    widen and add those int16 into int32 exactly. The zero points are applied afterwards through row
    and column sums::

        C = sum_j sat16(A[m,2j] B[2j,n] + A[m,2j+1] B[2j+1,n]) - zb rowsum(A) - za colsum(B) + K za zb

    Only a uint8 A times an int8 B saturates (x = 255, 255 and w = 127, 127 give 64770 -> 32767);
    every other type pair takes an exact path on that CPU, and is computed exactly here.

    Evidence (tests/kernels/test_avx2_profile.py re-checks it when ``qemu-x86_64`` is installed):
    onnxruntime 1.32 run under ``qemu-x86_64 -cpu Haswell-v4`` (AVX2, no VNNI) matched this profile
    bit for bit on 143 MatMulInteger/QLinearMatMul/QLinearConv/ConvInteger models with extreme
    values (K from 4 to 1024, odd K, batches, 1-D/2-D/3-D convs, groups, depthwise, zero points per
    tensor and per channel), the exact profile on 74 of them not; the pairs are (k, k+1) for even k.
    u8 x u8, s8 x s8 and int8 activations were exact there. Run natively on a CPU with VNNI, the same
    onnxruntime gives the exact profile on all 143. How convolutions map onto this core (k order,
    which kernels MLAS picks) is described in :mod:`.conv`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .quantize import requantize

ACCUMULATIONS = ("exact", "avx2_pair_saturate")


@dataclass(frozen=True)
class Arithmetic:
    """The hot loops a backend provides; the op kernels are written once around them.

    ``gemm_exact(a, b)`` and ``gemm_pair_saturate(a, b)`` take C-contiguous int16 ``a (Bt, M, K)``
    and ``b (Bt, K, N)`` and return int32 ``(Bt, M, N)``, wrapped modulo 2**32. ``requantize`` has
    the signature of :func:`.quantize.requantize`. ``depthwise2d(xp, w, strides, dilations, out)``,
    optional, is the exact depthwise 2-D convolution of zero-point-adjusted int16 ``xp (N, C, Hp, Wp)``
    (already padded) by ``w (C, KH, KW)`` into int32 ``(N, C, *out)``; without it depthwise
    convolutions take the im2col GEMM path.
    """

    gemm_exact: Callable[[np.ndarray, np.ndarray], np.ndarray]
    gemm_pair_saturate: Callable[[np.ndarray, np.ndarray], np.ndarray]
    requantize: Callable[..., np.ndarray]
    depthwise2d: Callable[..., np.ndarray] | None = None


def gemm_exact(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Exact integer GEMM through float64 BLAS: every |product| is < 2**16 (int16 operands hold
    zero-point-adjusted 8-bit values), so sums stay exact while K < 2**37. Wrapped to int32."""
    return np.matmul(a.astype(np.float64), b.astype(np.float64)).astype(np.int64).astype(np.int32)


def gemm_pair_saturate(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Products of k pairs (2j, 2j+1) summed, saturated to int16, accumulated in int32 (wrapping).
    An odd K's last product pairs with zero padding, as in MLAS's packed K."""
    a, b = a.astype(np.float64), b.astype(np.float64)
    acc = np.zeros(a.shape[:-1] + b.shape[-1:], np.int64)
    for k in range(0, a.shape[-1], 2):
        acc += np.clip(np.matmul(a[..., k:k + 2], b[:, k:k + 2, :]), -32768, 32767).astype(np.int64)
    return acc.astype(np.int32)


REFERENCE = Arithmetic(gemm_exact, gemm_pair_saturate, requantize)


def integer_matmul(a: np.ndarray, b: np.ndarray, a_zero_point=0, b_zero_point=0, *,
                   accumulation: str = "exact", arith: Arithmetic = REFERENCE) -> np.ndarray:
    """int32 ``(Bt, M, N)`` = ``(a - a_zero_point) @ (b - b_zero_point)`` under ``accumulation``.

    ``a (Bt, M, K)`` and ``b (Bt, K, N)`` are uint8 or int8; ``a_zero_point`` broadcasts against
    ``(Bt, M, 1)`` (per tensor or per row), ``b_zero_point`` against ``(Bt, 1, N)`` (per column).
    """
    if accumulation not in ACCUMULATIONS:
        raise ValueError(f"accumulation must be one of {ACCUMULATIONS}, got {accumulation!r}")
    za = np.asarray(a_zero_point, np.int64)
    zb = np.asarray(b_zero_point, np.int64)
    if accumulation == "exact" or not (a.dtype == np.uint8 and b.dtype == np.int8):
        return arith.gemm_exact(np.subtract(a, za.astype(np.int16), dtype=np.int16),
                                np.subtract(b, zb.astype(np.int16), dtype=np.int16))
    raw = arith.gemm_pair_saturate(np.ascontiguousarray(a, np.int16), np.ascontiguousarray(b, np.int16))
    rowsum = a.sum(axis=-1, keepdims=True, dtype=np.int64)
    colsum = b.sum(axis=-2, keepdims=True, dtype=np.int64)
    return (raw - zb * rowsum - za * colsum + a.shape[-1] * za * zb).astype(np.int32)
