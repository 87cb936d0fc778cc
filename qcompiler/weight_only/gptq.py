"""GPTQ (Frantar et al. 2023, "GPTQ: Accurate Post-Training Quantization for Generative Pre-trained
Transformers", ICLR), in numpy, one layer at a time.

GPTQ quantizes the input channels (rows of a ``[K, N]`` weight) one after the other and moves each row's
rounding error onto the rows not yet quantized, as Optimal Brain Quantization prescribes for the layer
loss ``||X W - X Ŵ||²`` whose Hessian is ``H = 2 XᵀX``:

* ``H ← H + λ I`` with ``λ = damp · mean(diag H)`` (``damp = 0.01``); an input channel that is always zero
  (``H_ii = 0``) gets ``H_ii = 1`` and a zero weight row;
* act-order: rows are processed in order of decreasing ``H_ii`` (the most salient first);
* ``U = Cholesky(H⁻¹)``, upper triangular: row ``i``'s quantization error ``e_i = (w_i - Q(w_i)) / U_ii``
  updates the later rows ``w_j ← w_j - U_ij e_i`` (``j > i``);
* lazy batch updates: inside a batch of ``B = 128`` rows the update reaches only the batch's rows; the rows
  after it get the accumulated ``W_after ← W_after - U_{batch, after}ᵀ E_batch`` once per batch.

Blocks: without act-order a block's scale and zero point are the min/max ones of its rows as they stand
when GPTQ reaches the block's first row (the error moved onto them included); with act-order, whose order
crosses blocks, they are fixed up front from the original weight ("static groups"), so the result keeps
the plain blocked layout that MatMulNBits and DequantizeLinear read (no ``g_idx``). Per-channel scales
are fixed up front. With ``clip`` (the default), parameters fixed up front or at a block's first row take
the clipping ratio that minimizes the block's ``ΔWᵀ H_b ΔW`` (:func:`~.awq.clip_search` with the Hessian's
diagonal block ``H_b``; per channel, where the block is all of K, with ``diag H``), as the GPTQ reference
code's ``mse`` option searches the range of a grid (there by a weight norm); at 2 bits, where min/max
spends a quarter of the grid on one outlier, it is the difference between a grid fitted to the weights and
one fitted to their extremes. Memory: ``H`` and its inverse, ``K x K`` float64, per layer, and the weight in float64
``COLUMNS`` output channels at a time. The values written are those the rows were quantized to, each the
dequantized grid point of the block's final scale and zero point: the weight is on its spec's grid.
"""

from __future__ import annotations

import numpy as np

from ..ir import QuantSpec, Scheme
from ..ir.quant import dequantize_values, quantize_values
from .awq import clip_search
from .layers import block_params, rtn, with_block_params

DAMP = 0.01
BATCH = 128
COLUMNS = 4096


def hessian(x: np.ndarray) -> np.ndarray:
    """``H = 2 XᵀX / tokens`` of the inputs ``x`` (``[tokens, K]``), float64."""
    x = x.astype(np.float64)
    return 2.0 * (x.T @ x) / max(len(x), 1)


def gptq(w: np.ndarray, h: np.ndarray, scheme: Scheme, *, act_order: bool = True, damp: float = DAMP,
         batch: int = BATCH, columns: int = COLUMNS, clip: bool = True) -> tuple[np.ndarray, QuantSpec]:
    """(``w`` on the grid, its spec) for a ``[K, N]`` weight and the Hessian ``h`` of its inputs, ``columns``
    output channels at a time (each column's updates involve only itself and ``H``, so the result does not
    depend on ``columns``; an LLM's output projection, 151936 columns, is never copied whole in float64)."""
    rows = w.shape[0]
    grams = _hessian_blocks(h, scheme.block_size) if clip else None
    diagonal = np.diag(h).astype(np.float64)
    dead = diagonal == 0
    diagonal[dead] = 1.0
    diagonal += damp * np.mean(diagonal)
    order = np.argsort(-diagonal, kind="stable") if act_order else np.arange(rows)
    damped = np.asarray(h, np.float64)[np.ix_(order, order)]  # the one K x K copy of H (an MLP's K is 8960)
    damped[np.diag_indices(rows)] = diagonal[order]
    inverse = np.linalg.inv(damped)
    del damped
    u = np.linalg.cholesky(inverse).T  # upper: H⁻¹ = Uᵀ U
    del inverse
    static = act_order or not scheme.block_size
    result = np.empty(w.shape, np.float32)
    params = []
    for first in range(0, w.shape[1], columns):
        chunk = slice(first, first + columns)
        params.append(_columns(w[:, chunk], u, order, dead, scheme, static, batch, result[:, chunk], grams))
    spec = params[0][0]
    return result, with_block_params(spec, np.concatenate([p[1] for p in params], axis=1),
                                     np.concatenate([p[2] for p in params], axis=1))


def _hessian_blocks(h: np.ndarray, block_size: int) -> np.ndarray:
    """The diagonal blocks of ``h`` (``[blocks, size, size]``, the last zero-padded), or for per-channel
    parameters (``block_size`` 0) its diagonal as one ``[1, K]`` block."""
    if not block_size:
        return np.diag(h)[None].astype(np.float64)
    rows = h.shape[0]
    blocks = -(-rows // block_size)
    grams = np.zeros((blocks, block_size, block_size))
    for b in range(blocks):
        part = h[b * block_size:(b + 1) * block_size, b * block_size:(b + 1) * block_size]
        grams[b, :len(part), :len(part)] = part
    return grams


def _params(w: np.ndarray, scheme: Scheme, grams: np.ndarray | None) -> QuantSpec:
    """The spec of the rows ``w``: min/max, or clip-searched against ``grams`` (their Hessian blocks)."""
    w = w.astype(np.float32)
    return rtn(w, scheme)[1] if grams is None else clip_search(w, grams, scheme)


def _columns(w: np.ndarray, u: np.ndarray, order: np.ndarray, dead: np.ndarray, scheme: Scheme, static: bool,
             batch: int, out: np.ndarray, grams: np.ndarray | None) -> tuple[QuantSpec, np.ndarray, np.ndarray]:
    """GPTQ of some columns of the weight, written into ``out`` (rows in the weight's order): (their spec
    fixed up front, the final ``[blocks, columns]`` scales and zero points)."""
    w = w.astype(np.float64)
    w[dead] = 0.0
    rows = w.shape[0]
    spec = _params(w, scheme, grams)
    scale, zero_point = (a.copy() for a in block_params(spec))
    size = scheme.block_size or rows
    w = w[order]
    quantized = np.zeros_like(w, dtype=np.float32)
    for start in range(0, rows, batch):
        end = min(start + batch, rows)
        errors = np.zeros((end - start, w.shape[1]))
        for i in range(start, end):
            block = order[i] // size
            if not static and order[i] % size == 0:  # a block's first row: its parameters from the rows now
                fresh = _params(w[i:i + size], scheme, None if grams is None else grams[block:block + 1])
                scale[block], zero_point[block] = block_params(fresh)[0][0], block_params(fresh)[1][0]
            q = quantize_values(w[i].astype(np.float32), scale[block], zero_point[block], spec.dtype)
            quantized[i] = dequantize_values(q, scale[block], zero_point[block], np.float32)
            error = (w[i] - quantized[i]) / u[i, i]
            w[i + 1:end] -= np.outer(u[i, i + 1:end], error)
            errors[i - start] = error
        w[end:] -= u[start:end, end:].T @ errors
    out[order] = quantized
    return spec, scale, zero_point
