"""HQQ: Half-Quadratic Quantization (Badri & Shaji 2023, "Half-Quadratic Quantization of Large Machine
Learning Models"), calibration-free.

HQQ fits each block's quantization parameters to a sparsity-promoting ``l_p`` loss (``p < 1``) of the
reconstruction error, which outliers cannot dominate as they dominate min/max or ``l_2``:
``min_{z,s} || W - Q⁻¹(Q(W)) ||_p^p`` with ``Q(W) = round(W/s + z)`` and ``Q⁻¹(W_q) = s (W_q - z)``. It is
solved by half-quadratic splitting with an auxiliary error ``W_e`` and alternating closed-form steps:

* ``W_e ← shrink_p(W - Q⁻¹(Q(W)), β)`` with the generalized soft threshold
  ``shrink_p(x, β) = sign(x) · relu(|x| - |x|^(p-1) / β)``;
* ``z ← mean_block(Q(W) - (W - W_e) / s)``;
* ``β ← κ β``.

With float zero points (MatMulNBits) this is the paper's algorithm: the scale stays the min/max one and the
last iterate is kept. Deviations for integer zero points, stated: ONNX ``DequantizeLinear`` and the packed
int4 formats need them, so ``z`` is rounded after its update (asymmetric schemes; symmetric ones keep
``z = 0``) and the scale gets the least-squares step the rounding calls for,
``s ← <W - W_e, Q(W) - z> / ||Q(W) - z||²``; every block keeps the parameters, among the iterates and its
min/max (RTN) start, with the smallest ``l_2`` reconstruction error, so HQQ never reconstructs a block worse
than RTN. (The paper's form measured better with float zero points: ``benchmarks/llm_weight_only.py``.)
Defaults ``p = 0.7``, ``β = 10``, ``κ = 1.01``, 20 iterations are the paper's.
"""

from __future__ import annotations

import numpy as np

from ..ir import QuantSpec, Scheme, fake_quantize
from ..ir.quant import quantize_values
from .layers import block_params, rtn, to_blocks, with_block_params


def shrink_lp(x: np.ndarray, beta: float, p: float) -> np.ndarray:
    """The generalized soft-thresholding operator of the ``l_p`` proximal step."""
    magnitude = np.abs(x)
    with np.errstate(divide="ignore"):
        threshold = np.power(magnitude, np.float32(p - 1), dtype=np.float32) / np.float32(beta)  # inf at 0
    return np.copysign(np.maximum(magnitude - threshold, 0, dtype=np.float32), x)


def hqq(w: np.ndarray, scheme: Scheme, *, iterations: int = 20, p: float = 0.7, beta: float = 10.0,
        kappa: float = 1.01) -> tuple[np.ndarray, QuantSpec]:
    """(``w`` on the grid, its spec) for a ``[K, N]`` matrix under ``scheme`` (see the module docstring)."""
    _, spec = rtn(w, scheme)
    blocks, mask = to_blocks(w.astype(np.float32), spec)  # float32 throughout: tables of 10^7 weights
    scale, zero_point = (a[:, None, :].astype(np.float32) for a in block_params(spec))
    qmin, qmax = spec.qmin, spec.qmax

    def quantize_blocks(s, z):  # an integer zero point is added after the rounding, a float one before
        return quantize_values(blocks, s, z if scheme.float_zero_point else z.astype(np.int64), spec.dtype
                               ).astype(np.float32)

    def error(q, s, z):
        return np.square((blocks - (q - z) * s) * mask).sum(axis=1, keepdims=True)

    q = quantize_blocks(scale, zero_point)
    best_scale, best_zero, best_error = scale.copy(), zero_point.copy(), error(q, scale, zero_point)
    for _ in range(iterations):
        w_e = shrink_lp(blocks - (q - zero_point) * scale, beta, p)
        target = blocks - w_e
        if not scheme.symmetric:
            z = ((q - target / scale) * mask).sum(axis=1, keepdims=True) / mask.sum(axis=1, keepdims=True)
            zero_point = (z if scheme.float_zero_point else np.clip(np.rint(z), qmin, qmax)).astype(np.float32)
        if scheme.float_zero_point:  # the paper's: the zero point alone, the last iterate
            q = quantize_blocks(scale, zero_point)
            best_scale, best_zero = scale, zero_point
            beta *= kappa
            continue
        centred = (q - zero_point) * mask
        norm = (centred ** 2).sum(axis=1, keepdims=True)
        fitted = (target * centred).sum(axis=1, keepdims=True) / np.where(norm > 0, norm, 1.0)
        scale = np.where((norm > 0) & (fitted * scale > 0), fitted, scale).astype(np.float32)
        q = quantize_blocks(scale, zero_point)
        err = error(q, scale, zero_point)
        better = err < best_error
        best_scale, best_zero = np.where(better, scale, best_scale), np.where(better, zero_point, best_zero)
        best_error = np.minimum(err, best_error)
        beta *= kappa
    chosen = with_block_params(spec, best_scale[:, 0, :], best_zero[:, 0, :])
    return fake_quantize(w, chosen), chosen


