"""Kernels for nodes without one of ours: ``onnx.reference``, prepared once per node.

``onnx.reference`` implements every standard operator (and model-local functions, and subgraphs of
If/Loop/Scan) in numpy, so every valid model runs. The op object is built when the executor plans the
graph; a call then costs a few microseconds on top of numpy, not a ``ReferenceEvaluator.run``.
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

    def run(*args):
        context = dict(zip(captured, args[count:], strict=True)) if captured else None
        outputs = op.run(*args[:count], context=context) if context else op.run(*args[:count])
        return tuple(None if out is None else np.asarray(out) for out in outputs)

    return run
