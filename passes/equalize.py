"""Cross-layer equalization and high-bias absorption (Nagel et al. 2019, "Data-Free Quantization Through
Weight Equalization and Bias Correction", ICCV, arXiv:1906.04721).

**Cross-layer equalization** (``equalize``, section 4.1). For two layers with a positively homogeneous
relay between them, ``y = W2 f(W1 x + b1) + b2`` with ``f(s·z) = s·f(z)`` for ``s > 0`` (ReLU, LeakyReLU,
PReLU, max/average pooling, or nothing), a positive per-channel scale ``S = diag(s)`` leaves ``y``
unchanged::

    W1' = S^-1 W1,   b1' = S^-1 b1,   W2' = W2 S                                            (eq. 4)

The scale that makes both layers' per-channel ranges equal, ``r1_i' = r2_i' = sqrt(r1_i r2_i)``, is::

    s_i = sqrt(r1_i / r2_i)                                                                  (eq. 8)

with ``r1_i = max|W1[i, ...]|`` over output channel i of layer 1 and ``r2_i = max|W2[:, i, ...]|`` over
input channel i of layer 2; ``s_i = 1`` where either range is 0. Chains of more than two layers
(Conv -> depthwise Conv -> Conv, MobileNet's separable blocks) are equalized as the paper does, by
sweeping over the pairs until every scale is within ``tolerance`` of 1; for a triplet the sweep
converges to the closed form ``r_i = (r1_i r2_i r3_i)^(1/3)`` for all three layers.

Layers: Conv (any group: grouped and depthwise weights ``[M, C/g, k...]`` map input channel ``i`` to
the output channels of its group), Gemm (``transA=0``; ``B`` as ``[N, K]`` with ``transB=1``, else
``[K, N]``) and MatMul with a constant 2-D weight ``[K, N]``. Relays: Relu, LeakyRelu, PRelu, MaxPool,
AveragePool, GlobalAveragePool, GlobalMaxPool, an Add of a constant channel vector (a MatMul's
bias: it is scaled with the layer) and Flatten (channel ``i`` becomes ``H·W`` consecutive features, so
layer 2's scale is repeated). Every intermediate value must have a single reader and not be a graph
output. Clip (ReLU6) is not positively homogeneous (``min(s·z, 6) != s·min(z, 6)``): it ends the chain
with that reason; ``replace-relu6`` turns ``Clip(0, 6)`` after a layer into Relu first, as DFQ does
(section 5: MobileNetV2 FP32 71.72 -> 71.70), at the cost of the exact float semantics. A weight
read by another node (shared) is copied first, so the other reader keeps its weight.

**High-bias absorption** (``absorb-high-bias``, section 4.2). After equalization some channels of
``W1 x + b1`` have large biases; a per-channel constant ``c`` moves into layer 2::

    b1' = b1 - c,   b2' = b2 + W2 c                                                           (eq. 11)

exact when ``f(z - c) = f(z) - c`` on the values seen. With the BatchNorm statistics of layer 1's
pre-activation, ``N(beta, gamma^2)``, ``c = max(0, beta - 3|gamma|)`` for ReLU (exact for 99.865 % of
values, eq. 12) and ``c = beta`` without activation. For a convolution ``(W2 c)_o = sum_{i,k} W2[o,i,k] c_i``;
zero padding makes it approximate at the borders, so the pass does not claim to preserve semantics.

**BatchNorm statistics** (``keep-batchnorm-stats``). Folding BatchNorm into the convolution loses
``beta`` and ``gamma``; this pass, run just before ``fold-batchnorm``, records them for every foldable
BN under the name of the convolution's output (which survives the fold) in
``model.plan.batchnorm_stats``. ``equalize`` and ``absorb-high-bias`` keep them current
(``beta / s``, ``|gamma| / s``; ``beta - c``), and analytic bias correction reads them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from qcompiler.ir import Graph, Model, Node, Value
from qcompiler.layers import (add_to_bias, batchnorm_stats, channels_last, default_domain, input_ranges, input_sums,
                              is_layer, own_input, output_ranges, scale_input, scale_output)
from qcompiler.pass_manager import Pass, PassResult, register_pass

from .fold_batchnorm import find_foldable_batchnorms

HOMOGENEOUS = ("Relu", "LeakyRelu", "PRelu")
POOLING = ("MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool")


# -- analysis: equalizable pairs -------------------------------------------------------------------


@dataclass
class Pair:
    """``first -> relays -> second``: layer 1's output channel i is layer 2's input channels
    ``i·repeat .. i·repeat + repeat - 1`` (``repeat > 1`` after a spatial Flatten)."""

    first: Node
    relays: list[Node]
    second: Node
    repeat: int = 1

    @property
    def activation(self) -> str | None:
        """The relay's activation op type, or None when all relays are linear (pooling, Flatten, Add)."""
        kinds = [n.op_type for n in self.relays if n.op_type in HOMOGENEOUS]
        return kinds[0] if len(kinds) == 1 else (None if not kinds else "mixed")


