"""Targets: what the quantized model runs on, as data.

A target says which activation and weight types are fast, whether weights need a reduced range,
which ops have fused int8 kernels in the runtime, which ops merely pass quantized values through, and
how the runtime computes there (its integer accumulation, the instruction set of its float kernels).
It is data, not a subclass: passes read its fields, and the executor's numerics profile of the same
name is derived from it (:mod:`qcompiler.executor.profiles`).

Facts behind the built-in targets (onnxruntime CPU execution provider, measured in
``../shared/research/anchors-tools.md`` section 4 and re-measured by ``benchmarks/``):

* On x86 the fast int8 path is uint8 activations with int8 weights (U8S8). int8 activations (S8S8)
  run no faster than float there.
* x86 without VNNI (AVX2 only) multiplies u8 by s8 with ``vpmaddubsw``, which adds two adjacent
  products into an int16 with saturation: 255·127·2 = 64770 overflows 32767. Per-channel weights
  reach ±127 in every channel and saturate often (MobileNetV2-style digits: 96.98 % in simulation,
  80.68 % on the real kernels). Weights limited to 7 bits (``reduce_range``: -64..63) cannot
  overflow (255·64·2 = 32640) and keep the accuracy (97.38 %). Depthwise convolutions run on MLAS's
  depthwise kernel instead, which widens to int16 and accumulates in int32: exact, so their weights keep 8
  bits (``tests/test_assignment.py`` probes onnxruntime for it).
* Dynamic int8's kernels (``MatMulInteger`` and its fusions ``DynamicQuantizeMatMul`` and
  ``MatMulIntegerToFloat``) are u8 x s8 GEMMs of the same MLAS family: on AVX2 without VNNI they saturate
  alike (``tests/schemes/test_dynamic_scheme.py``); with uint8 weights (u8 x u8) they are exact, so
  ``x86-avx2`` gives dynamic int8 8-bit uint8 weights: on MiniLM-L6 closer to FP32 than 7-bit int8 ones
  and about as fast (``benchmarks/dynamic_minilm.py``).
* With VNNI (``vpdpbusd``) products are accumulated in int32 directly: no saturation, full range.
  The ``avx2_pair_saturate`` accumulation was measured bit for bit against onnxruntime 1.32 under
  ``qemu-x86_64 -cpu Haswell`` (tests/kernels/test_avx2_profile.py, benchmarks/executor_vs_ort.py) and
  natively on an AVX2-only AMD EPYC (tests/kernels/test_vs_onnxruntime.py,
  tests/executor/test_vs_onnxruntime.py), the exact one natively on AVX512-VNNI.
* On arm64, MLAS's NEON kernels (``udot``/``sdot`` or widening ``umull``/``smull``) accumulate exactly
  in int32. Not measured here (no Arm machine); QLinearAdd's fixed-point NEON path is not modelled.
* onnxruntime's float Softmax and Erf run MLAS kernels whose last bits depend on the instruction set,
  and a QuantizeLinear after them turns an ulp into an LSB now and then: ``isa`` names the kernels the
  executor reproduces: the AVX2/FMA3 ones on ``x86-avx2`` (``"fma3"``), the AVX-512F ones on
  ``x86-vnni`` (``"avx512f"``, the AVX512-VNNI machine measured; an AVX-VNNI CPU without AVX-512 would
  run the FMA3 ones), the ONNX formula elsewhere (see :mod:`qcompiler.kernels.reference.softmax`).
* ``--target auto`` does not trust CPU flags: :func:`runtime_saturates_u8s8` runs a QLinearConv whose
  pair sums overflow int16 and checks onnxruntime's answer. On this project's 2-core AMD EPYC
  machines with AVX512-VNNI (flags: avx2, avx512_vnni, avx_vnni) onnxruntime 1.32 answered exactly
  (measured 2026-11-22), so auto picks ``x86-vnni`` there; on the AVX2-only ones (flags: avx2, fma,
  no AVX-512, no VNNI) it saturates, and auto picks ``x86-avx2`` (measured 2026-12-05).
* Which ``DequantizeLinear -> op -> QuantizeLinear`` units onnxruntime fuses into integer kernels, and
  around which data-movement ops it drops equal Q/DQ pairs, are per-op facts: :mod:`qcompiler.ops`.
"""

from __future__ import annotations

