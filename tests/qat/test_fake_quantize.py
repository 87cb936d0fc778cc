"""The fake quantizers' forward against qcompiler.ir.quant, and their STE / LSQ gradients against finite
differences.

Rounding has zero derivative almost everywhere, so the gradients the STE and LSQ define are derivatives
of a surrogate: the forward with ``round(v)`` replaced by its straight-through linearization at the
evaluation point, ``round(v0) + (v - v0)``. Central finite differences of that surrogate (float64, small
tensors) must equal autograd's gradients; LSQ's ``g`` scaling is checked separately.
"""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto

torch = pytest.importorskip("torch")

from qcompiler.ir.quant import QuantSpec, fake_quantize as numpy_fake_quantize  # noqa: E402
from qcompiler.kernels.torch_ops.quantize import (binary_fake_quantize, broadcast, fake_quantize,  # noqa: E402
                                                  lsq_gradient_factor, round_ste)


def _surrogate(x, scale, zero, qmin, qmax, axis, block, x0, s0):
    """The forward with round linearized at (x0, s0): what STE + LSQ differentiate."""
    shape = tuple(x.shape)
    step, step0 = broadcast(scale, shape, axis, block), broadcast(s0, shape, axis, block)
    z = broadcast(torch.as_tensor(zero, dtype=torch.float64), shape, axis, block)
    v, v0 = x / step, x0 / step0
    q = torch.clamp(torch.round(v0) + (v - v0) + z, qmin, qmax)
    return (q - z) * step


CASES = [  # (shape, scale shape, axis, block, qmin, qmax, zero point)
    ((3, 5), (), None, None, -128, 127, 0),
    ((4, 3, 2), (4,), 0, None, -7, 7, 0),
    ((2, 8), (2, 2), 1, 4, -8, 7, 0),
    ((6,), (), None, None, 0, 15, 3),
    ((2, 3), (3,), 1, None, -1, 1, 0),
]


@pytest.mark.parametrize("shape, scale_shape, axis, block, qmin, qmax, zero", CASES)
def test_ste_and_lsq_gradients_match_finite_differences_of_the_surrogate(shape, scale_shape, axis, block, qmin, qmax,
                                                                         zero):
    rng = np.random.default_rng(0)
    x0 = torch.tensor(rng.normal(0, 1, shape) * 3, dtype=torch.float64)
    s0 = torch.tensor(rng.uniform(0.2, 0.6, scale_shape), dtype=torch.float64)
    step0 = broadcast(s0, shape, axis, block).expand(shape)
    v0 = x0 / step0
    q0 = torch.round(v0) + zero  # the surrogate has kinks where q is exactly qmin or qmax: move those outside
    x0 = torch.where(q0 >= qmax, (qmax - zero + 1.3) * step0, torch.where(q0 <= qmin, (qmin - zero - 1.3) * step0, x0))
    x, s = x0.clone().requires_grad_(True), s0.clone().requires_grad_(True)
    weights = torch.tensor(rng.normal(size=shape), dtype=torch.float64)  # a random linear loss
    (fake_quantize(x, s, np.float64(zero), qmin, qmax, axis=axis, block_size=block) * weights).sum().backward()

    def loss(xv, sv):
        return float((_surrogate(xv, sv, zero, qmin, qmax, axis, block, x0, s0) * weights).sum())

    eps = 1e-6
    for tensor, grad, name in ((x0, x.grad, "x"), (s0, s.grad, "scale")):
        numeric = torch.zeros_like(tensor)
        for i in range(tensor.numel()):
            delta = torch.zeros_like(tensor).reshape(-1)
            delta[i] = eps
            delta = delta.reshape(tensor.shape)
            args_plus = (x0 + delta, s0) if name == "x" else (x0, s0 + delta)
            args_minus = (x0 - delta, s0) if name == "x" else (x0, s0 - delta)
            numeric.reshape(-1)[i] = (loss(*args_plus) - loss(*args_minus)) / (2 * eps)
        np.testing.assert_allclose(grad.numpy(), numeric.numpy(), rtol=1e-6, atol=1e-6, err_msg=name)


