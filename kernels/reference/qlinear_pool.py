"""QLinearGlobalAveragePool (``com.microsoft``, numpy reference).

onnxruntime replaces ``DequantizeLinear -> GlobalAveragePool -> QuantizeLinear`` with it; MLAS
(``core/mlas/lib/qlgavgpool.cpp``, ``MlasQLinearGlobalAveragePoolNchw/Nhwc``) sums the raw integers
exactly in int32 and requantizes once::

    acc = sum(x) - x_zero_point * S                          (S = number of spatial positions)
    y   = saturate(round_half_even(float32(acc) * (x_scale / (y_scale * float32(S)))) + y_zero_point)

the multiplier computed in float32 in that order.
"""

from __future__ import annotations

import numpy as np

from ..registry import register
from .quantize import requantize


@register("QLinearGlobalAveragePool", domain="com.microsoft", since=1)
def QLinearGlobalAveragePool(X, x_scale, x_zero_point, y_scale, y_zero_point, *, channels_last=0):
    """Global average pooling of a quantized ``X`` (NC... or, with ``channels_last``, N...C)."""
    axes = tuple(range(1, X.ndim - 1)) if channels_last else tuple(range(2, X.ndim))
    size = int(np.prod([X.shape[a] for a in axes]))
    zero = 0 if x_zero_point is None else int(np.asarray(x_zero_point).reshape(()))
    acc = X.sum(axis=axes, keepdims=True, dtype=np.int64) - zero * size
    multiplier = np.float32(x_scale) / (np.float32(y_scale) * np.float32(size))
    y_zero_point = np.asarray(0 if y_zero_point is None else y_zero_point, X.dtype).reshape(())
    return requantize(acc.astype(np.int32), multiplier, y_zero_point, X.dtype)
