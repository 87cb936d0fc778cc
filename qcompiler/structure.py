"""Structure recognition: which regions of a model are transformer blocks, which are convolutional.

A pure analysis of the graph (it changes nothing); ``recognize-structure`` stores its result in the
plan and the region-aware passes read it, so that one model may get two treatments: the transformer
one (SmoothQuant, MSE weight clipping, float linear outputs, searched activation ranges: what the
``int8-transformer`` pipeline does to a whole model) where transformer structure is, and the
convolutional one (the ``int8`` pipeline's) elsewhere.

The signatures looked for (in the forms exporters write them):

* attention: a ``Softmax`` whose input comes from a MatMul of two activations (the scores ``Q Kᵀ``,
  maybe scaled, masked, reshaped) and whose output is read by a MatMul with another activation (``· V``);
* LayerNormalization, or its decomposed form ``(x - ReduceMean(x)) / Sqrt(ReduceMean((x - mean)²) + ε)``
  (``Pow(d, 2)`` or ``Mul(d, d)``; the division also as ``Mul`` by a ``Reciprocal``);
* GELU: a ``Gelu`` node, or the ``Erf`` of its exact form ``0.5 x (1 + erf(x / √2))``;
* residual Adds: an Add of two activations that a LayerNorm reads (counted for the reason only).

Regions are the connected parts of the graph once the convolutions are cut out (a node is linked to
the producers of its inputs, convolutions to nothing): a part that holds attention or a LayerNorm is a
transformer region; GELUs and residual Adds alone do not make one (convolutional networks have them
too). Everything else is one convolutional region. A ViT's patch-embedding convolution, the
convolutional backbone of an OCR recognizer before its attention blocks, stay convolutional.
"""

from __future__ import annotations

from collections import Counter

from .ir import Graph, Node, Value
from .ir.plan import Region

TRANSFORMER = "transformer"
CONVOLUTIONAL = "convolutional"

CUT_OPS = frozenset({"Conv", "ConvTranspose", "ConvInteger", "QLinearConv"})
"""Ops that separate regions: what lies between two convolutions belongs to neither's block."""

_BETWEEN_SCORES = frozenset({"Add", "Sub", "Mul", "Div", "Where", "Cast", "Reshape", "Transpose", "Squeeze",
                             "Unsqueeze", "Identity", "Dropout", "Expand", "Flatten"})
"""Ops exporters put between the attention MatMuls and the Softmax (scaling, masking, head reshapes)."""


def _default(node: Node | None) -> bool:
    return node is not None and node.domain in ("", "ai.onnx")


def _activation(value: Value | None) -> bool:
    return value is not None and value.const is None


def _producer(value: Value | None) -> Node | None:
    return value.producer() if value is not None else None


def _activation_matmul(node: Node | None) -> bool:
    """A MatMul of two activations (attention scores or their product with V)."""
    return _default(node) and node.op_type == "MatMul" and len(node.inputs) == 2 and all(
        _activation(v) for v in node.inputs)


def _reaches_up(value: Value | None, depth: int = 6) -> bool:
    """Whether an activation MatMul produces ``value`` through at most ``depth`` score-side ops."""
    node = _producer(value)
    if _activation_matmul(node):
        return True
    if depth == 0 or not _default(node) or node.op_type not in _BETWEEN_SCORES:
        return False
    return any(_reaches_up(v, depth - 1) for v in node.inputs if _activation(v))


def _reaches_down(value: Value, depth: int = 6) -> bool:
    """Whether an activation MatMul reads ``value`` through at most ``depth`` pass-through ops."""
    for reader in value.consumers():
        if _activation_matmul(reader):
            return True
        if depth and _default(reader) and reader.op_type in _BETWEEN_SCORES and reader.outputs:
            if any(_reaches_down(v, depth - 1) for v in reader.outputs if v is not None):
                return True
    return False


def attention_softmaxes(graph: Graph) -> list[Node]:
    """The Softmax nodes between two activation MatMuls (scores, then the product with V)."""
    return [n for n in graph if _default(n) and n.op_type == "Softmax" and _reaches_up(n.inputs[0])
            and _reaches_down(n.outputs[0])]


def _is(node: Node | None, *ops: str) -> bool:
    return _default(node) and node.op_type in ops


def layer_norms(graph: Graph) -> list[tuple[Node, ...]]:
    """Every LayerNormalization, and every decomposed one as the tuple of its nodes (the mean's
    ReduceMean and Sub, the square, the variance's ReduceMean, its Add, Sqrt and the division)."""
    found: list[tuple[Node, ...]] = []
    for node in graph:
        if _is(node, "LayerNormalization"):
            found.append((node,))
            continue
        if not _is(node, "Sub") or len(node.inputs) != 2:
            continue
        mean = _producer(node.inputs[1])
        if not _is(mean, "ReduceMean") or mean.inputs[0] is not node.inputs[0]:
            continue
        centred = node.outputs[0]
        for square in centred.consumers():
            squared = _is(square, "Pow") or (_is(square, "Mul") and square.inputs[0] is square.inputs[1])
            if not squared:
                continue
            for variance in square.outputs[0].consumers():
                match = _normalization_tail(variance, centred)
                if _is(variance, "ReduceMean") and match:
                    found.append((mean, node, square, variance, *match))
    return found


