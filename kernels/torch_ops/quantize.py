"""QuantizeLinear / DequantizeLinear in torch, and the fake quantizers quantization-aware training uses.

Forward: exactly ONNX's (and :mod:`qcompiler.ir.quant`'s) arithmetic, ``q = saturate(round_half_even(x /
s) + z)`` with the division in float32 (``torch.round`` rounds half to even, as onnxruntime), and
``y = (q - z) * s``. QuantizeLinear's output is a float tensor holding the integers: torch has no int4
type, and autograd needs floats.

Backward:

* **STE** (straight-through estimator; Bengio et al. 2013): the rounding passes gradients unchanged,
  ``d round(v) / dv := 1`` (:func:`round_ste`); the saturation does not (``clamp``'s gradient is 0 outside
  ``[qmin, qmax]``). So ``dy/dx = 1`` inside the range and 0 outside.
* **LSQ** (learned step size; Esser et al. 2020, "Learned Step Size Quantization", eq. 3): with the same
  estimator, the gradient of ``y = s · (clamp(round(x/s) + z, qmin, qmax) - z)`` with respect to the step
  ``s`` is ``round(x/s) - x/s`` inside the range and ``qmin - z`` / ``qmax - z`` outside; autograd derives
  it from the forward above. LSQ scales it by ``g = 1 / sqrt(N · Q_P)`` (``N`` elements per step size,
  ``Q_P = qmax - z``) so that step sizes and weights learn at comparable rates (:func:`lsq_gradient_factor`).

:func:`fake_quantize` is one autograd function with these gradients written out (:class:`_FakeQuantize`),
so that autograd keeps two tensors per quantizer and walks one node back, not one per elementwise step of
the forward; numba loops compute each direction in one pass over the tensor
(:mod:`qcompiler.kernels.jit.fake_quantize`).

Binary weights (XNOR-Net; Rastegari et al. 2016) are no rounding grid: :func:`binary_fake_quantize`
is ``s · sign(w)`` with the STE of the sign clipped to ``|w| <= s`` ("hard tanh", Courbariaux et al. 2016).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from qcompiler.ir.quant import integer_range

from ..jit import fake_quantize as fake_quantize_loops
from ._common import register_all, tensor


class _RoundSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, v):
        return torch.round(v)

    @staticmethod
    def backward(ctx, grad):
        return grad


def round_ste(v: torch.Tensor) -> torch.Tensor:
    """``round_half_even(v)`` forward, identity backward (an autograd function: one op forward, none back)."""
    return _RoundSTE.apply(v)


class _StraightThrough(torch.autograd.Function):
    @staticmethod
    def forward(ctx, surrogate, value):
        return value.view_as(value)

    @staticmethod
    def backward(ctx, grad):
        return grad, None


def straight_through(surrogate: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """``value`` forward (exactly), ``surrogate``'s gradient backward: a computation whose forward is
    replaced by another's (the same function up to rounding) without changing what it learns from."""
    return _StraightThrough.apply(surrogate, value)


def lsq_gradient_factor(elements_per_step: int, qmax_minus_zero: int) -> float:
    """LSQ's ``g = 1 / sqrt(N · Q_P)``."""
    return 1.0 / math.sqrt(max(1, elements_per_step) * max(1, qmax_minus_zero))


def broadcast(param, shape: tuple[int, ...], axis: int | None, block_size: int | None) -> torch.Tensor:
    """torch twin of :func:`qcompiler.ir.quant.broadcast_param` (which is numpy and would cut the graph):
    a per-tensor, per-axis or blocked scale / zero point reshaped to broadcast against ``shape``."""
    param = tensor(param)
    if param.numel() == 1 and param.ndim <= 1:
        return param.reshape(())
    axis = axis + len(shape) if axis < 0 else axis
    if not block_size:
        view = [1] * len(shape)
        view[axis] = -1
        return param.reshape(view)
    return param.repeat_interleave(block_size, dim=axis).narrow(axis, 0, shape[axis])


