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
are fixed up front. Memory: ``H`` and its inverse, ``K x K`` float64, per layer.
"""

from __future__ import annotations

import numpy as np

from ..ir import QuantSpec, Scheme, fake_quantize
from ..ir.quant import dequantize_values, quantize_values
from .layers import block_params, rtn, with_block_params

DAMP = 0.01
BATCH = 128


def hessian(x: np.ndarray) -> np.ndarray:
    """``H = 2 XᵀX / tokens`` of the inputs ``x`` (``[tokens, K]``), float64."""
    x = x.astype(np.float64)
    return 2.0 * (x.T @ x) / max(len(x), 1)


def gptq(w: np.ndarray, h: np.ndarray, scheme: Scheme, *, act_order: bool = True, damp: float = DAMP,
         batch: int = BATCH) -> tuple[np.ndarray, QuantSpec]:
    """(``w`` on the grid, its spec) for a ``[K, N]`` weight and the Hessian ``h`` of its inputs."""
    w = w.astype(np.float64).copy()
    h = h.astype(np.float64).copy()
    rows = w.shape[0]
    dead = np.diag(h) == 0
    h[dead, dead] = 1.0
    w[dead] = 0.0
    h[np.diag_indices(rows)] += damp * np.mean(np.diag(h))
    _, spec = rtn(w.astype(np.float32), scheme)
    scale, zero_point = (a.copy() for a in block_params(spec))
    size = scheme.block_size or rows
    order = np.argsort(-np.diag(h), kind="stable") if act_order else np.arange(rows)
    static = act_order or not scheme.block_size
    w = w[order]
    inverse = np.linalg.inv(h[np.ix_(order, order)])
    del h  # K x K float64 each: an LLM's MLP projection holds no more of them than it must
    u = np.linalg.cholesky(inverse).T  # upper: H⁻¹ = Uᵀ U
    del inverse
    quantized = np.zeros_like(w, dtype=np.float32)
    for start in range(0, rows, batch):
        end = min(start + batch, rows)
        errors = np.zeros((end - start, w.shape[1]))
        for i in range(start, end):
            block = order[i] // size
            if not static and order[i] % size == 0:  # a block's first row: its parameters from the rows now
                _, fresh = rtn(w[i:i + size].astype(np.float32), scheme)
                scale[block], zero_point[block] = block_params(fresh)[0][0], block_params(fresh)[1][0]
            q = quantize_values(w[i].astype(np.float32), scale[block], zero_point[block], spec.dtype)
            quantized[i] = dequantize_values(q, scale[block], zero_point[block], np.float32)
            error = (w[i] - quantized[i]) / u[i, i]
            w[i + 1:end] -= np.outer(u[i, i + 1:end], error)
            errors[i - start] = error
        w[end:] -= u[start:end, end:].T @ errors
    result = np.empty_like(quantized)
    result[order] = quantized
    chosen = with_block_params(spec, scale, zero_point)
    return fake_quantize(result, chosen), chosen
