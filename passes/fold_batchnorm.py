"""Fold inference-mode BatchNormalization into the Conv, ConvTranspose or Gemm that feeds it.

BatchNormalization computes ``y = gamma * (x - mean) / sqrt(var + eps) + beta``. With
``s = gamma / sqrt(var + eps)`` per output channel, a preceding linear layer ``x = W * a + b``
absorbs it exactly (Jacob et al. 2018, section 3.2; Krishnamoorthi 2018, section 2.4):

    W' = s · W  (scaled along the output-channel axis)
    b' = s · (b - mean) + beta

Output-channel axis per producer: Conv weight ``[M, C/g, k...]`` axis 0; ConvTranspose weight
``[C, M/g, k...]`` axis 1 within each group; Gemm ``Y = alpha·A'B' + beta·C`` the columns of B'
(rows of B when ``transB=1``), with the new bias ``s·(beta·C - mean) + beta_bn`` and ``beta=1``.

The fold applies only when the linear layer's output feeds the BatchNormalization alone, every
parameter is constant and the BN has no training outputs. A BN after a ReLU (CREPE) or after
anything else stays. New weight initializers are created, so a weight shared with another node is
never changed behind its back. Arithmetic is done in float64 and cast back to the weight's type.
"""

from __future__ import annotations

import numpy as np

from qcompiler.ir import Graph, Model, Node, Value
from qcompiler.pass_manager import Pass, PassResult, register_pass

FOLDABLE_PRODUCERS = ("Conv", "ConvTranspose", "Gemm")


def find_foldable_batchnorms(graph: Graph) -> list[tuple[Node, Node]]:
    """(producer, batchnorm) pairs where the BN can be folded into the producer."""
    outputs = set(map(id, graph.outputs))
    pairs = []
    for bn in graph:
        if bn.op_type != "BatchNormalization" or bn.domain not in ("", "ai.onnx"):
            continue
        if bn.attrs.get("training_mode", 0) or any(v is not None for v in bn.outputs[1:]):
            continue
        if any(v is None or v.const is None for v in bn.inputs[1:5]):
            continue
        x = bn.inputs[0]
        producer = x.producer()
        if producer is None or producer.op_type not in FOLDABLE_PRODUCERS or producer.domain not in ("", "ai.onnx"):
            continue
        if len(x.uses()) != 1 or id(x) in outputs:
            continue
        weight = producer.inputs[1]
        bias = producer.inputs[2] if len(producer.inputs) > 2 else None
        if weight is None or weight.const is None or (bias is not None and bias.const is None):
            continue
        if producer.op_type == "Gemm" and not _gemm_foldable(producer, bn):
            continue
        pairs.append((producer, bn))
    return pairs


def _gemm_foldable(gemm: Node, bn: Node) -> bool:
    out = gemm.outputs[0]
    channels = bn.inputs[1].const.shape[0]
    if out.shape is not None and len(out.shape) != 2:
        return False
    weight = gemm.inputs[1].const
    n_out = weight.shape[0] if gemm.attrs.get("transB", 0) else weight.shape[1]
    return weight.ndim == 2 and n_out == channels


def _bn_scale_shift(bn: Node) -> tuple[np.ndarray, np.ndarray]:
    gamma, beta, mean, var = (v.const.astype(np.float64) for v in bn.inputs[1:5])
    scale = gamma / np.sqrt(var + bn.attrs.get("epsilon", 1e-5))
    return scale, beta - mean * scale


def _scaled_weight(producer: Node, scale: np.ndarray) -> np.ndarray:
    weight = producer.inputs[1].const.astype(np.float64)
    if producer.op_type == "Conv":
        return weight * scale.reshape((-1,) + (1,) * (weight.ndim - 1))
    if producer.op_type == "ConvTranspose":
        groups = producer.attrs.get("group", 1)
        grouped = weight.reshape((groups, weight.shape[0] // groups) + weight.shape[1:])
        per_group = scale.reshape((groups, 1, weight.shape[1]) + (1,) * (weight.ndim - 2))
        return (grouped * per_group).reshape(weight.shape)
    if producer.attrs.get("transB", 0):  # Gemm, B is [N, K]
        return weight * scale[:, None]
    return weight * scale[None, :]


def _current_bias(producer: Node, channels: int) -> np.ndarray:
    bias = producer.inputs[2].const.astype(np.float64) if len(producer.inputs) > 2 and producer.inputs[2] is not None \
        else np.zeros(channels)
    if producer.op_type == "Gemm":
        bias = bias * producer.attrs.get("beta", 1.0)
    return bias


def fold(graph: Graph, producer: Node, bn: Node) -> None:
    """Apply one fold (see the module docstring)."""
    scale, shift = _bn_scale_shift(bn)
    weight_value = producer.inputs[1]
    dtype = weight_value.const.dtype
    weight = _scaled_weight(producer, scale)
    bias = _current_bias(producer, scale.shape[0]) * scale + shift
    orphans = [v for v in list(producer.inputs[1:3]) + list(bn.inputs[1:5]) if v is not None]
    new_weight = graph.add_initializer(Value(graph.unique_name(weight_value.name + "_bnfold"),
                                             const=weight.astype(dtype)))
    new_bias = graph.add_initializer(Value(graph.unique_name((bn.name or "bn") + "_bias"),
                                           const=bias.astype(dtype)))
    producer.set_input(1, new_weight)
    if len(producer.inputs) > 2:
        producer.set_input(2, new_bias)
    else:
        producer.append_input(new_bias)
    if producer.op_type == "Gemm":
        producer.attrs["beta"] = 1.0
    result, folded = producer.outputs[0], bn.outputs[0]
    if any(v is folded for v in graph.outputs):
        graph.replace_output(folded, result)
    result.shape = result.shape or folded.shape
    folded.replace_all_uses_with(result)
    graph.remove(bn)
    for value in orphans:
        if not value.uses() and graph.initializers.get(value.name) is value:
            del graph.initializers[value.name]


@register_pass("fold-batchnorm")
class FoldBatchNorm(Pass):
    """Fold BatchNormalization into a preceding Conv, ConvTranspose or Gemm."""

    preserves_semantics = True

    def call(self, model: Model) -> PassResult:
        pairs = find_foldable_batchnorms(model.graph)
        for producer, bn in pairs:
            fold(model.graph, producer, bn)
        return PassResult(model, bool(pairs))