def fake_quantize(x: torch.Tensor, scale: torch.Tensor, zero_point, qmin: int, qmax: int, *, axis: int | None = None,
                  block_size: int | None = None, grad_factor: float | None = None,
                  rescale: torch.Tensor | None = None) -> torch.Tensor:
    """``DequantizeLinear(QuantizeLinear(x))`` with the STE for ``x`` and LSQ's gradient for ``scale``,
    scaled by ``grad_factor`` (:func:`lsq_gradient_factor`) when given. ``scale`` / ``zero_point`` per
    tensor, per ``axis`` or per block, as ONNX lays them out.

    With ``rescale`` (broadcast against ``x``), ``x`` is an integer layer's accumulator and the quantizer's
    input is ``x · rescale``: the levels are then ``x · (rescale / scale)``, one float32 product with
    onnxruntime's requantization multiplier, as its integer kernels compute them (``x · rescale / scale``
    would round twice)."""
    x = tensor(x)
    shape = tuple(x.shape)
    zero = broadcast(zero_point, shape, axis, block_size).to(x.dtype)
    step = broadcast(tensor(scale), shape, axis, block_size).to(x.dtype)
    return _FakeQuantize.apply(x, step, zero, qmin, qmax, 1.0 if grad_factor is None else grad_factor, rescale)


class _FakeQuantize(torch.autograd.Function):
    """:func:`fake_quantize`'s arithmetic, ``levels = x / step`` (or ``x · (rescale / step)``), ``q =
    clamp(round(levels) + z, qmin, qmax)``, ``y = (q - z) · step``, with the gradients the STE and LSQ give it
    (module docstring): ``dy/dx = inside`` (``inside · rescale``), ``dy/dstep = (q - z) - inside · levels``
    times ``grad_factor``, ``dy/drescale = inside · x``; ``inside``: ``qmin < round(levels) + z < qmax``, where
    ``torch.clamp`` passes gradients, so the gradients are those autograd derives from the composed forward.
    ``step``, ``zero`` and ``rescale`` broadcast against ``x``. Each direction is one pass of numba loops
    (:mod:`qcompiler.kernels.jit.fake_quantize`)."""

    @staticmethod
    def forward(ctx, x, step, zero, qmin, qmax, grad_factor, rescale):
        multiplier = step if rescale is None else rescale / step
        params = (multiplier, zero, step) if rescale is None else (multiplier, zero, step, rescale)
        flat = _FlatLayout(tuple(x.shape), params)
        values = flat.view(x)
        y, inside, slope = np.empty_like(values), np.empty(values.shape, np.bool_), np.empty_like(values)
        fake_quantize_loops.forward(values, flat.channels(multiplier), rescale is None, flat.channels(zero),
                                    flat.channels(step), values.dtype.type(qmin), values.dtype.type(qmax), y,
                                    inside, slope)
        keep_x = rescale is not None and ctx.needs_input_grad[6]
        ctx.flat, ctx.grad_factor = flat, grad_factor
        ctx.shapes = (step.shape, None if rescale is None else rescale.shape)
        ctx.save_for_backward(torch.from_numpy(inside), torch.from_numpy(slope), x if keep_x else None, rescale)
        return torch.from_numpy(y).view(x.shape)

    @staticmethod
    def backward(ctx, grad):
        inside, slope, x, rescale = ctx.saved_tensors
        flat, (step_shape, rescale_shape) = ctx.flat, ctx.shapes
        values = flat.view(grad)
        grad_x = np.empty_like(values)
        grad_step, grad_rescale = np.zeros(values.shape[1]), np.zeros(values.shape[1])
        fake_quantize_loops.backward(values, inside.numpy(), slope.numpy(),
                                     np.zeros((0, 0, 0), values.dtype) if x is None else flat.view(x),
                                     np.ones(1, values.dtype) if rescale is None else flat.channels(rescale),
                                     grad_x, grad_step, grad_rescale)
        grad_x = torch.from_numpy(grad_x).view(grad.shape) if ctx.needs_input_grad[0] else None
        steps = flat.gathered(grad_step, step_shape, grad.dtype) * ctx.grad_factor if ctx.needs_input_grad[1] else None
        rescales = flat.gathered(grad_rescale, rescale_shape, grad.dtype) if ctx.needs_input_grad[6] else None
        return grad_x, steps, None, None, None, None, rescales