import functools
import platform
from collections.abc import Iterable
from dataclasses import dataclass, field, replace

from onnx import TensorProto

from .errors import UserError
from .ir import Node
from .ir.quant import Scheme
from .ops import ops_with


@dataclass(frozen=True)
class Target:
    """What a deployment target runs fast and exactly.

    Attributes:
        name: registry key (``--target``).
        description: one line for people.
        activation_dtype: ONNX element type of quantized activations.
        weight_dtype: ONNX element type of quantized weights.
        weight_reduce_range: limit weights to 7 bits (x86 without VNNI: avoids int16 saturation), except
            a depthwise Conv's (:meth:`reduces_weight_range`).
        dynamic_weight_dtype: ONNX element type of dynamic int8's weights (uint8 where u8 x s8 saturates:
            onnxruntime's u8 x u8 dynamic kernels are exact there, so the weights keep 8 bits).
        per_channel: weights quantized per output channel by default.
        int8_ops: ops with fused integer kernels, quantized when their neighbours allow (default: the
            layers and int8 ops of :mod:`qcompiler.ops`).
        pass_through_ops: ops that keep their input's quantization (default: the pass-through ops).
        absorbed_activations: activations folded into the quantization of the op before them (default:
            the absorbable ops).
        wide_activation_dtype: ONNX element type of 16-bit activations (A16W8), which mixed precision may give
            the layers int8 cannot keep.
        wide_activations: what 16-bit activations buy here: ``"fast"`` (the runtime has 16-bit integer
            kernels: an NPU's A16W8) or ``"accuracy"`` (onnxruntime's CPU kernels have none: such a layer
            computes in float from its int8-stored weights; a smaller file than float, float's speed at best).
            Mixed precision offers 16 bits by default only where they are fast (``MixedPrecision.int16``).
        accumulation: how the runtime sums u8·s8 products ("exact" or "avx2_pair_saturate").
        isa: the instruction set of the runtime's float Softmax/Erf kernels the executor reproduces
            (``"fma3"``, ``"avx512f"``, or None for the ONNX formula).
    """

    name: str
    description: str
    activation_dtype: int = TensorProto.UINT8
    weight_dtype: int = TensorProto.INT8
    weight_reduce_range: bool = False
    dynamic_weight_dtype: int = TensorProto.INT8
    per_channel: bool = True
    int8_ops: frozenset[str] = field(default_factory=lambda: ops_with("layer", "int8_op"))
    pass_through_ops: frozenset[str] = field(default_factory=lambda: ops_with("pass_through"))
    absorbed_activations: frozenset[str] = field(default_factory=lambda: ops_with("absorbable"))
    wide_activation_dtype: int = TensorProto.UINT16
    wide_activations: str = "accuracy"
    accumulation: str = "exact"
    isa: str | None = None

    @property
    def activation_scheme(self) -> Scheme:
        """Static activations: asymmetric, per tensor, in the target's activation type."""
        return Scheme(self.activation_dtype, symmetric=False)

    @property
    def wide_activation_scheme(self) -> Scheme:
        """16-bit activations (A16W8): asymmetric, per tensor, in ``wide_activation_dtype``."""
        return Scheme(self.wide_activation_dtype, symmetric=False)

    @property
    def dynamic_activation_scheme(self) -> Scheme:
        """Activations quantized at run time: ``DynamicQuantizeLinear``'s uint8, asymmetric, per tensor."""
        return Scheme(TensorProto.UINT8, symmetric=False, dynamic=True)

    def weight_scheme(self, per_channel: bool = True, reduce_range: bool | None = None) -> Scheme:
        """Weights: symmetric, per output channel (or per tensor), reduced range where the target asks
        (``reduce_range``: a layer's own answer, :meth:`reduces_weight_range`)."""
        return Scheme(self.weight_dtype, symmetric=True, granularity="axis" if per_channel else "tensor",
                      reduce_range=self.weight_reduce_range if reduce_range is None else reduce_range)

    def reduces_weight_range(self, layers: Iterable[Node]) -> bool:
        """Whether a weight read by ``layers`` gets the reduced range: on a ``weight_reduce_range`` target,
        unless every layer is a depthwise Conv (one input and one output channel per group), which
        onnxruntime runs on MLAS's depthwise kernel: it widens u8 and s8 to int16 and accumulates in int32,
        exactly, so its weights keep all 8 bits (the executor models the same, ``kernels/reference/conv.py``)."""
        return self.weight_reduce_range and not all(_depthwise_conv(layer) for layer in layers)

    def dynamic_weight_scheme(self, per_channel: bool = True) -> Scheme:
        """Dynamic int8's weights: symmetric, per output channel (or per tensor), in ``dynamic_weight_dtype``
        (uint8 with zero point 128 where that type is uint8), reduced range only for int8 weights where the
        target asks for it."""
        reduce_range = self.weight_reduce_range and self.dynamic_weight_dtype == TensorProto.INT8
        return Scheme(self.dynamic_weight_dtype, symmetric=True, granularity="axis" if per_channel else "tensor",
                      reduce_range=reduce_range)

    def with_options(self, **changes) -> Target:
        """A copy with some fields changed (e.g. ``per_channel=False``)."""
        return replace(self, **changes)


