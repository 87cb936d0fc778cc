"""MatMulInteger and QLinearMatMul (numpy reference), on the core of :mod:`.gemm`.

Both follow ``numpy.matmul`` shapes: 1-D operands are promoted and the added axis removed again, and
batch dimensions broadcast. Zero points and scales of ``A`` are per tensor or per row (shape ``(M,)``
or ``(..., M, 1)``), those of ``B`` (and of ``y``) per tensor or per column (``(N,)`` or
``(..., 1, N)``).

``accumulation`` is not an ONNX attribute: it selects the accumulation profile of the target
(see :mod:`.gemm`), ``"exact"`` by default.
"""

from __future__ import annotations

import numpy as np

from ..registry import register
from .gemm import REFERENCE, Arithmetic, integer_matmul


def _param(param, dtype=None) -> np.ndarray:
    """``param`` as an array; a single element becomes a 0-d array (per tensor)."""
    param = np.asarray(param, dtype)
    return param.reshape(()) if param.size == 1 else param


class MatMulLayout:
    """``A @ B`` as a stack of 2-D products ``(Bt, M, K) @ (Bt, K, N)``, and back.

    When ``B`` is 2-D (a weight), ``A``'s batch dimensions fold into M instead of copying ``B``.
    """

    def __init__(self, A: np.ndarray, B: np.ndarray):
        self.squeeze = [axis for axis, op in ((-2, A), (-1, B)) if op.ndim == 1]
        A2 = A[None, :] if A.ndim == 1 else A
        B2 = B[:, None] if B.ndim == 1 else B
        (M, K), N = A2.shape[-2:], B2.shape[-1]
        if B2.shape[-2] != K:
            raise ValueError(f"MatMul shapes do not match: {A.shape} @ {B.shape}")
        if B2.ndim == 2:
            self.batch, self.rows = (), A2.shape[:-1]
            self.a, self.b = A2.reshape(1, -1, K), B2[None]
        else:
            self.batch = np.broadcast_shapes(A2.shape[:-2], B2.shape[:-2])
            self.rows = self.batch + (M,)
            self.a = np.broadcast_to(A2, self.batch + (M, K)).reshape(-1, M, K)
            self.b = np.broadcast_to(B2, self.batch + (K, N)).reshape(-1, K, N)
        self.out_shape = self.rows + (N,)

    def row_param(self, param, dtype=None) -> np.ndarray:
        """A per-tensor or per-row parameter, laid out as ``(Bt, M, 1)`` (or 0-d)."""
        p = _param(param, dtype)
        if p.ndim == 0:
            return p
        p = p.reshape(-1, 1) if p.ndim == 1 else p
        return np.broadcast_to(p, self.rows + (1,)).reshape(self.a.shape[0], -1, 1)

    def column_param(self, param, dtype=None) -> np.ndarray:
        """A per-tensor or per-column parameter, laid out as ``(Bt, 1, N)`` (or 0-d)."""
        p = _param(param, dtype)
        if p.ndim == 0:
            return p
        p = p.reshape(1, -1) if p.ndim == 1 else p
        return np.broadcast_to(p, self.batch + p.shape[-2:]).reshape(-1, 1, p.shape[-1])

    def output(self, c: np.ndarray) -> np.ndarray:
        """``(Bt, M, N)`` back to the ``numpy.matmul`` output shape."""
        c = c.reshape(self.out_shape)
        return np.squeeze(c, axis=tuple(self.squeeze)) if self.squeeze else c


def matmul_integer(A, B, a_zero_point, b_zero_point, *, accumulation: str, arith: Arithmetic) -> np.ndarray:
    """MatMulInteger on ``arith``'s loops."""
    layout = MatMulLayout(A, B)
    za = 0 if a_zero_point is None else layout.row_param(a_zero_point)
    zb = 0 if b_zero_point is None else layout.column_param(b_zero_point)
    return layout.output(integer_matmul(layout.a, layout.b, za, zb, accumulation=accumulation, arith=arith))


def qlinear_matmul(a, a_scale, a_zero_point, b, b_scale, b_zero_point, y_scale, y_zero_point, *,
                   accumulation: str, arith: Arithmetic) -> np.ndarray:
    """QLinearMatMul on ``arith``'s loops."""
    layout = MatMulLayout(a, b)
    acc = integer_matmul(layout.a, layout.b, layout.row_param(a_zero_point), layout.column_param(b_zero_point),
                         accumulation=accumulation, arith=arith)
    multiplier = (layout.row_param(a_scale, np.float32) * layout.column_param(b_scale, np.float32)
                  / layout.column_param(y_scale, np.float32))
    y_zero_point = np.asarray(y_zero_point)
    return layout.output(arith.requantize(acc, multiplier, layout.column_param(y_zero_point), y_zero_point.dtype))


@register("MatMulInteger", since=10)
def MatMulInteger(A, B, a_zero_point=None, b_zero_point=None, *, accumulation="exact"):
    """``Y = (A - a_zero_point) @ (B - b_zero_point)`` in int32."""
    return matmul_integer(A, B, a_zero_point, b_zero_point, accumulation=accumulation, arith=REFERENCE)


@register("QLinearMatMul", since=10)
def QLinearMatMul(a, a_scale, a_zero_point, b, b_scale, b_zero_point, y_scale, y_zero_point, *,
                  accumulation="exact"):
    """``y = saturate(round_half_even(acc * (a_scale * b_scale / y_scale)) + y_zero_point)`` where
    ``acc = (a - a_zero_point) @ (b - b_zero_point)`` in int32 and the multiplier is float32."""
    return qlinear_matmul(a, a_scale, a_zero_point, b, b_scale, b_zero_point, y_scale, y_zero_point,
                          accumulation=accumulation, arith=REFERENCE)
