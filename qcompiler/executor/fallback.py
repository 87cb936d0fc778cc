"""Kernels for nodes without one of ours: ``onnx.reference``, prepared once per node.

``onnx.reference`` implements every standard operator (and model-local functions, and subgraphs of
If/Loop/Scan) in numpy, so every valid model runs. The op object is built when the executor plans the
graph; a call then costs a few microseconds on top of numpy, not a ``ReferenceEvaluator.run``.
An op without subgraphs, context or linked attributes is called through its ``_run`` with its
attributes gathered once (what ``OpRun.run`` does on every call, less the per-call checks).
Values a subgraph reads from the enclosing scope (the node's captures) are passed as its context.
An operator ``onnx.reference`` does not know either (a custom domain's) is an
:class:`~qcompiler.errors.UnsupportedModelError` naming the node when the executor plans the graph.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx.helper
from onnx.reference import ReferenceEvaluator

from .. import ir
from ..errors import UnsupportedModelError
from ..ir.serde import _node_to_proto


def reference_kernel(node: ir.Node, model: ir.Model) -> Callable[..., tuple]:
    """A function ``(*inputs) -> tuple of outputs`` computing ``node`` with ``onnx.reference``.

    Captured outer-scope values are expected after the inputs, in ``node.captures`` order.
    """
    opsets = {domain or "": version for domain, version in model.opset_imports.items()}
    proto = _node_to_proto(node)
    # A one-node function, not the bare node: onnx.reference ignores ``opsets`` for a NodeProto and picks every
    # operator's newest version (an opset-9 Dropout with its ``ratio`` attribute would run as Dropout-12).
    function = onnx.helper.make_function("qcompiler.fallback", "node", [name for name in proto.input if name],
                                         [name for name in proto.output if name], [proto],
                                         [onnx.helper.make_opsetid(d, v) for d, v in opsets.items()])
    try:
        evaluator = ReferenceEvaluator(function, functions=model.functions or None)
    except NotImplementedError as exc:  # an operator (or opset of one) onnx.reference does not know
        label = f"node {node.name!r}" if node.name else f"the node computing {node.outputs[0].name!r}"
        domain = node.domain or "ai.onnx"
        version = opsets.get(node.domain or "", "?")
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UnsupportedModelError(f"the executor has no kernel for {label} ({domain}::{node.op_type}, opset "
                                    f"{version}): neither qcompiler's kernels nor onnx.reference implement it "
                                    f"({reason})") from None
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