def _depthwise_conv(node: Node) -> bool:
    weight = node.inputs[1] if node.op_type == "Conv" and len(node.inputs) > 1 else None
    shape = weight.shape if weight is not None else None
    return bool(shape) and len(shape) >= 3 and shape[1] == 1 and shape[0] == node.attrs.get("group", 1) > 1


TARGETS: dict[str, Target] = {
    t.name: t
    for t in (
        Target("x86-avx2", "x86-64 with AVX2, no VNNI: U8S8, 7-bit per-channel weights (depthwise convs and dynamic U8U8: 8-bit)",
               weight_reduce_range=True, dynamic_weight_dtype=TensorProto.UINT8, accumulation="avx2_pair_saturate",
               isa="fma3"),
        Target("x86-vnni", "x86-64 with AVX512-VNNI or AVX-VNNI: U8S8, full-range per-channel weights",
               isa="avx512f"),
        Target("arm64", "64-bit Arm (NEON dot product): U8S8, full-range per-channel weights"),
    )
}


@functools.cache
def runtime_saturates_u8s8() -> bool:
    """Whether this machine's onnxruntime sums u8·s8 products pairwise into a saturating int16.

    Measured, not guessed from CPU flags: a QLinearConv with x = 255 and w = 127 over 64 input
    channels sums to 64·255·127 = 2,072,640 with int32 accumulation (output 207 at y_scale 10^4)
    but to 32·32767 = 1,048,544 with pair saturation (output 105). CPU flags are not enough: the
    runtime picks its kernels itself (on this project's AMD EPYC machines, which report
    ``avx512_vnni``, onnxruntime 1.32 accumulates exactly).
    """
    import numpy as np
    import onnxruntime as ort
    from onnx import helper, numpy_helper

    channels = 64
    params = {"xs": np.array(1.0, np.float32), "xz": np.array(0, np.uint8),
              "w": np.full((8, channels, 1, 1), 127, np.int8), "ws": np.ones(8, np.float32),
              "wz": np.zeros(8, np.int8), "ys": np.array(10000.0, np.float32), "yz": np.array(0, np.uint8)}
    node = helper.make_node("QLinearConv", ["x", "xs", "xz", "w", "ws", "wz", "ys", "yz"], ["y"])
    graph = helper.make_graph(
        [node], "saturation_probe",
        [helper.make_tensor_value_info("x", TensorProto.UINT8, [1, channels, 2, 2])],
        [helper.make_tensor_value_info("y", TensorProto.UINT8, None)],
        [numpy_helper.from_array(v, k) for k, v in params.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    x = np.full((1, channels, 2, 2), 255, np.uint8)
    got = int(session.run(None, {"x": x})[0].flat[0])
    exact = round(channels * 255 * 127 / 10000.0)
    return got != exact


def detect_target() -> Target:
    """The target of the CPU this runs on, decided by probing onnxruntime's int8 arithmetic."""
    machine = platform.machine().lower()
    if machine in ("aarch64", "arm64"):
        return TARGETS["arm64"]
    return TARGETS["x86-avx2"] if runtime_saturates_u8s8() else TARGETS["x86-vnni"]


def get_target(name: str) -> Target:
    """``auto`` (this CPU) or a target by name; a clear error for unknown names."""
    if name == "auto":
        return detect_target()
    try:
        return TARGETS[name]
    except KeyError:
        raise UserError(f"unknown target {name!r}; known targets: auto, {', '.join(sorted(TARGETS))}") from None