class _FlatLayout:
    """A tensor of ``shape`` as the ``[outer, channels, inner]`` array the loops take
    (:func:`~qcompiler.kernels.jit.fake_quantize.channel_layout`) and its broadcast parameters as one value per
    channel, or one for all; parameters that vary along several axes are expanded to one value per element
    (``[1, size, 1]``)."""

    def __init__(self, shape: tuple[int, ...], params: tuple[torch.Tensor, ...]):
        layout = fake_quantize_loops.channel_layout(shape, *(tuple(p.shape) for p in params))
        self.shape, self.elementwise = shape, layout is None
        self.layout = (1, math.prod(shape), 1) if layout is None else layout

    def view(self, t: torch.Tensor) -> np.ndarray:
        return t.detach().contiguous().numpy().reshape(self.layout)

    def channels(self, param: torch.Tensor) -> np.ndarray:
        param = param.detach()
        if self.elementwise and param.numel() > 1:
            param = param.expand(self.shape)
        return param.contiguous().numpy().reshape(-1)

    def gathered(self, sums: np.ndarray, shape: torch.Size, dtype: torch.dtype) -> torch.Tensor:
        """Per-channel float64 sums as the gradient of a parameter of broadcast ``shape``."""
        sums = torch.from_numpy(sums)
        if self.elementwise:
            return _sum_to(sums.view(self.shape), shape).to(dtype)
        return (sums.sum() if shape.numel() == 1 else sums).view(shape).to(dtype)


def _sum_to(t: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """``t`` summed over the axes along which a tensor of ``shape`` was broadcast to it."""
    return t.sum().reshape(shape) if len(shape) == 0 or shape.numel() == 1 else t.sum_to_size(shape)


def binary_fake_quantize(w: torch.Tensor, scale: torch.Tensor, *, axis: int = 0) -> torch.Tensor:
    """XNOR-Net's ``s · sign(w)`` (``sign(0) = +1``, the stored integers are ``+-1``); gradient to ``w``
    through the clipped STE, to ``s`` the sign (the derivative of the forward)."""
    step = broadcast(scale, tuple(w.shape), axis, None).to(w.dtype)
    sign = torch.where(w >= 0, 1.0, -1.0).to(w.dtype)
    hard = torch.clamp(w / step.detach(), -1.0, 1.0)  # the STE surrogate: slope 1/s inside |w| <= s
    return step * (hard + (sign - hard).detach())


def _qdq_axis(param, axis: int, block_size: int) -> int | None:
    return axis if (np.asarray(param.detach() if isinstance(param, torch.Tensor) else param).size > 1
                    or block_size) else None


def _integer_bounds(y_zero_point, output_dtype: int) -> tuple[int, int]:
    from ..reference.quantize import quantize_output_dtype

    return integer_range(quantize_output_dtype(None if isinstance(y_zero_point, torch.Tensor) else y_zero_point,
                                               output_dtype))


@register_all("QuantizeLinear", since=10)
def QuantizeLinear(x, y_scale, y_zero_point=None, *, axis=1, block_size=0, output_dtype=0, precision=0, saturate=1):
    """The integers (as floats), with the STE through the rounding; the range from the zero point's
    numpy type (constants stay numpy in the torch interpreter) or ``output_dtype``."""
    x = tensor(x)
    qmin, qmax = _integer_bounds(y_zero_point, output_dtype)
    axis = _qdq_axis(y_scale, axis, block_size)
    step = broadcast(y_scale, tuple(x.shape), axis, block_size or None).to(torch.float32)
    zero = 0.0 if y_zero_point is None else broadcast(y_zero_point, tuple(x.shape), axis, block_size or None).to(
        torch.float32)
    return torch.clamp(round_ste(x.to(torch.float32) / step) + zero, qmin, qmax)


@register_all("DequantizeLinear", since=10)
def DequantizeLinear(x, x_scale, x_zero_point=None, *, axis=1, block_size=0, output_dtype=0):
    """``(x - zero_point) * scale`` in float32 (exact integers first, as the reference)."""
    x = tensor(x)
    axis = _qdq_axis(x_scale, axis, block_size)
    step = broadcast(x_scale, tuple(x.shape), axis, block_size or None).to(torch.float32)
    if x_zero_point is not None:
        x = x.to(torch.float64) - broadcast(x_zero_point, tuple(x.shape), axis, block_size or None).to(torch.float64)
    return x.to(torch.float32) * step