def _channel_vector(value: Value, channels: int, last: bool, rank: int | None) -> bool:
    """A constant that adds one value per channel (axis 1, or the last axis) and broadcasts over the rest."""
    c = value.const
    if c is None or c.size != channels or c.ndim > (rank or 0):
        return False
    shape = (1,) * ((rank or 0) - c.ndim) + c.shape
    axis = (rank or 0) - 1 if last else 1
    return shape[axis] == channels


def _follow(graph: Graph, first: Node) -> tuple[Pair | None, str]:
    """Walk from layer 1's output through relays to the next layer; (pair, "") or (None, why not)."""
    outputs = set(map(id, graph.outputs))
    value, relays, repeat = first.outputs[0], [], 1
    last = channels_last(first)
    channels = output_ranges(first).shape[0]
    while True:
        if id(value) in outputs:
            return None, f"{value.name} is a graph output"
        uses = value.uses()
        if len(uses) != 1:
            return None, f"{value.name} has {len(uses)} readers"
        node, index = uses[0]
        op = node.op_type if default_domain(node) else f"{node.domain}.{node.op_type}"
        if is_layer(node) and index == 0:
            if input_ranges(node).shape[0] != channels * repeat:
                return None, f"{node.name} reads {input_ranges(node).shape[0]} channels, not {channels * repeat}"
            return Pair(first, relays, node, repeat), ""
        if index != 0:
            return None, f"{value.name} is input {index} of {op} {node.name}"
        if op in HOMOGENEOUS or (op in POOLING and not last):
            pass
        elif op == "Add" and len(node.inputs) == 2 and repeat == 1 and \
                _channel_vector(node.inputs[1], channels, last, len(value.shape) if value.shape else None):
            pass
        elif op == "Flatten" and not last and node.attrs.get("axis", 1) == 1 and value.shape is not None \
                and all(isinstance(d, int) for d in value.shape[2:]):
            repeat = int(np.prod(value.shape[2:], dtype=np.int64))
            last = True
        elif op == "Clip":
            return None, f"{node.name}: Clip (ReLU6) is not positively homogeneous (replace-relu6 makes it Relu)"
        else:
            return None, f"{op} {node.name} between {first.name} and the next layer"
        relays.append(node)
        value = node.outputs[0]


def find_cle_chains(graph: Graph) -> tuple[list[Pair], list[tuple[str, str]]]:
    """Every equalizable pair of layers, and (layer name, reason) for layers that start none."""
    pairs, skipped = [], []
    for node in graph:
        if is_layer(node):
            pair, reason = _follow(graph, node)
            if pair is not None:
                pairs.append(pair)
            else:
                skipped.append((node.name, reason))
    return pairs, skipped


# -- BatchNorm statistics of pre-activations --------------------------------------------------------


@register_pass("keep-batchnorm-stats")
class KeepBatchNormStats(Pass):
    """Record beta and |gamma| of every foldable BatchNorm before fold-batchnorm removes them."""

    preserves_semantics = True

    def call(self, model: Model) -> PassResult:
        for _, bn in find_foldable_batchnorms(model.graph):
            gamma, beta = (v.const.astype(np.float64) for v in bn.inputs[1:3])
            model.plan.batchnorm_stats[bn.inputs[0].name] = (beta, np.abs(gamma))
        return PassResult(model, False)  # the plan only: the IR is unchanged


# -- the passes ------------------------------------------------------------------------------------


def equalization_scales(pair: Pair, max_scale: float) -> np.ndarray:
    """``s_i = sqrt(r1_i / r2_i)`` (eq. 8), 1 where a range is 0, clamped to [1/max_scale, max_scale]."""
    r1 = output_ranges(pair.first).astype(np.float64)
    r2 = input_ranges(pair.second).astype(np.float64).reshape(-1, pair.repeat).max(axis=1)
    valid = (r1 > 0) & (r2 > 0)
    s = np.sqrt(np.where(valid, r1, 1.0) / np.where(valid, r2, 1.0))
    return np.clip(s, 1.0 / max_scale, max_scale)


