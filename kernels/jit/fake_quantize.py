"""The fake quantizer's forward and backward as one pass each over the tensor (numba).

:class:`qcompiler.kernels.torch_ops.quantize._FakeQuantize` states the arithmetic and its gradients; written
as torch ops it makes about ten passes over the tensor forward and five back, each allocating its result,
and quantization-aware training runs it on every activation of the model at every step. These loops make
one pass each and compute the same values: the forward element for element (the same float32 operations in
the same order, ``np.rint`` rounding half to even as ``torch.round``, ``fastmath`` off), the gradient of
``x`` exactly, and the per-channel sums of the step's and the rescale's gradients in float64 (torch sums in
the tensor's type, in another order; only these sums are reassociated, so that they vectorize).

Layout: ``x`` is viewed as ``[outer, channels, inner]`` with one value of the step, zero point and
multiplier per channel (:func:`channel_layout` finds the view; a per-tensor quantizer is one channel). The
innermost loop runs along the contiguous axis, which is the channels' own when ``inner`` is 1 (a MatMul
weight quantized per column), so that LLVM vectorizes it.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit


def channel_layout(shape: tuple[int, ...], *params: tuple[int, ...]) -> tuple[int, int, int] | None:
    """``(outer, channels, inner)`` such that every parameter shape (broadcast against ``shape``, aligned
    on the right) varies along one axis at most, the same for all; None when they vary along several."""
    axis = None
    for p in params:
        for i, n in enumerate(p, start=len(shape) - len(p)):
            if n != 1:
                if axis is not None and axis != i:
                    return None
                axis = i
    if axis is None:
        return 1, 1, math.prod(shape)
    return math.prod(shape[:axis]), shape[axis], math.prod(shape[axis + 1:])


@njit(cache=True, inline="always")
def _of(values, c):
    """A per-channel parameter's value at channel ``c``; one value stands for every channel."""
    return values[c] if values.shape[0] > 1 else values[0]


@njit(cache=True)
def _quantized(levels, z, qmin, qmax):
    """``(q, inside, slope)`` of one element's levels (see :func:`forward`)."""
    u = np.rint(levels) + z
    within = (u > qmin) & (u < qmax)
    q = min(max(u, qmin), qmax) - z
    return q, within, q - levels if within else q


@njit(cache=True)
def forward(x, multiplier, divide, zero, step, qmin, qmax, y, inside, slope):
    """``levels = x / m`` (``divide``) or ``x · m``; ``u = rint(levels) + z``; ``inside = qmin < u < qmax``;
    ``q = clamp(u, qmin, qmax) - z``; ``y = q · s``; ``slope = q - levels`` inside, else ``q``. All arrays
    ``[outer, channels, inner]`` (C order) but ``multiplier``, ``zero`` and ``step``: one value per channel,
    or one. The loop runs along the contiguous axis: ``inner``, or the channels when ``inner`` is 1."""
    outer, channels, inner = x.shape
    if inner == 1 and channels > 1:
        m, z, s = _full(multiplier, channels), _full(zero, channels), _full(step, channels)
        x2, y2, inside2, slope2 = (x.reshape(outer, channels), y.reshape(outer, channels),
                                   inside.reshape(outer, channels), slope.reshape(outer, channels))
        for o in range(outer):
            for c in range(channels):
                q, inside2[o, c], slope2[o, c] = _quantized(x2[o, c] / m[c] if divide else x2[o, c] * m[c], z[c],
                                                            qmin, qmax)
                y2[o, c] = q * s[c]
        return
    for o in range(outer):
        for c in range(channels):
            m, z, s = _of(multiplier, c), _of(zero, c), _of(step, c)
            for i in range(inner):
                q, inside[o, c, i], slope[o, c, i] = _quantized(x[o, c, i] / m if divide else x[o, c, i] * m, z,
                                                                qmin, qmax)
                y[o, c, i] = q * s


@njit(cache=True)
def _full(values, channels):
    return values if values.shape[0] == channels else np.full(channels, values[0])


@njit(cache=True, fastmath={"reassoc"})
def backward(grad, inside, slope, x, rescale, grad_x, grad_step, grad_rescale):
    """``grad_x = grad`` inside, else 0, times ``rescale`` (one value per channel, or one); per channel,
    ``grad_step += grad · slope`` and, when ``x`` is given (not empty), ``grad_rescale += grad · x`` inside
    (float64 sums, reassociated). Along the contiguous axis, as :func:`forward`."""
    outer, channels, inner = grad.shape
    with_x = x.shape[0] > 0
    if inner == 1 and channels > 1:
        r = _full(rescale, channels)
        g, passed, out, sl = (grad.reshape(outer, channels), inside.reshape(outer, channels),
                              grad_x.reshape(outer, channels), slope.reshape(outer, channels))
        xs = x.reshape(outer, channels) if with_x else g
        for o in range(outer):
            for c in range(channels):
                grad_step[c] += g[o, c] * sl[o, c]
                out[o, c] = (g[o, c] if passed[o, c] else np.float32(0)) * r[c]
            if with_x:
                for c in range(channels):
                    grad_rescale[c] += (g[o, c] if passed[o, c] else np.float32(0)) * xs[o, c]
        return
    for o in range(outer):
        for c in range(channels):
            r = _of(rescale, c)
            step_sum, rescale_sum = 0.0, 0.0
            for i in range(inner):
                step_sum += grad[o, c, i] * slope[o, c, i]
                grad_x[o, c, i] = (grad[o, c, i] if inside[o, c, i] else np.float32(0)) * r
            if with_x:
                for i in range(inner):
                    rescale_sum += (grad[o, c, i] if inside[o, c, i] else np.float32(0)) * x[o, c, i]
            grad_step[c] += step_sum
            grad_rescale[c] += rescale_sum


__all__ = ["backward", "channel_layout", "forward"]