def test_lsq_step_gradient_is_the_paper_formula_and_scaled_by_g():
    x = torch.tensor([0.26, -0.9, 5.0, -7.0], dtype=torch.float64)  # inside, inside, above, below the range
    s = torch.tensor(0.5, dtype=torch.float64, requires_grad=True)
    factor = lsq_gradient_factor(4, 7)
    fake_quantize(x, s, 0.0, -8, 7, grad_factor=factor).sum().backward()
    v = x / 0.5
    per_element = torch.where(v > 7, 7.0, torch.where(v < -8, -8.0, torch.round(v) - v))  # Esser et al. eq. 3
    assert float(s.grad) == pytest.approx(float(per_element.sum()) * factor, rel=1e-12)
    assert factor == pytest.approx(1 / np.sqrt(4 * 7))


def test_ste_passes_gradient_inside_the_range_only():
    x = torch.tensor([0.1, 0.74, 100.0, -100.0], requires_grad=True)
    fake_quantize(x, torch.tensor(0.5), 0.0, -8, 7).sum().backward()
    assert x.grad.tolist() == [1.0, 1.0, 0.0, 0.0]


@pytest.mark.parametrize("dtype, zero", [(TensorProto.UINT8, 128), (TensorProto.INT8, 0), (TensorProto.INT4, 0),
                                         (TensorProto.UINT4, 5)])
def test_forward_equals_onnx_quantize_dequantize_bit_for_bit(dtype, zero):
    rng = np.random.default_rng(1)
    scale = np.float32(0.1)
    x = np.concatenate([rng.normal(0, 3, 200), np.array([0.05, 0.15, 0.25, -0.05, -0.25, 1e6, -1e6])]).astype(
        np.float32)  # exact halves round to even; huge values saturate
    from qcompiler.ir.quant import integer_range, storage_dtype

    qmin, qmax = integer_range(dtype)
    spec = QuantSpec(dtype, np.asarray(scale), np.asarray(zero, storage_dtype(dtype)))
    expected = numpy_fake_quantize(x, spec)
    got = fake_quantize(torch.from_numpy(x), torch.tensor(scale), np.float32(zero), qmin, qmax).numpy()
    np.testing.assert_array_equal(got, expected)


def test_binary_is_scale_times_sign_with_a_clipped_ste():
    w = torch.tensor([[0.3, -0.2, 0.0, 2.0]], requires_grad=True)
    s = torch.tensor([0.5], requires_grad=True)
    y = binary_fake_quantize(w, s, axis=0)
    assert y.tolist() == [[0.5, -0.5, 0.5, 0.5]]
    y.sum().backward()
    assert w.grad.tolist() == [[1.0, 1.0, 1.0, 0.0]]  # |w| <= s passes, the rest is clipped
    assert s.grad.tolist() == [2.0]  # d/ds sum(s * sign(w)) = sum(sign(w))


def test_gradients_with_a_rescaled_accumulator_equal_autograd_of_the_composed_forward():
    """An integer layer's accumulator ``x`` quantized as ``x · (rescale / s)``: the written-out gradients for ``x``,
    the step and ``rescale`` against autograd through the forward composed of torch ops, rounding by the STE."""
    rng = np.random.default_rng(2)
    x0 = torch.tensor(rng.normal(0, 150, (2, 3, 4)), dtype=torch.float64)
    r0 = torch.tensor(rng.uniform(0.01, 0.03, (1, 3, 1)), dtype=torch.float64)
    s0 = torch.tensor(0.3, dtype=torch.float64)
    weights = torch.tensor(rng.normal(size=(2, 3, 4)), dtype=torch.float64)
    grads = []
    for composed in (False, True):
        x, r, s = (t.clone().requires_grad_(True) for t in (x0, r0, s0))
        if composed:
            y = (torch.clamp(round_ste(x * (r / s)) + 3.0, -8, 7) - 3.0) * s
        else:
            y = fake_quantize(x, s, np.float64(3.0), -8, 7, rescale=r)
        (y * weights).sum().backward()
        grads.append([x.grad, s.grad, r.grad])
    stored = (x0 * r0 / s0).round() + 3
    assert stored.gt(7).any() and stored.lt(-8).any()  # both clamps hit
    assert stored.eq(7).any() or stored.eq(-8).any()  # and a value lands on a bound, where clamp passes no gradient
    for ours, theirs in zip(*grads, strict=True):
        np.testing.assert_allclose(ours.numpy(), theirs.numpy(), rtol=1e-12, atol=1e-12)


