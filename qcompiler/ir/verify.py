"""Every IR invariant, checked in one place.

``verify(model)`` collects all problems and raises one :class:`VerificationError` listing them.
The PassManager calls it after each pass, so a pass that breaks the IR is caught at once and named.
"""

from __future__ import annotations

import onnx

from ..errors import VerificationError
from ._core import CAPTURE_INDEX, Graph, Model, captured_names


_QDQ = frozenset({"QuantizeLinear", "DequantizeLinear"})


def _check_graph(graph: Graph, problems: list[str]) -> None:
    defined: set[int] = {id(v) for v in graph.inputs} | {id(v) for v in graph.initializers.values()}
    names: dict[str, object] = {}
    for value in list(graph.inputs) + list(graph.initializers.values()):
        if value.producer() is not None:
            problems.append(f"graph input/initializer {value.name!r} has a producer")
        other = names.setdefault(value.name, value)
        if other is not value:
            problems.append(f"two values are named {value.name!r}")
    for name, value in graph.initializers.items():
        if value.name != name:
            problems.append(f"initializer key {name!r} differs from its value's name {value.name!r}")
        if value.const is None:
            problems.append(f"initializer {name!r} has no data")
    for position, node in enumerate(graph):
        found = len(problems)
        if node.graph is not graph:
            problems.append("node.graph does not point to its graph")
        for index, value in enumerate(node._inputs):
            if value is None:
                continue
            if id(value) not in defined:
                problems.append(f"input {index} {value.name!r} is not defined before the node "
                                f"(not a graph input, initializer or earlier output)")
            if not value._has_use(node, index):
                problems.append(f"input {index} {value.name!r} does not list this use")
        for value in node._captures:
            if id(value) not in defined:
                problems.append(f"captured value {value.name!r} is not defined before the node")
        if node._captures or node.has_subgraphs():
            read = captured_names(node.attrs)
            if sorted({v.name for v in node._captures}) != read:
                problems.append(f"its subgraphs read {read} from outside, but its captures are "
                                f"{sorted(v.name for v in node._captures)}")
        for index, value in enumerate(node._outputs):
            if value is None:
                continue
            if value._producer is not node or value._output_index != index:
                problems.append(f"output {index} {value.name!r} does not name this node as producer")
            if not value._name:
                problems.append(f"output {index} has no name")
            other = names.setdefault(value._name, value)
            if other is not value:
                problems.append(f"output name {value.name!r} is used by another value")
            defined.add(id(value))
        _check_quant_node(node, problems)
        if len(problems) > found:  # named only when something is wrong: the graph has 10k-100k nodes
            where = f"node #{position} {node.op_type}({node.name!r})"
            problems[found:] = [f"{where}: {problem}" for problem in problems[found:]]
    in_graph = set(graph.nodes)
    for value in graph.values():
        for node, held in value._uses.items():  # the use dict itself, not Usage snapshots: 100k values
            if node not in in_graph:
                problems.append(f"value {value.name!r} is used by {node!r}, which is not in the graph")
                continue
            for index in held if type(held) is tuple else (held,):
                if index == CAPTURE_INDEX:
                    if value not in node._captures:
                        problems.append(f"value {value.name!r} lists a capture by {node!r} it does not have")
                elif index >= len(node._inputs) or node._inputs[index] is not value:
                    problems.append(f"value {value.name!r} lists a stale use by {node!r} input {index}")
        if value.quant is not None and value.quant.axis is not None and value.shape is not None:
            if not -len(value.shape) <= value.quant.axis < len(value.shape):
                problems.append(f"value {value.name!r}: quant axis {value.quant.axis} out of range")
    for value in graph.outputs:
        if id(value) not in defined:
            problems.append(f"graph output {value.name!r} is not produced by any node, input or initializer")


def _check_quant_node(node, problems: list[str]) -> None:
    """The problems of a QuantizeLinear / DequantizeLinear of the default domain (no prefix: the caller
    names the node)."""
    if node.op_type not in _QDQ or node.domain not in ("", "ai.onnx"):
        return
    if len(node.inputs) < 2 or node.inputs[1] is None:
        problems.append("missing scale input")
        return
    scale = node.inputs[1].const
    zero_point = node.inputs[2] if len(node.inputs) > 2 else None
    quantized = node.outputs[0] if node.op_type == "QuantizeLinear" else node.inputs[0]
    if zero_point is not None and zero_point.dtype is not None and quantized is not None \
            and quantized.dtype is not None and zero_point.dtype != quantized.dtype:
        problems.append("zero point dtype differs from the quantized value's dtype")
    if scale is None or scale.ndim == 0:
        return
    axis = node.attrs.get("axis", 1)
    shape = node.inputs[0].shape
    if shape is None:
        return
    if not -len(shape) <= axis < len(shape):
        problems.append(f"axis {axis} out of range for rank {len(shape)}")
    elif "block_size" not in node.attrs and isinstance(shape[axis], int) and scale.shape[0] != shape[axis]:
        problems.append(f"{scale.shape[0]} scales for axis {axis} of size {shape[axis]}")


def verify(model: Model, *, strict: bool = False) -> None:
    """Raise VerificationError listing every broken invariant of ``model``.

    With ``strict``, also serialize the model and run ``onnx.checker.check_model(full_check=True)``.
    """
    problems: list[str] = []
    _check_graph(model.graph, problems)
    if strict and not problems:
        from .serde import to_proto

        try:
            onnx.checker.check_model(to_proto(model), full_check=True)
        except Exception as exc:
            problems.append(f"onnx.checker: {exc}")
    if problems:
        raise VerificationError(problems)
