"""Constant folding with onnx-graphsurgeon.

Every node whose inputs are all constant is evaluated once (graphsurgeon runs the constant subgraph
in onnxruntime) and replaced by an initializer (graphsurgeon gets the weights no such node reads as
placeholders: nothing is copied); ``Shape`` of a statically shaped tensor folds too.
Results larger than ``size_threshold`` bytes are not folded, so a small ``Expand`` does not become a
huge initializer. Nodes left dead are removed. Subgraphs are left as they are. Initializers count as
constants even when they are also listed as graph inputs (an IR >= 4 overridable default), which is
what every quantizer assumes of weights; the graph inputs themselves are kept, with their defaults,
even when folding leaves them unread.

graphsurgeon creates its onnxruntime sessions without session options, so onnxruntime's graph
optimizers would log their warnings (``UnsqueezeElimination cannot remove node``, initializers that
are also inputs) straight to the terminal, in the middle of the progress line. While it folds,
sessions made without options get the log severity every qcompiler session uses (3: errors are
still printed, warnings are not); sessions made with options are left as they are.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

import onnx_graphsurgeon as gs

from qcompiler.ir import Model, Value
from qcompiler.ir.serde import from_weightless, weightless_proto
from qcompiler.pass_manager import Pass, PassResult, register_pass


@register_pass("fold-constants")
class FoldConstants(Pass):
    """Evaluate nodes whose inputs are all constant and replace them by initializers."""

    size_threshold: int = 16 << 20
    preserves_semantics = True

    def call(self, model: Model) -> PassResult:
        if not any(_foldable(node, model) for node in model.graph):
            return PassResult(model, False)
        read = _read_by_constant_nodes(model)
        graph = gs.import_onnx(weightless_proto(model, keep=lambda value: value.name in read))
        with quiet_onnxruntime_sessions():
            graph.fold_constants(size_threshold=self.size_threshold, recurse_subgraphs=False,
                                 error_ok=True).cleanup(remove_unused_graph_inputs=False)
        folded = from_weightless(gs.export_onnx(graph, do_type_check=False), model)
        if len(folded.graph) >= len(model.graph):
            return PassResult(model, False)
        docs = {node.name: node.doc_string for node in model.graph if node.doc_string}
        for node in folded.graph:
            node.doc_string = docs.get(node.name, "")
        # graphsurgeon drops initializers from the graph inputs, and removes those nothing reads any
        # more; keep the interface as it was (an unread overridable input keeps its default)
        kept = {v.name: v for v in folded.graph.values()}
        for value in model.graph.inputs:
            if value.name not in kept and value.const is not None:
                kept[value.name] = folded.graph.add_initializer(
                    Value(value.name, value.dtype, value.shape, value.const, doc_string=value.doc_string))
        folded.graph.inputs = [kept[v.name] for v in model.graph.inputs if v.name in kept]
        opsets, functions = dict(model.opset_imports), list(model.functions)
        model.update_from(folded)
        model.opset_imports, model.functions = opsets, functions
        return PassResult(model, True)


def _read_by_constant_nodes(model: Model) -> set[str]:
    """Names of the initializers that nodes computing from constants only read (transitively: a node reading
    the output of such a node and initializers counts): the only weights folding evaluates. The others go
    to graphsurgeon as placeholders (``weightless_proto``), so the weights are never copied."""
    constant = set(model.graph.initializers)
    read: set[str] = set()
    for node in model.graph:
        inputs = [v for v in node.inputs if v is not None]
        computes_from_constants = node.op_type == "Constant" or inputs and all(v.name in constant for v in inputs)
        if node.has_subgraphs() or not computes_from_constants:
            continue
        read.update(v.name for v in inputs if v.const is not None)
        constant.update(v.name for v in node.outputs if v is not None)
    return read


def _foldable(node, model: Model) -> bool:
    """Cheap pre-check: all inputs constant, or a Shape of a fully static tensor."""
    if node.has_subgraphs():
        return False
    inputs = [v for v in node.inputs if v is not None]
    if node.op_type == "Shape" and inputs and inputs[0].shape is not None:
        return all(isinstance(d, int) for d in inputs[0].shape)
    return bool(inputs) and all(v.const is not None for v in inputs) or node.op_type == "Constant"


SESSION_LOG_SEVERITY = 3
"""onnxruntime's log severity for the sessions graphsurgeon creates: 0 verbose, 1 info, 2 warning, 3 error."""

_QUIET_LOCK = threading.RLock()


@contextlib.contextmanager
def quiet_onnxruntime_sessions() -> Iterator[None]:
    """Within the block, ``onnxruntime.InferenceSession(model)`` without session options gets options
    with ``log_severity_level = SESSION_LOG_SEVERITY`` (graphsurgeon's ``fold_constants`` looks the class
    up on the module at every call and passes none). Sessions given options are created unchanged."""
    import onnxruntime as ort

    with _QUIET_LOCK:
        original = ort.InferenceSession

        def quiet_session(path_or_bytes, sess_options=None, *args, **kwargs):
            if sess_options is None:
                sess_options = ort.SessionOptions()
                sess_options.log_severity_level = SESSION_LOG_SEVERITY
            return original(path_or_bytes, sess_options, *args, **kwargs)

        ort.InferenceSession = quiet_session
        try:
            yield
        finally:
            ort.InferenceSession = original
