"""Iterative freezing of oscillating weights (Nagel et al. 2022, "Overcoming Oscillations in
Quantization-Aware Training").

With the straight-through estimator a latent weight next to a rounding boundary is pushed back and forth
across it: its integer flips between two neighbouring levels step after step, which is noise in the
training and leaves the final integer to chance. Low-bit weights of depthwise-separable networks oscillate
most. Per weight integer ``q_t`` (as the fake quantizer computes it after each optimizer step):

* an oscillation at step ``t``: ``q_t`` changed, in the direction opposite to its previous change;
* its frequency ``f ← m · o_t + (1 - m) · f`` and the integers' mean ``q̄ ← m · q_t + (1 - m) · q̄``, both
  exponential moving averages with momentum ``m``;
* once ``f`` exceeds the threshold, the weight is frozen at ``round(q̄)``: its latent value is held at that
  integer times the current step size, so it no longer trains while its step size still does.

The threshold falls from ``start`` to ``final`` along a cosine over the run (early on almost nothing
freezes; at the end a weight that flips once in ``1 / final`` steps does). Only weights of
:data:`MAX_LEVELS` levels or fewer (4 bits, ternary) are tracked, as in the paper: 8-bit grids are fine
enough. Binary weights are not: the paper studies rounding to a uniform grid, and a sign is not one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from ..kernels.torch_ops.quantize import broadcast
from .graph import QuantizedModel

MAX_LEVELS = 16
START = 0.1
"""The threshold's first value (the paper's, for 4-bit MobileNetV2), or ``final`` when that is larger."""


@dataclass
class _Track:
    previous: torch.Tensor  # integers after the last step
    direction: torch.Tensor  # sign of the last change (0: none yet)
    frequency: torch.Tensor
    mean: torch.Tensor  # EMA of the integers
    frozen: torch.Tensor  # bool
    value: torch.Tensor  # the frozen integers (where frozen)


class OscillationFreezer:
    """Tracks the integer weights of ``module``'s low-bit weight quantizers over ``steps`` optimizer steps
    and freezes those that oscillate (module docstring). Call :meth:`update` after every optimizer step."""

    def __init__(self, module: QuantizedModel, final: float, steps: int, momentum: float = 0.01):
        self.module, self.final, self.steps, self.momentum = module, final, steps, momentum
        self.start = max(START, final)
        self.tracks: dict[str, _Track] = {}
        for key, quantizer in module.weights.items():
            if quantizer.binary or quantizer.qmax - quantizer.qmin + 1 > MAX_LEVELS:
                continue
            q = self.integers(key)
            self.tracks[key] = _Track(q, torch.zeros_like(q), torch.zeros_like(q), q.clone(),
                                      torch.zeros_like(q, dtype=torch.bool), q.clone())

    def threshold(self, step: int) -> float:
        """The freezing threshold after ``step`` steps."""
        progress = min(step, self.steps) / self.steps
        return self.final + (self.start - self.final) * 0.5 * (1 + math.cos(math.pi * progress))

    def _grid(self, key: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(latent weight parameter, its broadcast step size, zero point)."""
        quantizer = self.module.weights[key]
        weight = self.module.parameters_[f"weight_{key}"]
        shape = tuple(weight.shape)
        scale = broadcast(self.module.weight_scale(key).detach(), shape, quantizer.axis, quantizer.block_size)
        zero = broadcast(quantizer.zero_point.astype(np.float32), shape, quantizer.axis, quantizer.block_size)
        return weight, scale, zero

    @torch.no_grad()
    def integers(self, key: str) -> torch.Tensor:
        """The integers the fake quantizer gives weight ``key`` now."""
        return self._levels(key, *self._grid(key))

    def _levels(self, key: str, weight: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor) -> torch.Tensor:
        quantizer = self.module.weights[key]
        return torch.clamp(torch.round(weight / scale) + zero, quantizer.qmin, quantizer.qmax)

    @torch.no_grad()
    def update(self, step: int) -> None:
        """Record the integers after optimizer step ``step`` (counted from 1), freeze the weights that now
        oscillate too often, and hold every frozen weight at its integer."""
        m, threshold = self.momentum, self.threshold(step)
        for key, track in self.tracks.items():
            weight, scale, zero = self._grid(key)
            q = self._levels(key, weight, scale, zero)
            any_frozen = bool(track.frozen.any())
            if any_frozen:
                q = torch.where(track.frozen, track.value, q)
            change = torch.sign(q - track.previous)
            track.frequency.lerp_((change * track.direction < 0).to(q.dtype), m)  # a change against the last one
            track.direction = torch.where(change != 0, change, track.direction)
            track.mean.lerp_(q, m)
            track.previous = q
            newly = track.frequency > threshold
            if any_frozen:
                newly &= ~track.frozen
            if newly.any():
                track.value = torch.where(newly, torch.round(track.mean), track.value)
                track.frozen |= newly
                any_frozen = True
            if any_frozen:
                weight.copy_(torch.where(track.frozen, (track.value - zero) * scale, weight))

    def frozen_share(self) -> float:
        """Share of the tracked weights frozen so far (0 when none is tracked)."""
        total = sum(t.frozen.numel() for t in self.tracks.values())
        return sum(int(t.frozen.sum()) for t in self.tracks.values()) / total if total else 0.0

    def state_dict(self) -> dict:
        return {key: vars(track).copy() for key, track in self.tracks.items()}

    def load_state_dict(self, state: dict) -> None:
        self.tracks = {key: _Track(**fields) for key, fields in state.items()}


__all__ = ["MAX_LEVELS", "OscillationFreezer"]
