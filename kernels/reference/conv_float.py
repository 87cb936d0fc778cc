"""Conv and ConvTranspose on floats (numpy): the float convolutions a partly quantized graph keeps.

``Conv``: the patches of :func:`.conv.im2col` (padding 0) times the weights, one float32 BLAS GEMM per
group, plus the bias. ``ConvTranspose``: each input pixel times the kernel (one GEMM,
``(N*S, C/g) @ (C/g, M/g * prod(k))``), the products scattered onto the full output with
``stride``/``dilation`` (one strided add per kernel position, in kernel order), then the ONNX
padding cropped away. Output size, padding and ``auto_pad`` follow the ONNX operator definitions:
``out = stride * (in - 1) + output_padding + (k - 1) * dilation + 1 - pad_begin - pad_end``, or, with
``output_shape`` (or ``SAME_*``), the total padding that gives it, split as the spec says (the odd
unit at the end for ``SAME_UPPER``, at the beginning otherwise).

Sums are float32 in BLAS order: results agree with onnxruntime's to float32 rounding, not bit for bit
(MLAS blocks its sums differently); the quantized paths that must be exact are the integer kernels.
"""

from __future__ import annotations

import itertools

import numpy as np

from ..registry import register
from .conv import conv_pads, im2col


@register("Conv", since=1)
def Conv(X, W, B=None, *, auto_pad="NOTSET", dilations=None, group=1, kernel_shape=None, pads=None, strides=None):
    """``Y = conv(X, W) + B`` for float tensors (N-d, groups, dilations, ``auto_pad``)."""
    nd = X.ndim - 2
    kernel = list(W.shape[2:])
    strides = list(strides) if strides is not None else [1] * nd
    dilations = list(dilations) if dilations is not None else [1] * nd
    pads = conv_pads(X.shape[2:], kernel, strides, dilations, pads, auto_pad)
    cols, out = im2col(X, kernel, strides, dilations, pads, group, 0)
    m = W.shape[0]
    weights = W.reshape(group, m // group, W.shape[1], -1).transpose(0, 3, 2, 1).reshape(group, -1, m // group)
    y = np.matmul(cols, weights.astype(X.dtype))
    y = y.reshape((group, X.shape[0], -1, m // group)).transpose(1, 0, 3, 2).reshape((X.shape[0], m) + tuple(out))
    if B is not None:
        y = y + B.astype(X.dtype).reshape((1, -1) + (1,) * nd)
    return np.ascontiguousarray(y)


def _transpose_geometry(in_shape, kernel, strides, dilations, pads, output_padding, output_shape, auto_pad):
    """``(output sizes, begin pads)`` of ConvTranspose."""
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad
    nd = len(in_shape)
    full = [s * (i - 1) + p + (k - 1) * d + 1
            for i, k, s, d, p in zip(in_shape, kernel, strides, dilations, output_padding, strict=True)]
    if output_shape is not None or auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        out = list(output_shape)[-nd:] if output_shape is not None else [i * s for i, s in zip(in_shape, strides)]
        begin = []
        for f, o in zip(full, out, strict=True):
            total = max(0, f - o)
            begin.append(total // 2 if auto_pad == "SAME_UPPER" else total - total // 2)
        return out, begin
    pads = list(pads) if pads is not None and auto_pad != "VALID" else [0] * (2 * nd)
    return [f - pads[i] - pads[nd + i] for i, f in enumerate(full)], pads[:nd]


@register("ConvTranspose", since=1)
def ConvTranspose(X, W, B=None, *, auto_pad="NOTSET", dilations=None, group=1, kernel_shape=None,
                  output_padding=None, output_shape=None, pads=None, strides=None):
    """The transposed convolution of float tensors (module docstring)."""
    nd = X.ndim - 2
    n, c = X.shape[:2]
    kernel = list(W.shape[2:])
    strides = list(strides) if strides is not None else [1] * nd
    dilations = list(dilations) if dilations is not None else [1] * nd
    output_padding = list(output_padding) if output_padding is not None else [0] * nd
    out, begin = _transpose_geometry(X.shape[2:], kernel, strides, dilations, pads, output_padding, output_shape,
                                     auto_pad)
    mg = W.shape[1]
    pixels = np.moveaxis(X.reshape((n, group, c // group, -1)), 2, -1)  # (N, g, S, C/g)
    weights = W.reshape(group, c // group, -1).astype(X.dtype)  # (g, C/g, M/g * prod(k))
    cols = np.matmul(pixels, weights[None]).reshape((n, group) + tuple(X.shape[2:]) + (mg,) + tuple(kernel))
    full = [s * (i - 1) + p + (k - 1) * d + 1
            for i, k, s, d, p in zip(X.shape[2:], kernel, strides, dilations, output_padding, strict=True)]
    y = np.zeros((n, group, mg) + tuple(max(f, b + o) for f, b, o in zip(full, begin, out)), X.dtype)
    for position in itertools.product(*(range(k) for k in kernel)):
        contribution = np.moveaxis(cols[(Ellipsis,) + position], -1, 2)  # (N, g, M/g, *S)
        window = tuple(slice(p * d, p * d + s * (i - 1) + 1, s)
                       for p, d, s, i in zip(position, dilations, strides, X.shape[2:], strict=True))
        y[(slice(None),) * 3 + window] += contribution
    y = y[(slice(None),) * 3 + tuple(slice(b, b + o) for b, o in zip(begin, out, strict=True))]
    y = y.reshape((n, group * mg) + tuple(out))
    if B is not None:
        y = y + B.astype(X.dtype).reshape((1, -1) + (1,) * nd)
    return np.ascontiguousarray(y)
