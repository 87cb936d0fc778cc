"""QLinearSoftmax (``com.microsoft``, numpy reference): onnxruntime's lookup-table softmax.

onnxruntime replaces ``DequantizeLinear -> Softmax -> QuantizeLinear`` with it
(``contrib_ops/cpu/quantization/qlinear_softmax.cc``). It is not the float softmax requantized: the
exponentials come from a 256-entry float32 table and the output scale is truncated to an integer::

    shift    = max(0, logf(float32(FLT_MAX / D)) - 5) / x_scale                  (logf: float32)
    table[i] = float32(exp((i - 255 + shift) * x_scale)),  i = 0..255           (float64, then float32)
    uint8:  e = table[255 - max(x) + x]                  (the row maximum lands on entry 255)
    int8:   e = table'[uint8(127 - max(x) + x)]           (table' = table indexed by i - 128)
    sum     = float32 sum of e over the row, in order
    y       = saturate(round_half_even(e * floor(1 / y_scale) / sum) + y_zero_point)   (float64 quotient)

with ``D`` the softmax length (opset < 13: the flattened size from ``axis`` on; opset 13: ``shape[axis]``,
the axis moved last). The kernel takes the logarithm of a float, a float32 ``logf`` (here the double logarithm
rounded to float32, which is glibc's ``logf`` for every length but a few past 60,000): a table built on the
double logarithm differs by a common factor, which cancels in ``e / sum`` only up to rounding, so near-ties
would round the other way. The quotient is taken in float64 (onnxruntime's results: a float32 quotient lands on
half steps that onnxruntime's does not; and for ``D = 1``, where the table's entry 255 is ``FLT_MAX / e^5``,
onnxruntime gives ``floor(1 / y_scale) + y_zero_point``, saturated, where a float32 product would overflow).
``x_zero_point`` cancels out (softmax is shift-invariant) and is not read.
"""

from __future__ import annotations

import math

import numpy as np

from ..registry import register
from .quantize import saturate

FLT_MAX = np.finfo(np.float32).max


def exp_table(x_scale: float, length: int, signed: bool) -> np.ndarray:
    """The 256 float32 exponentials, indexed as the kernel reads them."""
    log = float(np.float32(math.log(float(FLT_MAX / np.float32(length)))))
    shift = max(0.0, log - 5.0) / float(np.float32(x_scale))
    values = np.exp((np.arange(256, dtype=np.float64) - 255 + shift) * float(np.float32(x_scale))).astype(np.float32)
    return np.roll(values, -128) if signed else values


def _softmax_rows(x: np.ndarray, table: np.ndarray, y_scale: np.float32, y_zero_point: int) -> np.ndarray:
    """The kernel on ``(N, D)`` rows."""
    if x.dtype == np.int8:
        index = (127 - x.max(axis=1, keepdims=True).astype(np.int32) + x).astype(np.uint8)
    else:
        index = 255 - x.max(axis=1, keepdims=True).astype(np.int32) + x
    e = table[index]
    total = np.cumsum(e, axis=1, dtype=np.float32)[:, -1:]  # sequential float32 sum, as the kernel's loop
    ratio = e.astype(np.float64) * np.float64(y_scale) / total.astype(np.float64)
    q = np.rint(ratio).astype(np.int64) + y_zero_point
    return saturate(q.astype(np.float64), x.dtype)


@register("QLinearSoftmax", domain="com.microsoft", since=1)
def QLinearSoftmax(X, X_scale, x_zero_point, y_scale, y_zero_point=None, *, axis=-1, opset=13):
    """Softmax of a quantized ``X`` by onnxruntime's table method (module docstring)."""
    axis = axis + X.ndim if axis < 0 else axis
    moved = opset >= 13 and axis != X.ndim - 1
    x = np.swapaxes(X, axis, -1) if moved else X
    rows = x.reshape(-1, x.shape[-1]) if opset >= 13 else x.reshape(int(np.prod(x.shape[:axis])), -1)
    table = exp_table(np.asarray(X_scale).reshape(()), rows.shape[1], X.dtype == np.int8)
    y_scale = np.floor(np.float32(1.0) / np.float32(np.asarray(y_scale).reshape(())))
    zero = 0 if y_zero_point is None else int(np.asarray(y_zero_point).reshape(()))
    y = _softmax_rows(np.ascontiguousarray(rows), table, np.float32(y_scale), zero).reshape(x.shape)
    return np.swapaxes(y, axis, -1) if moved else y
