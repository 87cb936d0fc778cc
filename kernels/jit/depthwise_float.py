"""Depthwise 2-D convolution in float, forward and both gradients, as numba loops for the torch backend.

A depthwise convolution (one filter per channel, ``group`` = channels) does little arithmetic per element, and
torch's CPU kernels for it, above all its backward, run far below the machine's speed; the MobileNet-style
models that quantization-aware training runs on have dozens of them. These loops compute, on an input already
padded (``x``: ``[N, C, H, W]``, ``w``: ``[C, KH, KW]``, strides and dilations), with ``oh, ow`` over the
output and ``i = oh·sh + kh·dh``, ``j = ow·sw + kw·dw``:

* ``y[n, c, oh, ow] = Σ_{kh, kw} x[n, c, i, j] · w[c, kh, kw]``
* ``dx[n, c, i, j] += dy[n, c, oh, ow] · w[c, kh, kw]``
* ``dw[c, kh, kw] = Σ_{n, oh, ow} dy[n, c, oh, ow] · x[n, c, i, j]`` (float64 sums)

The innermost loop runs along an output row, so that it vectorizes with stride 1. The loops run on one
thread: numba's OpenMP threads would spin beside torch's own and starve other processes on the same cores.
The sums are float32 in another order than torch's: on integer-valued operands under 2^24 (the integer
layers of :mod:`qcompiler.qat.units`) they are exact either way.
"""

from __future__ import annotations

import numpy as np
from numba import njit


def forward(x, w, sh, sw, dh, dw, out_h, out_w):
    """``y`` from the padded input ``x`` and the filters ``w`` (``[C, KH, KW]``)."""
    y = np.zeros((x.shape[0], x.shape[1], out_h, out_w), x.dtype)
    _correlate(y, x, w, sh, sw, dh, dw, out_h, out_w, False)
    return y


def grad_input(dy, w, sh, sw, dh, dw, in_h, in_w):
    """``dx`` (of the padded input) from the output's gradient ``dy``."""
    dx = np.zeros((dy.shape[0], dy.shape[1], in_h, in_w), dy.dtype)
    _correlate(dx, dy, w, sh, sw, dh, dw, dy.shape[2], dy.shape[3], True)
    return dx


@njit(cache=True)
def _correlate(target, source, w, sh, sw, dh, dw, out_h, out_w, scatter):
    """``target[out] += w · source[in]`` over every tap and output position (the forward), or with
    ``scatter`` ``target[in] += w · source[out]`` (the input's gradient)."""
    channels = target.shape[1]
    for nc in range(target.shape[0] * channels):
        n, c = nc // channels, nc % channels
        for kh in range(w.shape[1]):
            for kw in range(w.shape[2]):
                tap = w[c, kh, kw]
                for oh in range(out_h):
                    i = oh * sh + kh * dh
                    out, row = (target[n, c, i], source[n, c, oh]) if scatter else (target[n, c, oh], source[n, c, i])
                    into, into_step = (kw * dw, sw) if scatter else (0, 1)
                    start, step = (0, 1) if scatter else (kw * dw, sw)
                    if sw == 1:
                        window, values = out[into:into + out_w], row[start:start + out_w]
                        for ow in range(out_w):
                            window[ow] += tap * values[ow]
                    else:
                        for ow in range(out_w):
                            out[into + ow * into_step] += tap * row[start + ow * step]


@njit(cache=True, fastmath={"reassoc"})
def grad_weight(dy, x, sh, sw, dh, dw, kernel_h, kernel_w):
    batch, channels, out_h, out_w = dy.shape
    dw_ = np.zeros((channels, kernel_h, kernel_w))
    for c in range(channels):
        for kh in range(kernel_h):
            for kw in range(kernel_w):
                total = 0.0
                for n in range(batch):
                    for oh in range(out_h):
                        row, grad = x[n, c, oh * sh + kh * dh], dy[n, c, oh]
                        if sw == 1:
                            window = row[kw * dw:kw * dw + out_w]
                            for ow in range(out_w):
                                total += grad[ow] * window[ow]
                        else:
                            for ow in range(out_w):
                                total += grad[ow] * row[ow * sw + kw * dw]
                dw_[c, kh, kw] = total
    return dw_


__all__ = ["forward", "grad_input", "grad_weight"]
