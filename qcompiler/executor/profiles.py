"""Numerics profiles: how the executor computes a quantized graph, chosen by target.

A profile says whether the executor runs the QDQ graph as written (``DequantizeLinear`` -> float op ->
``QuantizeLinear``, which is what onnxruntime computes with graph optimizations disabled and what a
quantization simulator sees) or as the deployed runtime does: onnxruntime's QDQ fusions
(:mod:`.fusion`) turned into integer kernels, with the target CPU's accumulation of u8 x s8 products
(the facts behind :mod:`qcompiler.kernels.reference.gemm`) and its float kernels.

Those are facts of the target (:class:`qcompiler.targets.Target`: ``accumulation`` and ``isa``, with the
measurements behind them), so every target is a profile of the same name, derived by
:meth:`Profile.of`. Two more profiles: ``simulate`` (the graph as written) and ``exact`` (the fusions
with exact int32 accumulation, whatever the CPU).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import UserError
from ..targets import TARGETS, Target, get_target

ACCUMULATION = {"exact": "exact int32 accumulation",
                "avx2_pair_saturate": "u8*s8 pairs summed into saturating int16"}
"""The accumulations the integer kernels model, for people."""


@dataclass(frozen=True)
class Profile:
    """How the executor computes: ``fuse`` onnxruntime's QDQ node units into integer kernels, the
    ``accumulation`` of the integer GEMMs (``"exact"`` or ``"avx2_pair_saturate"``), and the ``isa``
    whose MLAS float kernels (Softmax, Erf) are reproduced (``"fma3"``, ``"avx512f"`` or None)."""

    name: str
    fuse: bool
    accumulation: str
    description: str
    isa: str | None = None

    @classmethod
    def of(cls, target: Target) -> Profile:
        """onnxruntime on ``target``: its fusions, with the target's accumulation and float kernels."""
        return cls(target.name, True, target.accumulation,
                   f"onnxruntime on {target.name}: {ACCUMULATION[target.accumulation]}", target.isa)


PROFILES: dict[str, Profile] = {
    p.name: p
    for p in (
        Profile("simulate", False, "exact",
                "the QDQ graph as written, in float (onnxruntime without graph optimizations)"),
        Profile("exact", True, "exact", f"onnxruntime's fused integer kernels, {ACCUMULATION['exact']}"),
        *map(Profile.of, TARGETS.values()),
    )
}


def get_profile(name: str | Profile) -> Profile:
    """A profile by name (a target's name is its profile); ``auto``: the profile of this CPU's target."""
    if isinstance(name, Profile):
        return name
    if name in PROFILES:
        return PROFILES[name]
    if name == "auto":
        return Profile.of(get_target(name))
    raise UserError(f"unknown numerics profile {name!r}; known: auto, {', '.join(PROFILES)}")