def _scale_relays(graph: Graph, pair: Pair, factor: np.ndarray) -> None:
    """Scale the per-channel constants of Add relays with layer 1's output."""
    for node in pair.relays:
        if node.op_type == "Add":
            constant = own_input(graph, node, 1)
            constant.const = (constant.const * factor.reshape(constant.const.shape)).astype(constant.const.dtype)


@register_pass("equalize")
class CrossLayerEqualization(Pass):
    """Cross-layer equalization: rescale consecutive layers' channels so their weight ranges match (DFQ)."""

    preserves_semantics = True

    iterations: int = 100
    tolerance: float = 1e-3
    max_scale: float = 1e4

    def call(self, model: Model) -> PassResult:
        graph = model.graph
        pairs, skipped = find_cle_chains(graph)
        sweeps, changed = 0, False
        for sweeps in range(1, self.iterations + 1):
            moved = False
            for pair in pairs:
                s = equalization_scales(pair, self.max_scale)
                if np.max(np.abs(np.log(s))) < self.tolerance:
                    continue
                scale_output(graph, pair.first, 1.0 / s)
                _scale_relays(graph, pair, 1.0 / s)
                scale_input(graph, pair.second, np.repeat(s, pair.repeat))
                stats = batchnorm_stats(model, pair.first.outputs[0])
                if stats is not None:
                    model.plan.batchnorm_stats[pair.first.outputs[0].name] = (stats[0] / s, stats[1] / s)
                moved = True
            changed |= moved
            if not moved:
                break
        model.plan.reports["equalize"] = {"pairs": [(p.first.name, p.second.name) for p in pairs], "sweeps": sweeps,
                                  "skipped": skipped}
        return PassResult(model, changed)


@register_pass("absorb-high-bias")
class HighBiasAbsorption(Pass):
    """Move the part of a layer's bias that its ReLU never clips into the next layer's bias (DFQ)."""

    sigmas: float = 3.0

    def call(self, model: Model) -> PassResult:
        graph = model.graph
        absorbed = []
        for pair in find_cle_chains(graph)[0]:
            stats = batchnorm_stats(model, pair.first.outputs[0])
            activation = pair.activation
            if stats is None or activation not in (None, "Relu") or len(pair.first.inputs) < 3 \
                    or pair.first.inputs[2] is None or any(n.op_type == "Add" for n in pair.relays) \
                    or (pair.second.op_type == "MatMul"):
                continue
            mean, std = stats
            c = np.maximum(0.0, mean - self.sigmas * std) if activation == "Relu" else mean
            if not np.any(c > 0) and activation == "Relu":
                continue
            if activation is None and not np.any(c):
                continue
            add_to_bias(graph, pair.first, -c)
            add_to_bias(graph, pair.second, input_sums(pair.second, np.repeat(c, pair.repeat)))
            model.plan.batchnorm_stats[pair.first.outputs[0].name] = (mean - c, std)
            absorbed.append(pair.first.name)
        model.plan.reports["absorb_high_bias"] = absorbed
        return PassResult(model, bool(absorbed))


@register_pass("replace-relu6")
class ReplaceReLU6(Pass):
    """Replace Clip(0, max) right after a Conv/Gemm/MatMul by Relu, so equalization can cross it (DFQ §5)."""

    def call(self, model: Model) -> PassResult:
        graph = model.graph
        replaced = False
        for node in graph:
            if node.op_type != "Clip" or not default_domain(node) or not node.inputs or node.inputs[0] is None:
                continue
            producer = node.inputs[0].producer()
            bounds = list(node.inputs[1:3]) + [None] * (3 - len(node.inputs))
            if producer is None or not is_layer(producer) or bounds[0] is None or bounds[0].const is None \
                    or float(bounds[0].const) != 0.0 or (bounds[1] is not None and bounds[1].const is None):
                continue
            out = Value(graph.unique_name(node.outputs[0].name + "_relu"), node.outputs[0].dtype, node.outputs[0].shape)
            graph.insert_before(node, Node("Relu", [node.inputs[0]], [out], name=graph.unique_name(f"{node.name}_relu")))
            graph.substitute(node.outputs[0], out)
            graph.remove(node)
            for bound in bounds:
                if bound is not None:
                    graph.drop_initializer(bound)
            replaced = True
        return PassResult(model, replaced)
