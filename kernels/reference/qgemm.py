"""QGemm and MatMulIntegerToFloat (``com.microsoft``, numpy reference): the kernels onnxruntime's QDQ
fusions put in place of ``DequantizeLinear -> Gemm [-> QuantizeLinear]`` and of
``DequantizeLinear -> MatMul`` without a QuantizeLinear after it.

Semantics, from onnxruntime's ``contrib_ops/cpu/quantization/quant_gemm.cc`` and
``matmul_integer_to_float.cc`` (MLAS ``MlasGemmBatch`` with an output processor):

    acc = C + (A' - a_zero_point) @ (B' - b_zero_point)          int32, A' = A or A^T, B' = B or B^T
    QGemm, y_scale given:    y = saturate(round_half_even(float32(acc) * s) + y_zero_point),
                             s = ((alpha * a_scale) * b_scale[n]) / y_scale, in float32
    QGemm, no y_scale:       y = float32(acc) * ((alpha * a_scale) * b_scale[n])
    MatMulIntegerToFloat:    y = float32(acc) * (a_scale * b_scale[n]) + bias[n]

``C`` is the int32 bias (scalar, ``(N,)``, ``(1, N)``, ``(M, 1)`` or ``(M, N)``), added to the accumulator
before the products, so it never takes part in an int16 pair. ``accumulation`` selects the target's
accumulation profile (:mod:`.gemm`).
"""

from __future__ import annotations

import numpy as np

from ..registry import register
from .gemm import REFERENCE, Arithmetic, integer_matmul
from .matmul import MatMulLayout


def _column(param, n: int, dtype, rank: int = 3) -> np.ndarray:
    """A per-tensor or per-column parameter, 0-d or shaped ``(1, ..., 1, N)`` with ``rank`` axes."""
    param = np.asarray(param, dtype)
    return param.reshape(()) if param.size == 1 else param.reshape((1,) * (rank - 1) + (n,))


def qgemm(A, a_scale, a_zero_point, B, b_scale, b_zero_point, C, y_scale, y_zero_point, *, alpha: float,
          transA: int, transB: int, accumulation: str, arith: Arithmetic) -> np.ndarray:
    """QGemm on ``arith``'s loops."""
    a = A.T if transA else A
    b = B.T if transB else B
    n = b.shape[1]
    acc = integer_matmul(np.ascontiguousarray(a)[None], np.ascontiguousarray(b)[None],
                         np.asarray(a_zero_point).reshape(()), _column(b_zero_point, n, np.int64),
                         accumulation=accumulation, arith=arith)[0]
    if C is not None:
        acc = (acc.astype(np.int64) + np.asarray(C, np.int64)).astype(np.int32)
    scale = np.float32(alpha) * np.asarray(a_scale, np.float32).reshape(()) * _column(b_scale, n, np.float32, rank=2)
    if y_scale is None:
        return acc.astype(np.float32) * scale
    y_zero_point = np.asarray(y_zero_point)
    return arith.requantize(acc, scale / np.asarray(y_scale, np.float32).reshape(()), y_zero_point.reshape(()),
                            y_zero_point.dtype)


def matmul_integer_to_float(A, B, a_scale, b_scale, a_zero_point, b_zero_point, bias, *, accumulation: str,
                            arith: Arithmetic) -> np.ndarray:
    """MatMulIntegerToFloat on ``arith``'s loops (``numpy.matmul`` shapes, per-column ``B`` parameters)."""
    layout = MatMulLayout(A, B)
    za = 0 if a_zero_point is None else layout.row_param(a_zero_point)
    zb = 0 if b_zero_point is None else layout.column_param(b_zero_point)
    acc = integer_matmul(layout.a, layout.b, za, zb, accumulation=accumulation, arith=arith)
    y = acc.astype(np.float32) * (layout.row_param(a_scale, np.float32) * layout.column_param(b_scale, np.float32))
    y = layout.output(y)
    return y if bias is None else y + np.asarray(bias, np.float32)


@register("QGemm", domain="com.microsoft", since=1)
def QGemm(A, a_scale, a_zero_point, B, b_scale, b_zero_point, C=None, y_scale=None, y_zero_point=None, *,
          alpha=1.0, transA=0, transB=0, accumulation="exact"):
    """``com.microsoft::QGemm``: quantized Gemm with an int32 bias, quantized or float output."""
    return qgemm(A, a_scale, a_zero_point, B, b_scale, b_zero_point, C, y_scale, y_zero_point, alpha=alpha,
                 transA=transA, transB=transB, accumulation=accumulation, arith=REFERENCE)


@register("MatMulIntegerToFloat", domain="com.microsoft", since=1)
def MatMulIntegerToFloat(A, B, a_scale, b_scale, a_zero_point=None, b_zero_point=None, bias=None, *,
                         accumulation="exact"):
    """``com.microsoft::MatMulIntegerToFloat``: integer MatMul, float output scaled and biased."""
    return matmul_integer_to_float(A, B, a_scale, b_scale, a_zero_point, b_zero_point, bias,
                                   accumulation=accumulation, arith=REFERENCE)
