"""Kernels for nodes without one of ours: ``onnx.reference``, prepared once per node.

``onnx.reference`` implements every standard operator (and model-local functions, and subgraphs of
If/Loop/Scan) in numpy, so every valid model runs. The op object is built when the executor plans the
graph; a call then costs a few microseconds on top of numpy, not a ``ReferenceEvaluator.run``.
An op without subgraphs, context or linked attributes is called through its ``_run`` with its
attributes gathered once (what ``OpRun.run`` does on every call, less the per-call checks).
Values a subgraph reads from the enclosing scope (the node's captures) are passed as its context.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from onnx.reference import ReferenceEvaluator

from .. import ir
from ..ir.serde import _node_to_proto


def reference_kernel(node: ir.Node, model: ir.Model) -> Callable[..., tuple]:
    """A function ``(*inputs) -> tuple of outputs`` computing ``node`` with ``onnx.reference``.

    Captured outer-scope values are expected after the inputs, in ``node.captures`` order.
    """
    opsets = {domain or "": version for domain, version in model.opset_imports.items()}
    evaluator = ReferenceEvaluator(_node_to_proto(node), opsets=opsets, functions=model.functions or None)
    op = evaluator.rt_nodes_[0]
    count = len(node.inputs)
    captured = [value.name for value in node.captures]
    if not (captured or op.has_subgraph or op.has_linked_attribute or op.need_context()):
        attributes = {name: getattr(op, name) for name in op.attributes_names_}

        def run_direct(*args):
            return tuple(None if out is None else np.asarray(out) for out in op._run(*args, **attributes))

        return run_direct

    def run(*args):
        context = dict(zip(captured, args[count:], strict=True)) if captured else None
        outputs = op.run(*args[:count], context=context) if context else op.run(*args[:count])
        return tuple(None if out is None else np.asarray(out) for out in outputs)

    return run
