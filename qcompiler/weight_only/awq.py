"""AWQ: Activation-aware Weight Quantization (Lin et al. 2024, "AWQ: Activation-aware Weight Quantization
for LLM Compression and Acceleration", MLSys).

A few input channels carry most of a layer's activation magnitude, and the weights that multiply them
matter most. AWQ scales those weight rows up before quantization and the activations down by the same
factor, ``Y = X W = (X diag(s)⁻¹)(diag(s) W)``, so their relative rounding error shrinks; the scale is
searched on calibration activations:

* ``s_X = mean_tokens |x|`` per input channel; for ``α ∈ {0, 1/n, ..., (n-1)/n}`` (``n = 20``):
  ``s = s_X^α / sqrt(max(s_X^α) · min(s_X^α))``, and ``α`` minimizes
  ``L(α) = Σ_l || (X diag(s)⁻¹) Q(diag(s) W_l) - X W_l ||²`` over the layers ``l`` that read the same ``X``
  (the query/key/value projections share one scale, as in the paper);
* weight clipping: for each block and output channel, the range ``[r·min, r·max]`` with
  ``r ∈ {1, 0.95, ..., 0.5}`` that minimizes the block's output error ``|| X_b (W_b - Q_r(W_b)) ||²``
  (``X_b``: the block's input columns), computed from ``G_b = X_bᵀ X_b``.

``1/s`` becomes a ``Mul`` on the layers' shared input (read by those layers only: a residual branch reading
the same tensor keeps the unscaled one). The loss is each layer group's output, not the paper's whole
transformer block, and ``X`` are float-model activations (see :mod:`.activations`).
"""

from __future__ import annotations

import numpy as np

from ..ir import QuantSpec, Scheme, fake_quantize
from ..ir.quant import tensor_range
from .layers import matrix_axis, rtn

GRID = 20
SEARCH_COLUMNS = 4096
CLIP_RATIOS = tuple(1.0 - 0.05 * i for i in range(11))


def input_scale(x: np.ndarray, weights: list[np.ndarray], scheme: Scheme, grid: int = GRID) -> np.ndarray:
    """The per-input-channel scale ``s`` (``[K]``) that minimizes the group's output error (see above);
    all ones when no ``α > 0`` beats plain quantization. The error of a layer wider than
    :data:`SEARCH_COLUMNS` outputs is measured on that many of its columns (a fixed random sample)."""
    x = x.astype(np.float32)
    magnitude = np.maximum(np.abs(x).mean(axis=0), 1e-4)
    rng = np.random.default_rng(0)  # wide layers (an output projection onto a vocabulary): a column sample
    weights = [w[:, np.sort(rng.choice(w.shape[1], SEARCH_COLUMNS, replace=False))] if w.shape[1] > SEARCH_COLUMNS
               else w for w in weights]
    references = [x @ w for w in weights]
    best, best_loss = np.ones_like(magnitude), np.inf
    for alpha in np.arange(grid) / grid:
        s = magnitude ** alpha
        s = (s / np.sqrt(s.max() * s.min())).astype(np.float32)
        scaled_x = x / s
        loss = sum(float(((scaled_x @ rtn(w * s[:, None], scheme)[0] - y) ** 2).sum())
                   for w, y in zip(weights, references, strict=True))
        if loss < best_loss:
            best, best_loss = s, loss
    return best


def block_grams(x: np.ndarray, rows: int, block_size: int) -> np.ndarray:
    """``G_b = X_bᵀ X_b`` (``[blocks, size, size]``, float64) of the inputs ``x`` (``[tokens, K]``) for blocks of
    ``block_size`` rows (0: one block of all ``rows``), the last zero-padded."""
    size = block_size or rows
    blocks = -(-rows // size)
    xb = np.pad(x.astype(np.float64), ((0, 0), (0, blocks * size - rows))).reshape(len(x), blocks, size)
    return np.matmul(xb.transpose(1, 2, 0), xb.transpose(1, 0, 2))


def clipped(w: np.ndarray, x: np.ndarray, scheme: Scheme, ratios=CLIP_RATIOS) -> tuple[np.ndarray, QuantSpec]:
    """(``w`` on the grid, spec) with each block's range shrunk by the ratio that minimizes its output
    error on the inputs ``x`` (``[tokens, K]``)."""
    spec = clip_search(w, block_grams(x, w.shape[0], scheme.block_size), scheme, ratios)
    return fake_quantize(w, spec), spec


def clip_search(w: np.ndarray, grams: np.ndarray, scheme: Scheme, ratios=CLIP_RATIOS) -> QuantSpec:
    """The spec of ``w`` whose blocks' ranges ``[r·min, r·max]`` each take the ratio ``r`` that minimizes the
    block's ``ΔW_bᵀ G_b ΔW_b`` per output channel (``grams``: ``[blocks, size, size]``, a block's input Gram
    matrix ``X_bᵀ X_b`` or any multiple of it, such as GPTQ's Hessian block; or ``[blocks, size]``, its
    diagonal alone)."""
    axis = matrix_axis(scheme)
    lo, hi = tensor_range(w, axis, scheme.block_size)
    blocks, size = grams.shape[:2]
    pad = blocks * size - w.shape[0]
    best_lo, best_hi, best_error = lo, hi, None
    for ratio in ratios:
        spec = scheme.spec_from_range(lo * ratio, hi * ratio, axis)
        delta = np.pad((w - fake_quantize(w, spec)).astype(np.float64), ((0, pad), (0, 0))).reshape(blocks, size, -1)
        weighted = np.matmul(grams, delta) if grams.ndim == 3 else grams[:, :, None] * delta
        error = (delta * weighted).sum(axis=1)  # ||X_b ΔW_b||² per block and column
        error = error if scheme.block_size else error[0]
        if best_error is None:
            best_error = error
            continue
        better = error < best_error
        best_lo, best_hi = np.where(better, lo * ratio, best_lo), np.where(better, hi * ratio, best_hi)
        best_error = np.minimum(error, best_error)
    return scheme.spec_from_range(best_lo, best_hi, axis)
