"""Block reconstruction for ``qcompiler finetune --blocks N`` (BRECQ, Li et al. 2021).

Full fine-tuning learns from the model's outputs alone; AdaRound (Nagel et al. 2020) learns each layer's
rounding from that layer's output alone. Block reconstruction sits between them: the quantized model is
cut into blocks of about ``N`` layers, and each block learns to reproduce the FP32 teacher's tensor at its
end, reading the quantized output of the block before it.

* **Where the cuts go** (:func:`block_ends`): at activation quantizers, in execution order, once at least
  ``N`` layers (Conv, ConvTranspose, MatMul, Gemm) ran since the last cut, on a value the teacher computes
  too. The teacher is canonicalized by the passes that start every compile (``canonicalize``), so the
  quantized model's values and the teacher's carry the same names for the same tensors (batch
  normalization folded into the convolution on both sides). That holds for models compiled by a pipeline
  whose only float rewrites are canonicalize's (``int8``, ``w4a8``, ``auto`` without SmoothQuant), not for
  cross-layer equalization (``int8-dfq``) or SmoothQuant, which rescale the tensors between layers per
  channel under the same names. Such an end is found on the first batch (:func:`rescaled`) and not cut at;
  a rescaling within a few percent passes for rounding, and its targets are off by as little.
* **The loss of a block** (:func:`block_loss`): ``||q - clip(t)||² / ||clip(t)||²`` of the fake-quantized
  student tensor ``q`` against the teacher's ``t`` clipped to the quantizer's range (what a perfect
  quantizer of that range gives; an activation absorbed into its layer, a Relu, is the clip at 0).
  Averaged over blocks, it adds to the distillation loss of the outputs, which end the last block.
* **One backward pass for all blocks**: at a cut the next block reads ``q`` with its gradient stopped
  (:class:`~.graph.QuantizedModel` ``cuts``), so each block's weights, steps and biases learn from its own
  block's error only, while every block reads its predecessor's current quantized output: BRECQ's
  sequential block order run in parallel, at the cost of a fine-tuning step.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import torch

from ..errors import UserError
from .graph import QuantizedModel
from .teacher import TARGET, Rows, Teacher
from .train import TaskLoss

LAYER_OPS = frozenset({"Conv", "ConvTranspose", "MatMul", "Gemm"})
RESCALED = 4.0
"""An end is refused when one factor per channel, fitted to the teacher's tensor, cuts the quantized model's
error against it this many times or more: the two differ by a rescaling, not by rounding."""
NOISE = 0.1
"""Relative errors up to this are accepted as they are: 4-bit weights with clipped per-channel scales give each
channel a gain error of a few percent, which a per-channel fit also removes."""


def block_ends(module: QuantizedModel, teacher_values: set[str], layers_per_block: int) -> list[str]:
    """The values whose quantizers end a block: see the module docstring."""
    inputs = {v.name for v in module.model.graph.inputs}
    ends, layers = [], 0
    for step in module.interpreter.steps:  # a layer's step may end with its output quantizer (an integer layer)
        layers += any(node.op_type in LAYER_OPS for node in step.nodes)
        site = next((module.sites[node] for node in step.nodes if node in module.sites), None)
        if site is not None and layers >= layers_per_block:
            name = site.source.name
            if name in teacher_values and name not in inputs:
                ends.append(name)
                layers = 0
    return ends


def _relative(q: np.ndarray, t: np.ndarray) -> float:
    return float(((q - t) ** 2).sum()) / max(float((t ** 2).sum()), 1e-30)


def rescaled(q: np.ndarray, t: np.ndarray) -> bool:
    """Whether the quantized model's tensor ``q`` is the teacher's ``t`` rescaled per channel (axis 1, or the
    last axis) rather than ``t`` with rounding errors: least squares gives each channel ``c`` the factor
    ``a_c = <q_c, t_c> / <t_c, t_c>``, and a rescaled tensor's error drops by :data:`RESCALED` or more with it."""
    error = _relative(q, t)
    if error <= NOISE or q.ndim < 2:
        return False
    for axis in sorted({1, q.ndim - 1}):
        qc, tc = (np.moveaxis(a.astype(np.float64), axis, 0).reshape(a.shape[axis], -1) for a in (q, t))
        factors = (qc * tc).sum(1) / np.maximum((tc * tc).sum(1), 1e-30)
        if error >= RESCALED * _relative(qc, factors[:, None] * tc):
            return True
    return False


def block_loss(module: QuantizedModel, extras: dict[str, np.ndarray]) -> torch.Tensor:
    """Mean over the blocks of the last forward pass of ``||q - clip(t)||² / ||clip(t)||²``."""
    terms = []
    for name, (q, low, high) in module.taps.items():
        target = torch.from_numpy(_clipped(extras, name, low, high))
        terms.append(((q - target) ** 2).sum() / (target ** 2).sum().clamp_min(1e-12))
    return torch.stack(terms).mean() if terms else torch.zeros(())


def _clipped(extras: dict[str, np.ndarray], name: str, low: torch.Tensor, high: torch.Tensor) -> np.ndarray:
    return np.clip(np.asarray(extras[TARGET + name], np.float32), float(low), float(high))


def cut_into_blocks(module: QuantizedModel, teacher: Teacher, data: list[Rows],
                    layers_per_block: int) -> tuple[list[str], list[str], TaskLoss]:
    """Cut ``module`` into blocks, have ``teacher`` give the canonicalized teacher's tensors at their ends to
    every minibatch it labels from now on, and return (the values that end blocks, the ends refused as
    rescaled, found on the first rows of ``data``; the block loss as a task loss)."""
    import qcompiler

    from ..ir import onnxruntime_model
    from .teacher import session

    if layers_per_block < 1:
        raise UserError(f"finetune: --blocks {layers_per_block}: a block holds at least one layer")
    with tempfile.TemporaryDirectory(prefix="qcompiler-teacher-") as scratch:
        canonical = qcompiler.compile(str(teacher.path), str(Path(scratch) / "teacher.onnx"), pipeline="canonicalize")
    ends = block_ends(module, {v.name for v in canonical.graph.values()}, layers_per_block)
    if not ends:
        return ends, [], lambda outputs, extras: torch.zeros(())
    with onnxruntime_model(canonical, extra_outputs=ends) as source:
        teacher.track(session(source, teacher.threads), ends)
    first = teacher.label(data[0].feeds, data[0].extras)
    module.cuts = frozenset(ends)
    with torch.no_grad():
        module(first.feeds)
    refused = [name for name, (q, low, high) in module.taps.items()
               if rescaled(q.numpy(), _clipped(first.extras, name, low, high))]
    ends = [name for name in ends if name not in refused]
    module.cuts = frozenset(ends)
    teacher.ends = ends
    return ends, refused, lambda outputs, extras: block_loss(module, extras)


__all__ = ["block_ends", "block_loss", "cut_into_blocks", "rescaled"]
