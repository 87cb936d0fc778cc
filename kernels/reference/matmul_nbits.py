"""``com.microsoft::MatMulNBits`` (numpy reference): ``Y = A @ Wᵀ (+ bias)`` with ``W`` ``[N, K]`` in
``bits``-bit blocks (onnxruntime's layout: ``qcompiler.weight_only.matmulnbits``); and
``com.microsoft::GatherBlockQuantized``: the rows of such a table that ``indices`` select, dequantized.

``W = (q - z) · s`` per block of ``block_size`` along K, ``q`` unpacked from ``B`` (:func:`qcompiler.ir.quant.
unpack_bits`), ``z`` from the packed uint8 ``zero_points``, a float ``zero_points`` of the scales' shape
(``W = (q - z) · s`` with that float), or ``2^(bits-1)`` when absent.

``accuracy_level`` 4 models onnxruntime's CPU kernel (MLAS ``CompInt8``): each row of ``A`` is quantized
per block of ``block_size`` along K to int8, symmetric, ``s_a = max|a| / 127`` and ``a_q = round(a / s_a)``
(computed as ``a · (1 / s_a)`` in float32, round half to even), and
``Y = Σ_blocks s_a · s_w · Σ a_q (q - z)`` — the integer sums exact, the block sums in float32. Other
levels dequantize ``W`` to float32 and multiply in float32. Either way the result matches onnxruntime up
to the order of float32 additions (a few ulps of the row's magnitude; the tests state the bound).
"""

from __future__ import annotations

import numpy as np

from qcompiler.ir.quant import unpack_bits

from ..registry import register


def nbits_weight(B, scales, zero_points, *, K: int, N: int, bits: int, block_size: int) -> tuple[np.ndarray, ...]:
    """(q ``[N, blocks, block]`` int64, scale ``[N, blocks, 1]`` float32, zero point ``[N, blocks, 1]``)."""
    blocks = -(-K // block_size)
    q = unpack_bits(np.asarray(B).reshape(N, blocks, -1), bits, block_size).astype(np.int64)
    scale = np.asarray(scales, np.float32).reshape(N, blocks, 1)
    if zero_points is None:
        zero = np.full((N, blocks, 1), 1 << (bits - 1), np.int64)
    elif np.asarray(zero_points).dtype == np.uint8:
        zero = unpack_bits(np.asarray(zero_points).reshape(N, -1), bits, blocks).astype(np.int64).reshape(N, blocks, 1)
    else:
        zero = np.asarray(zero_points, np.float32).reshape(N, blocks, 1)
    return q, scale, zero


def _int8_blocks(a: np.ndarray, K: int, block_size: int) -> tuple[np.ndarray, np.ndarray]:
    """(a_q ``[M, blocks, block]`` int64, s_a ``[M, blocks]``) of the rows of ``a`` (``[M, K]``)."""
    blocks = -(-K // block_size)
    padded = np.pad(a, ((0, 0), (0, blocks * block_size - K))).reshape(len(a), blocks, block_size)
    scale = (np.abs(padded).max(axis=2) / np.float32(127)).astype(np.float32)
    inverse = np.where(scale > 0, np.float32(1) / np.where(scale > 0, scale, 1), 0).astype(np.float32)
    return np.rint(padded * inverse[..., None]).astype(np.int64), scale


@register("MatMulNBits", domain="com.microsoft", since=1)
def MatMulNBits(A, B, scales, zero_points=None, g_idx=None, bias=None, *, K, N, bits=4, block_size,
                accuracy_level=0):
    """See the module docstring; ``g_idx`` (act-order groups) is not supported."""
    if g_idx is not None:
        raise NotImplementedError("MatMulNBits with g_idx is not supported")
    q, scale, zero = nbits_weight(B, scales, zero_points, K=K, N=N, bits=bits, block_size=block_size)
    a = np.asarray(A, np.float32)
    rows = a.reshape(-1, K)
    if accuracy_level == 4 and zero.dtype == np.int64:
        a_q, a_scale = _int8_blocks(rows, K, block_size)
        sums = np.einsum("mbk,nbk->mnb", a_q, q - zero).astype(np.float32)  # exact integer block sums
        y = (sums * (a_scale[:, None, :] * scale[None, :, :, 0])).sum(axis=2, dtype=np.float32)
    else:
        w = ((q - zero).astype(np.float32) * scale).reshape(N, -1)[:, :K]
        y = rows @ w.T
    if bias is not None:
        y = y + np.asarray(bias, np.float32)
    return y.reshape(a.shape[:-1] + (N,)).astype(np.float32)


@register("GatherBlockQuantized", domain="com.microsoft", since=1)
def GatherBlockQuantized(data, indices, scales, zero_points=None, *, gather_axis=0, quantize_axis=1, block_size=128,
                         bits=4):
    """``(q - z) · s`` of the rows ``indices`` selects from a ``[V, D]`` table in uint8-packed ``bits``-bit
    blocks of ``block_size`` along D (``qcompiler.weight_only.matmulnbits``); gather axis 0, quantize axis 1."""
    data = np.asarray(data)
    if gather_axis != 0 or quantize_axis not in (1, -1) or data.ndim != 2 or data.dtype != np.uint8:
        raise NotImplementedError("GatherBlockQuantized: only a uint8-packed 2-D table, gather axis 0, "
                                  "quantize axis 1 are supported")
    rows = np.asarray(indices, np.int64)
    rows = np.where(rows < 0, rows + data.shape[0], rows).reshape(-1)
    scale = np.asarray(scales, np.float32)[rows]
    blocks, depth = scale.shape[1], data.shape[1] * (8 // bits)
    if -(-depth // block_size) != blocks:
        raise ValueError(f"GatherBlockQuantized: scales for {blocks} blocks do not fit rows of {depth} values")
    q = unpack_bits(data[rows], bits, depth).astype(np.float32)
    if zero_points is None:
        zero = np.full(scale.shape, 1 << (bits - 1), np.float32)
    else:
        zero = unpack_bits(np.asarray(zero_points)[rows], bits, blocks).astype(np.float32)
    y = (q - np.repeat(zero, block_size, axis=1)[:, :depth]) * np.repeat(scale, block_size, axis=1)[:, :depth]
    return y.astype(np.float32).reshape(np.shape(indices) + (depth,))
