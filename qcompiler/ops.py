"""One descriptor per op kind: the per-op facts that targets, passes and the executor read.

Each op type of the default ONNX domain that the compiler treats specially has one :class:`OpQuant` in
:data:`OPS`; :func:`lookup` finds a node's (a blank descriptor, every fact absent, for the others). To
teach the compiler an op, add its descriptor here: precision assignment, Q/DQ lowering, the summary, and
the executor's model of onnxruntime's QDQ fusions and propagation all follow. Not yet the weight
rewrites of ``qcompiler.layers`` (grouped layout, channel scaling, bias edits) and the sensitivity
analysis: they still assume Conv, Gemm and MatMul with the weight at input 1 and the bias at input 2.

The onnxruntime facts are those of onnxruntime 1.32's CPU provider, from
``core/optimizer/qdq_transformer/selectors_actions/qdq_selector_action_transformer.cc`` (which
``DequantizeLinear -> op -> QuantizeLinear`` units become which kernel, and around which ops equal Q/DQ
pairs are dropped: ``DropQDQNodesRules``) and ``core/optimizer/qdq_transformer/qdq_propagation.cc``
(``CanNodePropagate``: the ops Q/DQ pairs are copied across before fusing). The two lists differ, so
they are two facts: Flatten's pair is dropped but Flatten does not propagate (``Softmax -> Flatten ->
Q`` keeps a float Softmax), Slice does both, but is not a pass-through op of precision assignment yet
(see its entry; ``tests/test_ops.py`` checks every pass-through op against the onnxruntime installed).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np

from .ir import Node

Role = Literal["layer", "int8_op", "pass_through", "absorbable"]
Shapes = dict[str, tuple[int, ...]]
MS = "com.microsoft"


@dataclass(frozen=True)
class OpQuant:
    """What the compiler knows about one op type.

    Attributes:
        op_type: the ONNX op type (default domain).
        role: what precision assignment (:mod:`qcompiler.assignment`) does with it: ``"layer"``, a
            weighted op quantized where it stands (the compute is there); ``"int8_op"``, an op with an
            integer kernel, quantized when its activation inputs already are; ``"pass_through"``, an op
            that moves or selects values, whose output reuses its input's spec (onnxruntime drops the
            equal Q/DQ pair around it and runs it on integers); ``"absorbable"``, a clipping activation
            that the saturation of the QuantizeLinear after a layer performs; None, no decision.
        weight_input: index of the weight input.
        weight_axis: the weight's output-channel axis (per-channel scales), or a function of the node.
        weight_fits: whether a constant weight has the layout the other facts (axis, layer geometry)
            describe.
        two_activations: also quantized when the weight input is an activation (both per tensor).
        bias_input: index of the bias input, which becomes int32 with scale ``s_x · s_w`` when quantized.
        channels_last: output channels are the output's last axis (else axis 1).
        ort_fusion: the ``(domain, op_type)`` onnxruntime fuses a Q/DQ unit of this op into.
        float_output_fusion: the kernel for a unit without the output QuantizeLinear (an int8 op with a
            float output), if onnxruntime has one.
        ort_propagates: onnxruntime's QDQ propagation copies Q/DQ pairs across it.
        output_spans_inputs: the output's range is the union of the activation inputs' ranges
            (:meth:`~qcompiler.ir.plan.QuantPlan.span`): onnxruntime's QLinearConcat copies an input whose
            spec equals the output's and requantizes only the others, so one input, the widest, is copied.
        gemm_with_add: onnxruntime's MatMulAddFusion first merges it with an Add that reads it into a
            float Gemm when its input is 2-D or fully static, before the QDQ fusions.
        macs: multiply-accumulates of a node on concrete shapes (by value name).
    """

    op_type: str
    role: Role | None = None
    weight_input: int | None = None
    weight_axis: int | Callable[[Node], int] | None = None
    weight_fits: Callable[[Node, np.ndarray], bool] | None = None
    two_activations: bool = False
    bias_input: int | None = None
    channels_last: bool = False
    ort_fusion: tuple[str, str] | None = None
    float_output_fusion: tuple[str, str] | None = None
    ort_propagates: bool = False
    output_spans_inputs: bool = False
    gemm_with_add: bool = False
    macs: Callable[[Node, Shapes], int] | None = None


def _conv_macs(node: Node, shapes: Shapes) -> int:
    """``numel(Y) · C_in/group · prod(kernel)``."""
    return math.prod(shapes[node.outputs[0].name]) * math.prod(shapes[node.inputs[1].name][1:])


def _conv_transpose_macs(node: Node, shapes: Shapes) -> int:
    """``numel(X) · C_out/group · prod(kernel)``."""
    return math.prod(shapes[node.inputs[0].name]) * math.prod(shapes[node.inputs[1].name][1:])


def _linear_macs(node: Node, shapes: Shapes) -> int:
    """``numel(Y) · K``, K the last axis of A (the first for a Gemm with ``transA``)."""
    a = shapes[node.inputs[0].name]
    k = a[0] if node.op_type == "Gemm" and node.attrs.get("transA", 0) else a[-1]
    return math.prod(shapes[node.outputs[0].name]) * k


OPS: dict[str, OpQuant] = {
    op.op_type: op
    for op in (
        OpQuant("Conv", "layer", weight_input=1, weight_axis=0,  # [M, C/group, k...]
                weight_fits=lambda node, w: w.ndim >= 3, bias_input=2,
                ort_fusion=("", "QLinearConv"), macs=_conv_macs),
        OpQuant("Gemm", "layer", weight_input=1,
                weight_axis=lambda node: 0 if node.attrs.get("transB", 0) else 1,  # [N, K] or [K, N]
                weight_fits=lambda node, w: w.ndim == 2 and not node.attrs.get("transA", 0), bias_input=2,
                channels_last=True, ort_fusion=(MS, "QGemm"), float_output_fusion=(MS, "QGemm"), macs=_linear_macs),
        OpQuant("MatMul", "layer", weight_input=1, weight_axis=-1,  # [..., K, N]
                weight_fits=lambda node, w: w.ndim == 2, two_activations=True, channels_last=True,
                ort_fusion=("", "QLinearMatMul"), float_output_fusion=(MS, "MatMulIntegerToFloat"),
                gemm_with_add=True, macs=_linear_macs),
        OpQuant("ConvTranspose", weight_input=1, macs=_conv_transpose_macs),
        OpQuant("MatMulInteger", weight_input=1, macs=_linear_macs),  # dynamic int8's linear layers
        OpQuant("Add", "int8_op", ort_fusion=(MS, "QLinearAdd")),
        OpQuant("Concat", "int8_op", ort_fusion=(MS, "QLinearConcat"), output_spans_inputs=True),
        OpQuant("GlobalAveragePool", "int8_op", ort_fusion=(MS, "QLinearGlobalAveragePool")),
        OpQuant("AveragePool", "int8_op", ort_fusion=(MS, "QLinearAveragePool")),
        OpQuant("Softmax", ort_fusion=(MS, "QLinearSoftmax")),
        OpQuant("MaxPool", "pass_through", ort_propagates=True),
        OpQuant("Reshape", "pass_through", ort_propagates=True),
        OpQuant("Transpose", "pass_through", ort_propagates=True),
        OpQuant("Squeeze", "pass_through", ort_propagates=True),
        OpQuant("Unsqueeze", "pass_through", ort_propagates=True),
        # onnxruntime drops an equal Q/DQ pair around Slice too (DropQDQNodesRules), but quantizing it as a
        # pass-through op changes compiled models (PP-OCRv4 rec: 121 -> 131 QuantizeLinear nodes, other
        # outputs): a placement decision to measure (latency, accuracy) before making; QDQ propagation does cross it
        OpQuant("Slice", ort_propagates=True),
        OpQuant("Flatten", "pass_through"),
        OpQuant("Relu", "absorbable"),
        OpQuant("Clip", "absorbable"),
    )
}
"""The descriptors, by op type."""


def lookup(node: Node) -> OpQuant:
    """The descriptor of ``node``'s op (a blank one for ops without one and for other domains)."""
    op = OPS.get(node.op_type) if node.domain in ("", "ai.onnx") else None
    return op or OpQuant(node.op_type)


def ops_with(*roles: Role) -> frozenset[str]:
    """The op types whose role is one of ``roles``."""
    return frozenset(name for name, op in OPS.items() if op.role in roles)


def weight_axis(node: Node, weight: np.ndarray) -> int:
    """The output-channel axis of ``node``'s ``weight`` (non-negative)."""
    axis = lookup(node).weight_axis
    return (axis(node) if callable(axis) else axis) % weight.ndim
