"""Numerics profiles: how the executor computes a quantized graph, chosen by target.

A profile says whether the executor runs the QDQ graph as written (``DequantizeLinear`` -> float op ->
``QuantizeLinear``, which is what onnxruntime computes with graph optimizations disabled and what a
quantization simulator sees) or as the deployed runtime does: onnxruntime's QDQ fusions
(:mod:`.fusion`) turned into integer kernels, with the target CPU's accumulation.

Accumulation of u8 x s8 products (the facts behind :mod:`qcompiler.kernels.reference.gemm`):

* ``x86-avx2``: AVX2 without VNNI. MLAS's ``vpmaddubsw`` kernels add the products of adjacent k pairs
  into an int16 with saturation; measured bit for bit against onnxruntime 1.32 under
  ``qemu-x86_64 -cpu Haswell`` (tests/kernels/test_avx2_profile.py, benchmarks/executor_vs_ort.py),
  and natively on an AVX2-only AMD EPYC (tests/kernels/test_vs_onnxruntime.py,
  tests/executor/test_vs_onnxruntime.py).
* ``x86-vnni``: ``vpdpbusd`` accumulates in int32 exactly; measured natively on AVX512-VNNI.
* ``arm64``: MLAS's NEON kernels (``udot``/``sdot`` or widening ``umull``/``smull``) accumulate
  exactly in int32. Not measured here (no Arm machine); QLinearAdd's fixed-point NEON path is not
  modelled (the AVX2 float path is used).
* ``exact``: exact int32 accumulation with the fusions, whatever the CPU.

Float kernels (``isa``): onnxruntime's float Softmax and Erf run MLAS kernels whose last bits depend
on the instruction set, and a QuantizeLinear after them turns an ulp into an LSB now and then.
``x86-avx2`` models the AVX2/FMA3 kernels (``isa="fma3"``), ``x86-vnni`` the AVX-512F ones
(``"avx512f"``, the AVX512-VNNI machine measured; an AVX-VNNI CPU without AVX-512 would run the FMA3
ones); the others compute the ONNX formula (see :mod:`qcompiler.kernels.reference.softmax`).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import UserError


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


PROFILES: dict[str, Profile] = {
    p.name: p
    for p in (
        Profile("simulate", False, "exact",
                "the QDQ graph as written, in float (onnxruntime without graph optimizations)"),
        Profile("exact", True, "exact", "onnxruntime's fused integer kernels, exact int32 accumulation"),
        Profile("x86-avx2", True, "avx2_pair_saturate",
                "onnxruntime on x86 AVX2 without VNNI: u8*s8 pairs summed into saturating int16", "fma3"),
        Profile("x86-vnni", True, "exact", "onnxruntime on x86 with VNNI: exact int32 accumulation", "avx512f"),
        Profile("arm64", True, "exact", "onnxruntime on 64-bit Arm: exact int32 accumulation"),
    )
}


def get_profile(name: str | Profile) -> Profile:
    """A profile by name; ``auto`` and target names resolve through :mod:`qcompiler.targets`."""
    if isinstance(name, Profile):
        return name
    if name in PROFILES:
        return PROFILES[name]
    from ..targets import TARGETS, get_target

    if name == "auto" or name in TARGETS:
        target = get_target(name)
        return PROFILES.get(target.name) or Profile(target.name, True, target.accumulation, target.description)
    raise UserError(f"unknown numerics profile {name!r}; known: auto, {', '.join(PROFILES)}")
