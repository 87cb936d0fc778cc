"""QLinearAdd (``com.microsoft``, numpy reference), as MLAS computes it on x86 with AVX2.

onnxruntime replaces ``DequantizeLinear x2 -> Add -> QuantizeLinear`` with QLinearAdd; on x86-64 with
AVX2 (with or without VNNI) MLAS runs ``MlasQLinearAddKernelAvx2Helper``
(``core/mlas/lib/intrinsics/avx2/qladd_avx2.cpp``), which works on the raw integers in float32::

    ra = a_scale / c_scale,  rb = b_scale / c_scale                       (float32)
    fixed = float(c_zero_point) - fma(ra, a_zero_point, rb * b_zero_point) (float32)
    c = saturate(round_half_even(fma(a, ra, fma(b, rb, fixed))))           (both inputs vectors)

``fixed`` is scalar C++ (``ra * za + rb * zb``) that the compiler contracts into an fma (GCC's default
``-ffp-contract=fast`` in the FMA-enabled AVX2 file): found by an element where only the contracted
form reproduces onnxruntime 1.32 (tests/kernels/test_contrib_vs_onnxruntime.py).

When one input is constant along the innermost broadcast span, MLAS folds it into ``fixed`` first with
a separate multiply and add (``fixed += b * rb``), then applies one fma for the other input. An fma
rounds once: it is computed here exactly in float64 (an 8-bit integer times a float32 has at most 32
significant bits) and rounded to float32. The result differs from DequantizeLinear -> float Add ->
QuantizeLinear by one unit in a few elements, which is why the executor models it.
"""

from __future__ import annotations

import numpy as np

from ..registry import register
from .quantize import saturate


def _fma(x: np.ndarray, ratio: np.float32, addend) -> np.ndarray:
    """float32 ``x * ratio + addend`` rounded once."""
    return (x.astype(np.float64) * np.float64(ratio) + np.asarray(addend, np.float64)).astype(np.float32)


def _span_scalar(shape: tuple[int, ...], out: tuple[int, ...]) -> bool:
    """Whether an input of ``shape`` is one value per innermost broadcast span of ``out``."""
    shape = (1,) * (len(out) - len(shape)) + tuple(shape)
    inner = [i for i, d in enumerate(out) if d != 1]
    return bool(inner) and shape[inner[-1]] == 1


@register("QLinearAdd", domain="com.microsoft", since=1)
def QLinearAdd(A, A_scale, A_zero_point, B, B_scale, B_zero_point, C_scale, C_zero_point):
    """``C = quantize(dequantize(A) + dequantize(B))`` in MLAS's AVX2 arithmetic (module docstring)."""
    f32 = np.float32
    c_scale = f32(np.asarray(C_scale).reshape(()))
    ra, rb = f32(f32(np.asarray(A_scale).reshape(())) / c_scale), f32(f32(np.asarray(B_scale).reshape(())) / c_scale)
    za = 0 if A_zero_point is None else int(np.asarray(A_zero_point).reshape(()))
    zb = 0 if B_zero_point is None else int(np.asarray(B_zero_point).reshape(()))
    zc = np.asarray(0 if C_zero_point is None else C_zero_point, A.dtype).reshape(())
    fixed = f32(f32(zc) - _fma(np.float32(za), ra, f32(rb * f32(zb))))
    out = np.broadcast_shapes(A.shape, B.shape)
    a, b = A.astype(np.float32), B.astype(np.float32)
    if _span_scalar(B.shape, out) and not _span_scalar(A.shape, out):
        value = _fma(a, ra, (fixed + b * rb).astype(np.float32))
    elif _span_scalar(A.shape, out) and not _span_scalar(B.shape, out):
        value = _fma(b, rb, (fixed + a * ra).astype(np.float32))
    else:
        value = _fma(a, ra, _fma(b, rb, fixed))
    return saturate(np.broadcast_to(np.rint(value), out).astype(np.float64), zc.dtype)
