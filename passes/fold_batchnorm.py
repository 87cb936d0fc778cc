"""Fold per-channel affine maps (BatchNormalization, Mul/Add/Sub/Div by a constant) into the Conv,
ConvTranspose, Gemm or BatchNormalization that feeds them.

BatchNormalization computes ``y = gamma * (x - mean) / sqrt(var + eps) + beta``. With
``s = gamma / sqrt(var + eps)`` per output channel, a preceding linear layer ``x = W * a + b``
absorbs it exactly (Jacob et al. 2018, section 3.2; Krishnamoorthi 2018, section 2.4):

    W' = s · W  (scaled along the output-channel axis)
    b' = s · (b - mean) + beta

Output-channel axis per producer: Conv weight ``[M, C/g, k...]`` axis 0; ConvTranspose weight
``[C, M/g, k...]`` axis 1 within each group; Gemm ``Y = alpha·A'B' + beta·C`` the columns of B'
(rows of B when ``transB=1``), with the new bias ``s·(beta·C - mean) + beta_bn`` and ``beta=1``.

Any per-channel affine map ``y = s·x + t`` folds the same way (``b' = s·b + t``). Exporters that
decompose BatchNormalization leave it as ``Mul`` and ``Add`` by constant per-channel tensors (the
onnx model zoo's Inception v2: 69 Conv -> Mul -> Add -> Relu chains); unfolded, they are float
islands between int8 convolutions that cost a QuantizeLinear/DequantizeLinear round trip each and
kept the quantized Inception v2 at FP32 speed. The pass also folds ``Mul``/``Div`` (scale) and
``Add``/``Sub`` (shift) whose other operand is a constant broadcasting along the output-channel axis
only (axis 1 of a Conv, ConvTranspose or Gemm output). It repeats until nothing folds, so chains fold
whole: Mul -> Add, and Paddle's Conv -> Add(bias) -> BatchNormalization.

A BatchNormalization that stays (pre-activation networks: DenseNet's BN after a Concat) is itself a
per-channel affine map, so the affine after it (Caffe's Scale layer, exported as Mul and Add by
per-channel constants) folds into its parameters: ``gamma' = s · gamma``, ``beta' = s · beta + t``. Its
channel axis is checked against the BN output's rank, so this needs the shapes (inferred, or given in
the model); without them the affine stays.

A scalar constant folds only with ``scalars=True``. Folding moves a float32 rounding from the
activation into the weights; PP-OCRv4's recognizer has 28 Conv -> Mul(scalar) -> Add(scalar)
"learnable affine blocks" whose folding changes its output by up to 1.2e-4 relative (7.5e-5 with
per-channel folds only; onnxruntime's own optimizer moves it by 5e-5) for 5 % float speed (6.95 vs
7.27 ms, 2 threads) and no int8 speed. The default keeps canonicalization within 1e-4.

The fold applies only when the linear layer's output feeds the affine node alone, every
parameter is constant and the BN has no training outputs. A BN after a ReLU (CREPE) or after
anything else stays. New weight initializers are created, so a weight shared with another node is
never changed behind its back. Arithmetic is done in float64 and cast back to the weight's type.
"""

from __future__ import annotations

import numpy as np

from qcompiler.ir import Graph, Model, Node, Value
from qcompiler.pass_manager import Pass, PassResult, register_pass

FOLDABLE_PRODUCERS = ("Conv", "ConvTranspose", "Gemm", "BatchNormalization")


def find_foldable_batchnorms(graph: Graph) -> list[tuple[Node, Node]]:
    """(producer, batchnorm) pairs where the BN can be folded into the producer."""
    outputs = set(map(id, graph.outputs))
    pairs = []
    for bn in graph:
        if bn.op_type != "BatchNormalization" or bn.domain not in ("", "ai.onnx") or not _constant_batchnorm(bn):
            continue
        producer = _foldable_producer(bn.inputs[0], outputs)
        if producer is None:
            continue
        if producer.op_type == "Gemm" and not _gemm_foldable(producer, bn):
            continue
        pairs.append((producer, bn))
    return pairs


def _constant_batchnorm(bn: Node) -> bool:
    """Whether ``bn`` is an inference BatchNormalization with constant parameters: a per-channel affine map."""
    return (not bn.attrs.get("training_mode", 0) and all(v is None for v in bn.outputs[1:])
            and all(v is not None and v.const is not None for v in bn.inputs[1:5]))


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


def _foldable_producer(x: Value, graph_outputs: set[int]) -> Node | None:
    """The Conv/ConvTranspose/Gemm/BatchNormalization producing ``x`` when an affine map of ``x`` can fold
    into it (a BatchNormalization only when ``x``'s rank is known)."""
    producer = x.producer()
    if producer is None or producer.op_type not in FOLDABLE_PRODUCERS or producer.domain not in ("", "ai.onnx"):
        return None
    if len(x.uses()) != 1 or id(x) in graph_outputs:
        return None
    if producer.op_type == "BatchNormalization":
        return producer if _constant_batchnorm(producer) and x.shape is not None else None
    weight = producer.inputs[1]
    bias = producer.inputs[2] if len(producer.inputs) > 2 else None
    if weight is None or weight.const is None or (bias is not None and bias.const is None):
        return None
    return producer


AFFINE_OPS = ("Mul", "Div", "Add", "Sub")


