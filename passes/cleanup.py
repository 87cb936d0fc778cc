"""Clean-up passes: Identity and inference-mode Dropout removal, Sum of two inputs to Add, dead nodes.

None of them looks inside subgraphs (If/Loop/Scan bodies are kept as they are).
"""

from __future__ import annotations

from qcompiler.ir import Model, Node
from qcompiler.ir.rewrite import bypass_all
from qcompiler.pass_manager import Pass, PassResult, register_pass


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
