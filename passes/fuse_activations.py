"""Recognize decomposed activations and write them as the ONNX operator they spell out.

Exporters often decompose hardswish (Howard et al. 2019, "Searching for MobileNetV3", eq. 2)::

    y = x * Clip(x + 3, 0, 6) / 6          (Paddle: Add -> Clip -> Mul -> Div, 4 passes over x)

which equals ``x * HardSigmoid(x; alpha=1/6, beta=0.5)`` because ``Clip(x + 3, 0, 6) / 6 =
max(0, min(1, x/6 + 0.5))``. Two elementwise ops instead of four halve the memory traffic of every
hardswish (PP-OCRv4's detector has 24), in float and between quantized convolutions alike. The
rewrite applies only when every intermediate value has this chain as its only reader; it changes
results by float rounding only (relative 1e-7).
"""

from __future__ import annotations

from qcompiler.ir import Graph, Model, Node, Value
from qcompiler.pass_manager import Pass, PassResult, register_pass


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
    if div is None or not ((div.op_type == "Div" and div.inputs[0] is mul.outputs[0] and _const_equal(div.inputs[1], 6.0))):
        return None
    return x, [add, clip, mul, div]


@register_pass("fuse-hardswish")
class FuseHardSwish(Pass):
    """Rewrite x * Clip(x + 3, 0, 6) / 6 as x * HardSigmoid(x) (two ops instead of four)."""

    preserves_semantics = True

    def call(self, model: Model) -> PassResult:
        graph = model.graph
        count = 0
        for node in graph:
            if node.graph is not graph:
                continue  # removed by an earlier rewrite in this loop
            found = match_hardswish(graph, node)
            if found is None:
                continue
            x, chain = found
            div = chain[-1]
            gate = Node("HardSigmoid", [x], 1, attrs={"alpha": 1.0 / 6.0, "beta": 0.5},
                        name=graph.unique_name(f"{chain[0].name or 'hardswish'}_hardsigmoid"))
            gate.outputs[0].name = graph.unique_name(f"{x.name}_hardsigmoid")
            gate.outputs[0].dtype, gate.outputs[0].shape = x.dtype, x.shape
            product = Node("Mul", [x, gate.outputs[0]], 1, name=div.name or graph.unique_name("hardswish_mul"))
            graph.insert_before(chain[0], gate, product)
            graph.substitute(div.outputs[0], product.outputs[0])
            graph.remove(list(reversed(chain)))
            count += 1
        return PassResult(model, count > 0)
