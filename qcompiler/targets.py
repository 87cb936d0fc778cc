"""Targets: what the quantized model runs on, as data.

A target says which activation and weight types are fast, whether weights need a reduced range,
which ops have fused int8 kernels in the runtime, and which ops merely pass quantized values through.
It is data, not a subclass: passes read its fields.

Facts behind the built-in targets (onnxruntime CPU execution provider, measured in
``../shared/research/anchors-tools.md`` section 4 and re-measured by ``benchmarks/``):

* On x86 the fast int8 path is uint8 activations with int8 weights (U8S8). int8 activations (S8S8)
  run no faster than float there.
* x86 without VNNI (AVX2 only) multiplies u8 by s8 with ``vpmaddubsw``, which adds two adjacent
  products into an int16 with saturation: 255·127·2 = 64770 overflows 32767. Per-channel weights
  reach ±127 in every channel and saturate often (MobileNetV2-style digits: 96.98 % in simulation,
  80.68 % on the real kernels). Weights limited to 7 bits (``reduce_range``: -64..63) cannot
  overflow (255·64·2 = 32640) and keep the accuracy (97.38 %).
* With VNNI (``vpdpbusd``) products are accumulated in int32 directly: no saturation, full range.
* onnxruntime fuses ``DequantizeLinear -> op -> QuantizeLinear`` into integer kernels for Conv,
  MatMul, Gemm, Add, Mul, Concat, average pooling, Sigmoid, LeakyRelu, and drops Q/DQ pairs around
  data-movement ops (Reshape, Transpose, MaxPool, ...) when input and output scales are equal.
"""

from __future__ import annotations

import platform
from dataclasses import dataclass, field, replace
from pathlib import Path

from onnx import TensorProto

from .errors import UserError

WEIGHTED_OPS = frozenset({"Conv", "MatMul", "Gemm"})
"""Ops whose second input is a weight quantized per channel."""

PASS_THROUGH_OPS = frozenset({"MaxPool", "Reshape", "Transpose", "Flatten", "Squeeze", "Unsqueeze"})
"""Ops that move or select values without arithmetic: the output reuses the input's quantization."""


@dataclass(frozen=True)
class Target:
    """What a deployment target runs fast and exactly.

    Attributes:
        name: registry key (``--target``).
        description: one line for people.
        activation_dtype: ONNX element type of quantized activations.
        weight_dtype: ONNX element type of quantized weights.
        weight_reduce_range: limit weights to 7 bits (x86 without VNNI: avoids int16 saturation).
        per_channel: weights quantized per output channel by default.
        int8_ops: ops with fused integer kernels, quantized when their neighbours allow.
        pass_through_ops: ops that keep their input's quantization (see PASS_THROUGH_OPS).
        absorbed_activations: activations folded into the quantization of the op before them.
        accumulation: how the runtime sums u8·s8 products ("exact" or "avx2_pair_saturate").
    """

    name: str
    description: str
    activation_dtype: int = TensorProto.UINT8
    weight_dtype: int = TensorProto.INT8
    weight_reduce_range: bool = False
    per_channel: bool = True
    int8_ops: frozenset[str] = field(default_factory=lambda: WEIGHTED_OPS | {"Add", "Concat", "GlobalAveragePool", "AveragePool"})
    pass_through_ops: frozenset[str] = PASS_THROUGH_OPS
    absorbed_activations: frozenset[str] = frozenset({"Relu", "Clip"})
    accumulation: str = "exact"

    def with_options(self, **changes) -> Target:
        """A copy with some fields changed (e.g. ``per_channel=False``)."""
        return replace(self, **changes)


TARGETS: dict[str, Target] = {
    t.name: t
    for t in (
        Target("x86-avx2", "x86-64 with AVX2, no VNNI: U8S8, 7-bit per-channel weights",
               weight_reduce_range=True, accumulation="avx2_pair_saturate"),
        Target("x86-vnni", "x86-64 with AVX512-VNNI or AVX-VNNI: U8S8, full-range per-channel weights"),
        Target("arm64", "64-bit Arm (NEON dot product): U8S8, full-range per-channel weights"),
    )
}


def cpu_flags() -> set[str]:
    """The CPU feature flags of this machine (empty where /proc/cpuinfo is not available)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            return set(line.split(":", 1)[1].split())
    return set()


def detect_target() -> Target:
    """The target of the CPU this runs on."""
    machine = platform.machine().lower()
    if machine in ("aarch64", "arm64"):
        return TARGETS["arm64"]
    flags = cpu_flags()
    if flags & {"avx512_vnni", "avx_vnni", "amx_int8"}:
        return TARGETS["x86-vnni"]
    return TARGETS["x86-avx2"]


def get_target(name: str) -> Target:
    """``auto`` (this CPU) or a target by name; a clear error for unknown names."""
    if name == "auto":
        return detect_target()
    try:
        return TARGETS[name]
    except KeyError:
        raise UserError(f"unknown target {name!r}; known targets: auto, {', '.join(sorted(TARGETS))}") from None
