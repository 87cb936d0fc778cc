"""Layer geometry shared by the passes: weighted layers, their per-channel ranges and weight edits.

A *layer* is an op of the ``"layer"`` role (:mod:`qcompiler.ops`: Conv, Gemm without transA, MatMul)
with a constant float32 weight (and a constant bias, if any). Its weight is seen in one grouped layout,
``[groups, out per group, in per group, rest]`` (Conv) or ``[1, N, K, 1]`` (Gemm, MatMul), in which the
equalization, bias-correction and rounding passes do their per-channel arithmetic. Also: the clipping range of a Relu/Clip, and the BatchNorm statistics
``keep-batchnorm-stats`` records in the plan.
"""

from __future__ import annotations

import math

import numpy as np

from .ir import Graph, Model, Node, Value
from .ops import lookup, weight_axis


def default_domain(node: Node) -> bool:
    return node.domain in ("", "ai.onnx")


def is_layer(node: Node) -> bool:
    """An op whose role is ``"layer"`` (:mod:`qcompiler.ops`) with a constant float32 weight of the layout its
    descriptor describes, and a constant bias of at most one axis, if any."""
    op = lookup(node)
    if op.role != "layer" or len(node.inputs) <= op.weight_input:
        return False
    w = node.inputs[op.weight_input]
    if w is None or w.const is None or w.const.dtype != np.float32:
        return False
    bias = node.inputs[op.bias_input] if op.bias_input is not None and len(node.inputs) > op.bias_input else None
    if bias is not None and (bias.const is None or bias.const.ndim > 1):
        return False
    return op.weight_fits(node, w.const)


def channels_last(node: Node) -> bool:
    """Whether the layer's output channels are on the last axis (Gemm, MatMul) rather than axis 1 (Conv)."""
    return lookup(node).channels_last


def grouped(node: Node, weight: np.ndarray | None = None) -> np.ndarray:
    """The weight (or ``weight``, an array shaped like it) as ``[groups, out per group, in per group, rest]``
    (Conv) or ``[1, N, K, 1]`` (Gemm, MatMul)."""
    w = node.inputs[1].const if weight is None else weight
    if node.op_type == "Conv":
        g = node.attrs.get("group", 1)
        return w.reshape(g, w.shape[0] // g, w.shape[1], -1)
    nk = w if weight_axis(node, w) == 0 else w.T
    return nk[None, :, :, None]


def ungrouped(node: Node, array: np.ndarray) -> np.ndarray:
    """Inverse of :func:`grouped`: an array in grouped layout back in the weight's own layout."""
    w = node.inputs[1].const
    if node.op_type == "Conv":
        return array.reshape(w.shape)
    nk = array[0, :, :, 0]
    return (nk if weight_axis(node, w) == 0 else nk.T).reshape(w.shape)


def output_ranges(node: Node) -> np.ndarray:
    """``max|W|`` per output channel."""
    g = grouped(node)
    return np.abs(g).max(axis=(2, 3)).reshape(-1)


def input_ranges(node: Node) -> np.ndarray:
    """``max|W|`` per input channel (for a grouped Conv, over the output channels of its group)."""
    g = grouped(node)
    return np.abs(g).max(axis=(1, 3)).reshape(-1)


def input_sums(node: Node, c: np.ndarray, weight: np.ndarray | None = None) -> np.ndarray:
    """``W c`` per output channel for a constant input ``c`` (one value per input channel); ``weight``
    replaces the layer's weight (e.g. by its quantization error)."""
    g = grouped(node, weight).astype(np.float64)
    per_group = c.reshape(g.shape[0], g.shape[2])
    return np.einsum("gmck,gc->gm", g, per_group).reshape(-1)


def own_input(graph: Graph, node: Node, index: int) -> Value:
    """``node.inputs[index]`` as an initializer only ``node`` reads (a copy when it is shared)."""
    value = node.inputs[index]
    readers = {id(use.node) for use in value.uses()}
    if readers == {id(node)} and len(value.uses()) == 1 and graph.initializers.get(value.name) is value \
            and not any(v is value for v in graph.inputs + graph.outputs):
        return value
    copy = graph.add_initializer(Value(graph.unique_name(value.name + "_equalized"), const=value.const.copy()))
    node.set_input(index, copy)
    graph.drop_initializer(value)
    return copy


def scale_output(graph: Graph, node: Node, factor: np.ndarray) -> None:
    """Multiply output channel i of the layer (weight and bias) by ``factor[i]``."""
    weight = own_input(graph, node, 1)
    g = grouped(node)
    weight.const = ungrouped(node, (g * factor.reshape(g.shape[0], g.shape[1], 1, 1)).astype(np.float32))
    if len(node.inputs) > 2 and node.inputs[2] is not None:
        bias = own_input(graph, node, 2)
        bias.const = (np.broadcast_to(bias.const, factor.shape) * factor).astype(bias.const.dtype)
        bias.shape = bias.const.shape


def scale_input(graph: Graph, node: Node, factor: np.ndarray) -> None:
    """Multiply the weights reading input channel i by ``factor[i]``."""
    weight = own_input(graph, node, 1)
    g = grouped(node)
    weight.const = ungrouped(node, (g * factor.reshape(g.shape[0], 1, g.shape[2], 1)).astype(np.float32))


def add_to_bias(graph: Graph, node: Node, delta: np.ndarray) -> None:
    """``b += delta`` (one value per output channel); a bias input is added when the layer has none."""
    channels = output_ranges(node).shape[0]
    if len(node.inputs) > 2 and node.inputs[2] is not None:
        bias = own_input(graph, node, 2)
        bias.const = (np.broadcast_to(bias.const.astype(np.float64), (channels,)) + delta).astype(np.float32)
        bias.shape = bias.const.shape
    else:
        value = graph.add_initializer(Value(graph.unique_name(f"{node.name or node.op_type}_bias"),
                                            const=delta.astype(np.float32)))
        node.append_input(value)


def clip_bounds(node: Node) -> tuple[float, float] | None:
    """The (lo, hi) a Relu or Clip with constant bounds clamps to (None for a Clip with computed bounds)."""
    if node.op_type == "Relu":
        return 0.0, math.inf
    bounds = [node.inputs[i] if len(node.inputs) > i else None for i in (1, 2)]
    if any(b is not None and b.const is None for b in bounds):
        return None
    lo = -math.inf if bounds[0] is None else float(bounds[0].const)
    hi = math.inf if bounds[1] is None else float(bounds[1].const)
    return lo, hi


def batchnorm_stats(model: Model, value: Value) -> tuple[np.ndarray, np.ndarray] | None:
    """(mean, std) per channel of ``value`` recorded by ``keep-batchnorm-stats``, or None."""
    return model.plan.batchnorm_stats.get(value.name)
