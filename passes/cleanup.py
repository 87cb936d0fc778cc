"""Clean-up passes: Identity and inference-mode Dropout removal, Sum of two inputs to Add, dead nodes.

None of them looks inside subgraphs (If/Loop/Scan bodies are kept as they are).
"""

from __future__ import annotations

from collections.abc import Iterable

from qcompiler.ir import Graph, Model, Node, Value
from qcompiler.pass_manager import Pass, PassResult, register_pass


def bypass(graph: Graph, node: Node) -> bool:
    """Make the readers of ``node.outputs[0]`` read ``node.inputs[0]`` and remove the node.

    When the output is a graph output, the input takes over its name (so the model's interface is
    unchanged); that is impossible when the input is itself a graph input, initializer or output, and
    then the node is kept. A node whose other outputs are read or returned is kept too. Returns
    whether the node was removed. Each call looks at every graph input and output: to remove many
    nodes, use :func:`bypass_all`.
    """
    return bool(bypass_all(graph, [node]))


def bypass_all(graph: Graph, nodes: Iterable[Node]) -> list[Node]:
    """:func:`bypass` for each of ``nodes``, in time linear in the size of the graph; the nodes removed.

    ``nodes`` go in graph order and each sees the graph the ones before it left, as with one
    :func:`bypass` call after another; but the graph outputs are looked up in a set, and replaced and
    the nodes removed in one go at the end.
    """
    returned = set(graph.outputs)  # the graph outputs as they are after the replacements so far
    inputs = set(graph.inputs)
    replacements: dict[Value, Value] = {}
    removed = []
    for node in nodes:
        source, result = node.inputs[0], node.outputs[0]
        if any(out is not None and out is not result and (out.uses() or out in returned)
               for out in node.outputs):
            continue  # another output (e.g. a Dropout mask) is read or returned: the node stays
        if result in returned:
            if source in inputs or source in returned or source.const is not None:
                continue
            replacements[result] = source
            returned.remove(result)
            returned.add(source)
            if source.shape is None:
                source.shape = result.shape
            source.dtype = source.dtype or result.dtype
        result.replace_all_uses_with(source)
        removed.append(node)
    graph.replace_outputs(replacements)
    graph.remove(removed)
    return removed


@register_pass("remove-identity")
class RemoveIdentity(Pass):
    """Remove Identity nodes, rewiring their readers to the Identity's input."""

    preserves_semantics = True

    def call(self, model: Model) -> PassResult:
        graph = model.graph
        removed = bypass_all(graph, [n for n in graph if n.op_type == "Identity" and n.domain in ("", "ai.onnx")])
        return PassResult(model, bool(removed))


def _is_inference_dropout(node: Node) -> bool:
    if node.op_type != "Dropout" or node.domain not in ("", "ai.onnx"):
        return False
    if len(node.inputs) > 2 and node.inputs[2] is not None:
        mode = node.inputs[2].const
        if mode is None or bool(mode):
            return False  # training mode, or decided at run time
    return len(node.outputs) < 2 or node.outputs[1] is None or not node.outputs[1].uses()


@register_pass("remove-dropout")
class RemoveDropout(Pass):
    """Remove Dropout in inference mode (an identity there) when its mask output is unused."""

    preserves_semantics = True

    def call(self, model: Model) -> PassResult:
        graph = model.graph
        removed = bypass_all(graph, [n for n in graph if _is_inference_dropout(n)])
        return PassResult(model, bool(removed))


@register_pass("eliminate-dead-nodes")
class EliminateDeadNodes(Pass):
    """Remove nodes none of whose outputs is read or returned, and unused initializers."""

    preserves_semantics = True

    def call(self, model: Model) -> PassResult:
        graph = model.graph
        outputs = set(map(id, graph.outputs))
        removed = 0
        for node in reversed(graph.nodes):
            live = any(v is not None and (v.uses() or id(v) in outputs) for v in node.outputs)
            if not live:
                graph.remove(node)
                removed += 1
        removed += graph.remove_unused_initializers()
        return PassResult(model, removed > 0)


@register_pass("sum-to-add")
class SumToAdd(Pass):
    """Rewrite Sum of two inputs as Add (old exports use Sum for residuals; Add has int8 kernels)."""

    preserves_semantics = True

    def call(self, model: Model) -> PassResult:
        graph = model.graph
        changed = False
        for node in graph:
            if node.op_type == "Sum" and node.domain in ("", "ai.onnx") and len(node.inputs) == 2:
                add = Node("Add", list(node.inputs), 1, name=node.name, doc_string=node.doc_string)
                graph.insert_before(node, add)
                graph.substitute(node.outputs[0], add.outputs[0])
                graph.remove(node)
                changed = True
        return PassResult(model, changed)