def _channel_vector(constant: np.ndarray, rank: int, channels: int, scalars: bool) -> np.ndarray | None:
    """``constant`` as one value per channel, when it broadcasts along axis 1 of a rank-``rank``
    tensor only (a single value only when ``scalars``); else None."""
    if constant.ndim > rank or not np.issubdtype(constant.dtype, np.floating):
        return None
    if constant.size == 1 and channels > 1 and not scalars:
        return None
    shape = (1,) * (rank - constant.ndim) + constant.shape
    if any(size != 1 for axis, size in enumerate(shape) if axis != 1) or shape[1] not in (1, channels):
        return None
    return np.broadcast_to(constant.reshape(-1).astype(np.float64), (channels,))


def _output_channels(producer: Node) -> int:
    weight = producer.inputs[1].const  # a BatchNormalization's gamma
    if producer.op_type in ("Conv", "BatchNormalization"):
        return weight.shape[0]
    if producer.op_type == "ConvTranspose":
        return weight.shape[1] * producer.attrs.get("group", 1)
    return weight.shape[0] if producer.attrs.get("transB", 0) else weight.shape[1]


def find_foldable_affines(graph: Graph, scalars: bool = False) -> list[tuple[Node, Node, np.ndarray, np.ndarray]]:
    """(producer, node, scale, shift) for BatchNormalization and for Mul/Div/Add/Sub nodes by a
    per-channel constant (or a scalar, when ``scalars``) that fold into a Conv, ConvTranspose, Gemm or
    BatchNormalization; at most one per producer, and no node both folds and is folded into (a chain folds
    over several rounds)."""
    found = [(producer, bn, *_bn_scale_shift(bn)) for producer, bn in find_foldable_batchnorms(graph)]
    outputs = set(map(id, graph.outputs))
    producers = {id(producer) for producer, *_ in found}
    for node in graph:
        if node.op_type not in AFFINE_OPS or node.domain not in ("", "ai.onnx") or len(node.inputs) != 2:
            continue
        for position in (0, 1) if node.op_type in ("Mul", "Add") else (0,):
            x, other = node.inputs[position], node.inputs[1 - position]
            if x is None or other is None or other.const is None:
                continue
            producer = _foldable_producer(x, outputs)
            if producer is None or id(producer) in producers:
                continue
            rank = {"Gemm": 2, "BatchNormalization": len(x.shape or ())}.get(producer.op_type,
                                                                               producer.inputs[1].const.ndim)
            vector = _channel_vector(other.const, rank, _output_channels(producer), scalars)
            if vector is None or (node.op_type == "Div" and not np.all(vector)):
                continue
            ones, zeros = np.ones_like(vector), np.zeros_like(vector)
            scale, shift = {"Mul": (vector, zeros), "Div": (1.0 / vector, zeros),
                            "Add": (ones, vector), "Sub": (ones, -vector)}[node.op_type]
            found.append((producer, node, scale, shift))
            producers.add(id(producer))
            break
    taken: set[int] = set()
    apart = []
    for fold in found:
        if not {id(fold[0]), id(fold[1])} & taken:
            apart.append(fold)
            taken |= {id(fold[0]), id(fold[1])}
    return apart


def fold_affine(graph: Graph, producer: Node, node: Node, scale: np.ndarray, shift: np.ndarray) -> None:
    """Replace ``node`` (computing ``scale·x + shift`` per channel of the producer's output) by new
    producer weights and bias (a BatchNormalization's gamma and beta)."""
    weight_value = producer.inputs[1]
    dtype = weight_value.const.dtype
    if producer.op_type == "BatchNormalization":
        weight = weight_value.const.astype(np.float64) * scale
        bias = producer.inputs[2].const.astype(np.float64) * scale + shift
    else:
        weight = _scaled_weight(producer, scale)
        bias = _current_bias(producer, scale.shape[0]) * scale + shift
    orphans = [v for v in list(producer.inputs[1:3]) + list(node.inputs) if v is not None]
    new_weight = graph.add_initializer(Value(graph.unique_name(weight_value.name + "_bnfold"),
                                             const=weight.astype(dtype)))
    new_bias = graph.add_initializer(Value(graph.unique_name((node.name or node.op_type.lower()) + "_bias"),
                                           const=bias.astype(dtype)))
    producer.set_input(1, new_weight)
    if len(producer.inputs) > 2:
        producer.set_input(2, new_bias)
    else:
        producer.append_input(new_bias)
    if producer.op_type == "Gemm":
        producer.attrs["beta"] = 1.0
    result, folded = producer.outputs[0], node.outputs[0]
    if any(v is folded for v in graph.outputs):
        graph.replace_output(folded, result)
    result.shape = result.shape or folded.shape
    folded.replace_all_uses_with(result)
    graph.remove(node)
    for value in orphans:
        graph.drop_initializer(value)


@register_pass("fold-batchnorm")
class FoldBatchNorm(Pass):
    """Fold BatchNormalization and per-channel Mul/Div/Add/Sub by constants into a preceding Conv,
    ConvTranspose, Gemm or BatchNormalization."""

    scalars: bool = False
    preserves_semantics = True

    def call(self, model: Model) -> PassResult:
        modified = False
        while folds := find_foldable_affines(model.graph, self.scalars):
            for producer, node, scale, shift in folds:
                fold_affine(model.graph, producer, node, scale, shift)
            modified = True
        return PassResult(model, modified)
