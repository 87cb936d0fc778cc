"""MaxPool and AveragePool (numpy reference), on ``sliding_window_view`` windows.

For input ``(N, C, *S)``, kernel ``k``, strides ``s``, dilations ``d`` and pads ``[begin..., end...]``
(or ``auto_pad``, as :func:`.conv.conv_pads`), each spatial output size is

    out = floor_or_ceil((S + begin + end - ((k - 1) * d + 1)) / s) + 1

and, with ``ceil_mode``, a last window that would start past ``S + begin`` is dropped (the ONNX rule).
Windows reaching past the padded input (ceil mode) see nothing there. MaxPool pads with the lowest
value of the type, so padding never wins; AveragePool divides the float32 window sum by the number of
input elements in the window, or, with ``count_include_pad``, by the elements inside the explicit
padding too; the window is summed in order (row-major), one float32 rounding per addition, as
MLAS's ``MlasPool`` does, so float results match onnxruntime's bit for bit. MaxPool works on any
real type (uint8 in quantized graphs, where onnxruntime drops the QDQ around it). Only the ``Y`` output is computed: a node asking for MaxPool's ``Indices`` falls back.
"""

from __future__ import annotations

import math

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from ..registry import register
from .conv import conv_pads


def _geometry(x: np.ndarray, kernel_shape, strides, dilations, pads, auto_pad, ceil_mode):
    """``(begin pads, end pads incl. ceil overflow, output sizes, strides, dilations)``."""
    nd = x.ndim - 2
    kernel = list(kernel_shape)
    strides = list(strides) if strides is not None else [1] * nd
    dilations = list(dilations) if dilations is not None else [1] * nd
    pads = conv_pads(x.shape[2:], kernel, strides, dilations, pads, auto_pad)
    begin, end, out = pads[:nd], list(pads[nd:]), []
    for i, (size, k, s, d) in enumerate(zip(x.shape[2:], kernel, strides, dilations, strict=True)):
        extent = (k - 1) * d + 1
        span = size + begin[i] + end[i] - extent
        count = (math.ceil(span / s) if ceil_mode else span // s) + 1
        if ceil_mode and (count - 1) * s >= size + begin[i]:
            count -= 1
        out.append(count)
        end[i] = max(end[i], (count - 1) * s + extent - size - begin[i])
    return begin, end, pads[nd:], out, strides, dilations


def _windows(x: np.ndarray, begin, end, out, kernel, strides, dilations, fill) -> np.ndarray:
    """``(N, C, *out, *kernel)`` windows of ``x`` padded with ``fill``."""
    nd = x.ndim - 2
    xp = np.pad(x, [(0, 0), (0, 0)] + list(zip(begin, end, strict=True)), constant_values=fill) \
        if any(begin) or any(end) else x
    extent = [(k - 1) * d + 1 for k, d in zip(kernel, dilations, strict=True)]
    windows = sliding_window_view(xp, extent, axis=tuple(range(2, 2 + nd)))
    index = ((slice(None),) * 2 + tuple(slice(0, (o - 1) * s + 1, s) for o, s in zip(out, strides, strict=True))
             + tuple(slice(None, None, d) for d in dilations))
    return windows[index]


@register("MaxPool", since=1)
def MaxPool(X, *, auto_pad="NOTSET", ceil_mode=0, dilations=None, kernel_shape=None, pads=None, storage_order=0,
            strides=None):
    """``Y[n, c, o] = max`` over the window at ``o`` (padding never selected)."""
    begin, end, _, out, strides, dilations = _geometry(X, kernel_shape, strides, dilations, pads, auto_pad, ceil_mode)
    lowest = -np.inf if np.issubdtype(X.dtype, np.floating) else np.iinfo(X.dtype).min
    windows = _windows(X, begin, end, out, kernel_shape, strides, dilations, lowest)
    return windows.max(axis=tuple(range(-len(out), 0)))


MaxPool.outputs = 1  # Indices is not computed here


@register("AveragePool", since=1)
def AveragePool(X, *, auto_pad="NOTSET", ceil_mode=0, count_include_pad=0, dilations=None, kernel_shape=None,
                pads=None, strides=None):
    """``Y[n, c, o] = sum(window) / count`` in float32 (``count`` as in the module docstring)."""
    begin, end, explicit_end, out, strides, dilations = _geometry(X, kernel_shape, strides, dilations, pads, auto_pad,
                                                                  ceil_mode)
    axes = tuple(range(-len(out), 0))
    windows = _windows(X, begin, end, out, kernel_shape, strides, dilations, 0)
    positions = np.ndindex(*kernel_shape)  # in window order, one rounding per addition, as MLAS
    total = windows[(Ellipsis,) + next(positions)].copy()
    for position in positions:
        total += windows[(Ellipsis,) + position]
    if not any(begin) and not any(end):  # every window lies inside the input
        return (total / X.dtype.type(math.prod(kernel_shape))).astype(X.dtype)
    counted = np.ones((1, 1) + X.shape[2:], X.dtype)  # the positions the divisor counts
    if count_include_pad:
        counted = np.pad(counted, [(0, 0), (0, 0)] + list(zip(begin, explicit_end, strict=True)), constant_values=1)
        begin = [0] * len(out)
        end = [e - p for e, p in zip(end, explicit_end, strict=True)]
    count = _windows(counted, begin, end, out, kernel_shape, strides, dilations, 0).sum(axis=axes, dtype=X.dtype)
    return (total / count).astype(X.dtype)
