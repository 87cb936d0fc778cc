"""Recognize decomposed activations and write them as the ONNX operator they spell out.

Exporters often decompose hardswish (Howard et al. 2019, "Searching for MobileNetV3", eq. 2)::

    y = x * Clip(x + 3, 0, 6) / 6          (Paddle: Add -> Clip -> Mul -> Div, 4 passes over x)

which equals ``x * HardSigmoid(x; alpha=1/6, beta=0.5)`` because ``Clip(x + 3, 0, 6) / 6 =
max(0, min(1, x/6 + 0.5))``, and is ONNX's ``HardSwish`` from opset 14. Fewer elementwise ops mean less
memory traffic for every hardswish (PP-OCRv4's detector has 24), in float and between quantized
convolutions alike. The rewrite applies only when every intermediate value has this chain as its only
reader; it changes results by float rounding only (relative 1e-7).

Below opset 14 the result is ``x * HardSigmoid(x)``. Between quantized layers that form costs one more
pass: onnxruntime gives every reader of a DequantizeLinear its own copy before fusing
(``ensure_unique_dq_for_node_unit.cc``), so the two readers of ``x`` dequantize it twice, where
``HardSwish`` reads it once (onnxruntime then computes it as the same HardSigmoid and Mul). With
``upgrade`` a model below opset 14 that has a hardswish is raised to 14 first (``upgrade-opset``), and
``x * HardSigmoid(x; 1/6, 0.5)`` written earlier becomes ``HardSwish`` too: the static int8 pipelines
do this after ``canonicalize``.
"""

from __future__ import annotations

import numpy as np

from qcompiler.ir import Graph, Model, Node, Value
from qcompiler.pass_manager import Pass, PassResult, register_pass

HARD_SIGMOID = {"alpha": 1.0 / 6.0, "beta": 0.5}
"""The HardSigmoid of hardswish: ``max(0, min(1, x/6 + 0.5))``."""

HARD_SWISH_OPSET = 14
"""The first opset with ``HardSwish``."""


def _const_equal(value: Value | None, expected: float) -> bool:
    return value is not None and value.const is not None and value.const.size == 1 \
        and float(value.const.reshape(())) == expected


def _only_reader(value: Value, graph: Graph) -> Node | None:
    users = value.uses()
    if len(users) != 1 or any(v is value for v in graph.outputs):
        return None
    return users[0].node


def _other_input(node: Node, value: Value) -> Value | None:
    inputs = list(node.inputs)
    if len(inputs) != 2 or value not in inputs:
        return None
    return inputs[1] if inputs[0] is value else inputs[0]


def match_hardswish(graph: Graph, add: Node) -> tuple[Value, list[Node]] | None:
    """``(x, [add, clip, mul, div])`` when ``add`` starts a decomposed hardswish, else None."""
    if add.op_type != "Add" or len(add.inputs) != 2:
        return None
    x = next((v for v, other in ((add.inputs[0], add.inputs[1]), (add.inputs[1], add.inputs[0]))
              if _const_equal(other, 3.0) and v is not None and v.const is None), None)
    if x is None:
        return None
    clip = _only_reader(add.outputs[0], graph)
    if clip is None or clip.op_type != "Clip" or clip.inputs[0] is not add.outputs[0] or len(clip.inputs) < 3 \
            or not _const_equal(clip.inputs[1], 0.0) or not _const_equal(clip.inputs[2], 6.0):
        return None
    mul = _only_reader(clip.outputs[0], graph)
    if mul is None or mul.op_type != "Mul" or _other_input(mul, clip.outputs[0]) is not x:
        return None
    div = _only_reader(mul.outputs[0], graph)
    if div is None or div.op_type != "Div" or div.inputs[0] is not mul.outputs[0] \
            or not _const_equal(div.inputs[1], 6.0):
        return None
    return x, [add, clip, mul, div]


def match_gated(graph: Graph, mul: Node) -> tuple[Value, list[Node]] | None:
    """``(x, [gate, mul])`` when ``mul`` is ``x * HardSigmoid(x; alpha=1/6, beta=0.5)`` and the gate has no
    other reader, else None."""
    if mul.op_type != "Mul" or len(mul.inputs) != 2:
        return None
    for gate_value, x in ((mul.inputs[0], mul.inputs[1]), (mul.inputs[1], mul.inputs[0])):
        gate = gate_value.producer() if gate_value is not None else None
        if gate is not None and gate.op_type == "HardSigmoid" and gate.domain in ("", "ai.onnx") \
                and x is not None and gate.inputs[0] is x and _only_reader(gate_value, graph) is mul \
                and all(np.float32(gate.attrs.get(key, np.nan)) == np.float32(value)
                        for key, value in HARD_SIGMOID.items()):
            return x, [gate, mul]
    return None


def write_hardswish(graph: Graph, x: Value, chain: list[Node], opset: int) -> None:
    """Replace ``chain`` (in graph order, the last node's output the hardswish of ``x``) by ``HardSwish(x)``
    at ``opset`` 14 on, else by ``x * HardSigmoid(x)``; the last node written takes the last one's name."""
    first, last = chain[0], chain[-1]
    name = last.name or graph.unique_name("hardswish")
    if opset >= HARD_SWISH_OPSET:
        written = [Node("HardSwish", [x], 1, name=name)]
    else:
        gate = Node("HardSigmoid", [x], 1, attrs=dict(HARD_SIGMOID),
                    name=graph.unique_name(f"{first.name or 'hardswish'}_hardsigmoid"))
        gate.outputs[0].name = graph.unique_name(f"{x.name}_hardsigmoid")
        gate.outputs[0].dtype, gate.outputs[0].shape = x.dtype, x.shape
        written = [gate, Node("Mul", [x, gate.outputs[0]], 1, name=name)]
    graph.insert_before(first, *written)
    graph.substitute(last.outputs[0], written[-1].outputs[0])
    graph.remove(list(reversed(chain)))


@register_pass("fuse-hardswish")
class FuseHardSwish(Pass):
    """Rewrite x * Clip(x + 3, 0, 6) / 6 as HardSwish(x) (opset 14 on) or x * HardSigmoid(x); with
    ``upgrade``, raise a model with a hardswish to opset 14 and write HardSwish (see the module docstring)."""

    upgrade: bool = False
    preserves_semantics = True

    def call(self, model: Model) -> PassResult:
        upgraded = False
        if self.upgrade and model.opset < HARD_SWISH_OPSET and any(
                match_hardswish(model.graph, node) or match_gated(model.graph, node) for node in model.graph):
            from .opset import UpgradeOpset

            upgraded = UpgradeOpset(target=HARD_SWISH_OPSET).call(model).modified
        graph, count = model.graph, 0
        for node in list(graph):
            if node.graph is not graph:
                continue  # removed by an earlier rewrite in this loop
            match = match_hardswish(graph, node)
            if match is None and model.opset >= HARD_SWISH_OPSET:
                match = match_gated(graph, node)
            if match is not None:
                write_hardswish(graph, *match, model.opset)
                count += 1
        return PassResult(model, upgraded or count > 0)