def _normalization_tail(variance: Node, centred: Value) -> tuple[Node, ...] | None:
    """``Add(ε) -> Sqrt -> Div(centred, ·)`` (or ``-> Reciprocal -> Mul(centred, ·)``) after the variance."""
    for add in variance.outputs[0].consumers():
        if not _is(add, "Add"):
            continue
        for sqrt in add.outputs[0].consumers():
            if not _is(sqrt, "Sqrt"):
                continue
            for reader in sqrt.outputs[0].consumers():
                if _is(reader, "Div") and reader.inputs[0] is centred:
                    return add, sqrt, reader
                if _is(reader, "Reciprocal"):
                    for mul in reader.outputs[0].consumers():
                        if _is(mul, "Mul") and centred in mul.inputs:
                            return add, sqrt, reader, mul
    return None


def gelus(graph: Graph) -> list[Node]:
    """Gelu nodes and the Erf of exported exact GELUs (``Div(x, √2)`` or ``Mul(x, 1/√2)`` before it)."""
    return [n for n in graph if _is(n, "Gelu") or (_is(n, "Erf") and _is(_producer(n.inputs[0]), "Div", "Mul"))]


def _components(graph: Graph) -> list[list[Node]]:
    """Connected parts of the graph with the convolutions cut out (in graph order)."""
    parent: dict[Node, Node] = {}

    def root(node: Node) -> Node:
        while parent[node] is not node:
            parent[node] = parent[parent[node]]
            node = parent[node]
        return node

    nodes = [n for n in graph if not (_default(n) and n.op_type in CUT_OPS)]
    for node in nodes:
        parent[node] = node
    for node in nodes:
        for value in node.inputs:
            producer = _producer(value)
            if producer in parent:
                parent[root(node)] = root(producer)
    parts: dict[Node, list[Node]] = {}
    for node in nodes:
        parts.setdefault(root(node), []).append(node)
    return list(parts.values())


def _plural(count: int, word: str) -> str:
    return f"{count} {word}{'' if count == 1 else 's'}"


def recognize(graph: Graph) -> list[Region]:
    """The transformer regions of ``graph`` (see the module docstring), then the convolutional rest
    (absent when nothing is left); each with the reason for its treatment."""
    attention = set(attention_softmaxes(graph))
    norms = layer_norms(graph)
    norm_of = {node: pattern for pattern in norms for node in pattern}
    norm_inputs = {pattern[0].inputs[0] if len(pattern) == 1 else pattern[1].inputs[0] for pattern in norms}
    gelu = set(gelus(graph))
    regions: list[Region] = []
    claimed: set[Node] = set()
    for part in _components(graph):
        members = set(part)
        found = Counter()
        found["attention"] = sum(n in attention for n in part)
        patterns = {norm_of[n] for n in part if n in norm_of}
        found["layer_norm"] = len(patterns)
        if not found["attention"] and not found["layer_norm"]:
            continue
        found["decomposed"] = sum(len(p) > 1 for p in patterns)
        found["gelu"] = sum(n in gelu for n in part)
        found["residual"] = sum(_is(n, "Add") and n.outputs[0] in norm_inputs
                                and sum(_activation(v) for v in n.inputs) == 2 for n in part)
        layers = sum(_is(n, "MatMul", "Gemm") for n in part)
        reason = ", ".join(filter(None, [
            _plural(found["attention"], "attention block") + " (MatMul-Softmax-MatMul)" if found["attention"] else "",
            _plural(found["layer_norm"], "LayerNorm") + (f" ({found['decomposed']} decomposed)" if found["decomposed"]
                                                        else "") if found["layer_norm"] else "",
            _plural(found["gelu"], "GELU") if found["gelu"] else "",
            _plural(found["residual"], "residual Add") if found["residual"] else ""]))
        regions.append(Region(TRANSFORMER, f"{reason}; {_plural(layers, 'MatMul/Gemm')}", dict.fromkeys(part)))
        claimed |= members
    rest = [n for n in graph if n not in claimed]
    if rest:
        convs = sum(_is(n, *CUT_OPS) for n in rest)
        layers = sum(_is(n, "MatMul", "Gemm") for n in rest)
        why = "no attention or LayerNorm" if not regions else "outside the transformer blocks"
        regions.append(Region(CONVOLUTIONAL, f"{why}; {_plural(convs, 'convolution')}, "
                                             f"{_plural(layers, 'MatMul/Gemm')}", dict.fromkeys(rest)))
    return regions