LAYOUTS = [  # (x shape, scale shape, axis, block, rescale shape): each layout the numba loops view differently
    ((1, 16, 6, 40), (), None, None, None),  # an activation, per tensor
    ((16, 8, 3, 3), (16,), 0, None, None),  # a Conv weight, per output channel: contiguous rows per channel
    ((24, 40), (40,), 1, None, None),  # a MatMul weight, per column: the channel is the contiguous axis
    ((24, 40), (24, 5), 1, 8, None),  # blocked: expanded to one scale per element
    ((1, 16, 6, 40), (), None, None, (1, 16, 1, 1)),  # a Conv accumulator, rescaled per output channel
    ((1, 30, 40), (), None, None, (1, 1, 40)),  # a MatMul accumulator, rescaled per column
]


@pytest.mark.parametrize("shape, scale_shape, axis, block, rescale_shape", LAYOUTS)
def test_float32_values_and_gradients_equal_the_forward_composed_of_torch_ops(shape, scale_shape, axis, block,
                                                                              rescale_shape):
    """The one-pass loops against the arithmetic written as torch ops, in float32 at model sizes: the output
    bit for bit (exact halves and both saturations included), the gradients to float32 rounding (autograd
    divides by the step and multiplies by it again; the step's and the rescale's are sums, float64 in the loops
    against torch's float32)."""
    rng = np.random.default_rng(3)
    s0 = torch.tensor(rng.uniform(0.02, 0.05, scale_shape), dtype=torch.float32)
    r0 = None if rescale_shape is None else torch.tensor(rng.uniform(1e-4, 3e-4, rescale_shape), dtype=torch.float32)
    levels = rng.normal(0, 60, shape)
    levels.reshape(-1)[:50] = np.arange(-25, 25) + 0.5  # exact halves: round to even
    step0 = broadcast(s0, shape, axis, block)
    x0 = (torch.tensor(levels, dtype=torch.float32) * step0 if r0 is None else
          torch.tensor(levels, dtype=torch.float32) * step0 / r0).contiguous()
    weights = torch.tensor(rng.normal(size=shape), dtype=torch.float32)
    results = []
    for composed in (False, True):
        x, s = x0.clone().requires_grad_(True), s0.clone().requires_grad_(True)
        r = None if r0 is None else r0.clone().requires_grad_(True)
        if composed:
            step = broadcast(s, shape, axis, block)
            v = x / step if r is None else x * (r / step)
            y = (torch.clamp(round_ste(v) + 3.0, -128, 127) - 3.0) * step
        else:
            y = fake_quantize(x, s, np.float32(3.0), -128, 127, axis=axis, block_size=block, rescale=r)
        (y * weights).sum().backward()
        results.append([y.detach(), x.grad, s.grad] + ([] if r is None else [r.grad]))
    ours, theirs = results
    assert torch.equal(ours[0], theirs[0])
    integers = ours[0] / broadcast(s0, shape, axis, block) + 3
    assert integers.max() > 126 and integers.min() < -127  # saturated on both sides
    for a, b in zip(ours[1:], theirs[1:], strict=True):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=2e-4, atol=1e-4 * float(b.abs().max()))
