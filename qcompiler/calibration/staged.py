"""Collect activation statistics from a model past memory, one stage of its graph at a time.

:func:`collect` runs the whole model in one onnxruntime session, and a session holds every weight
(prepacked MatMul weights are copies): for an LLM of gigabytes that is more memory than the model file.
:func:`collect_in_stages` cuts the graph instead, in its topological order, into *stages*: runs of consecutive
nodes whose constant inputs total at most ``stage_bytes`` (a node whose weights alone exceed it is a stage of
its own). Each stage becomes a model of its own: its graph inputs are the values it reads that the feed or an
earlier stage produced, its outputs the values it produces that a later stage reads, and the requested tensors
among them; its weights are handed to the session as external initializers (read in place: a memory-mapped
weight is not copied), except the small ones shape inference reads, copied in. Stages run one after the other,
each over every feed, in one session at a time; between stages, each feed's values that cross the cut are held
in memory and the ones no later stage reads are dropped. After a stage, the resident pages of its mapped
weights are released (:func:`~qcompiler.ir.external_data.release_pages`).

Peak memory: one stage's weights (their pages and the session's prepacked copies) plus, for every feed, the
values crossing the current cut (a decoder LLM: the residual stream, the attention mask and the rotary tables).
The outputs are the same as one session's up to the fusions onnxruntime can no longer make across a cut.
A node with subgraphs reads the outer values its subgraphs capture like inputs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np
import onnx
import onnx.numpy_helper

from ..ir import Model, Node, Value, onnxruntime_model
from ..ir.external_data import release_pages
from ..ir.serde import is_shape_data, tensor_bytes, weightless_proto
from ..scaleout import SESSION_THREADS, session_options
from .collect import collect, observe, run_feed
from .data import CalibrationSet, model_inputs, open_calibration
from .observers import Observer

STAGE_BYTES = 256 << 20
"""The weights of one stage (bytes): a model with more than :data:`STAGED_ABOVE` is run in stages of this."""
STAGED_ABOVE = 1 << 30
"""Models whose weights exceed this many bytes are observed in stages (:func:`needs_stages`)."""


def needs_stages(model: Model) -> bool:
    """Whether :func:`collect_in_stages` should observe ``model`` instead of one session."""
    return tensor_bytes(model) > STAGED_ABOVE


def _reads(node: Node) -> list[Value]:
    return [v for v in (*node.inputs, *node.captures) if v is not None]


def stages(model: Model, stage_bytes: int = STAGE_BYTES) -> list[list[Node]]:
    """The graph's nodes in order, cut where the next node's weights would take a stage past
    ``stage_bytes`` (see the module docstring)."""
    result: list[list[Node]] = [[]]
    held: set[Value] = set()
    total = 0
    for node in model.graph:
        weights = {v for v in _reads(node) if v.const is not None and v.name in model.graph.initializers} - held
        size = sum(v.const.nbytes for v in weights)
        if result[-1] and total + size > stage_bytes:
            result.append([])
            held, total = set(), 0
        result[-1].append(node)
        held |= weights
        total += size
    return [stage for stage in result if stage]


def collect_model(model: Model, tensor_names: Iterable[str], data: CalibrationSet | Any,
                  make_observer: Callable[[str], Observer]) -> dict[str, Observer]:
    """:func:`~qcompiler.calibration.collect` for an IR ``model``: stage by stage when it is past memory
    (:func:`needs_stages`), else in one session over the model as onnxruntime takes it (by path with
    external data when near 2 GB: no second copy in memory)."""
    if needs_stages(model):
        return collect_in_stages(model, tensor_names, data, make_observer)
    with onnxruntime_model(model) as source:
        return collect(source, tensor_names, data, make_observer)


def collect_in_stages(model: Model, tensor_names: Iterable[str], data: CalibrationSet | Any,
                      make_observer: Callable[[str], Observer], *, stage_bytes: int = STAGE_BYTES,
                      threads: int = SESSION_THREADS) -> dict[str, Observer]:
    """:func:`~qcompiler.calibration.collect`'s result for an IR ``model``, run in stages (module docstring):
    ``{tensor name: observer}`` in the order of ``tensor_names`` (graph inputs observed from the feeds,
    node outputs from the stage that produces them; tensors that are not floating point are not observed)."""
    names = list(dict.fromkeys(tensor_names))
    done: dict[str, Observer] = {}
    for completed in observe_in_stages(model, names, data, make_observer, stage_bytes=stage_bytes, threads=threads):
        done.update(completed)
    return {name: done[name] for name in names}


def observe_in_stages(model: Model, tensor_names: Iterable[str], data: CalibrationSet | Any,
                      make_observer: Callable[[str], Observer], *, stage_bytes: int = STAGE_BYTES,
                      threads: int = SESSION_THREADS) -> Iterator[dict[str, Observer]]:
    """:func:`collect_in_stages` as it goes: after each stage, the observers of the tensors complete by then,
    a tensor being complete once every stage that produces or reads it has run. So a caller may rewrite the
    weights of a tensor's readers as soon as it gets the tensor's observer: no later stage reads them, and
    every tensor is observed in the float model."""
    names = list(dict.fromkeys(tensor_names))
    observers = {name: make_observer(name) for name in names}
    graph = model.graph
    values = {v.name: v for v in graph.values()}
    unknown = [n for n in names if n not in values]
    if unknown:
        raise ValueError(f"collect_in_stages: the model's main graph defines no tensor named {unknown[0]!r}")
    if not isinstance(data, CalibrationSet):
        data = open_calibration(data, model_inputs(model))
    wanted = set(names)
    for name in names:
        if values[name].const is not None and name in graph.initializers:
            observe(observers[name], values[name].const)
    held: list[tuple[str, dict[str, np.ndarray]]] = [(where, dict(feed)) for where, feed in data.items()]
    for _, feed in held:
        for name in wanted & feed.keys():
            observe(observers[name], feed[name])

    cut = stages(model, stage_bytes)
    last_read: dict[Value, int] = {}
    complete_after = dict.fromkeys(names, -1)
    for position, stage in enumerate(cut):
        for node in stage:
            for value in (*_reads(node), *node.outputs):
                if value is not None and value.name in wanted:
                    complete_after[value.name] = position
            for value in _reads(node):
                last_read[value] = position
    last_read_by_name = {value.name: position for value, position in last_read.items()}

    def complete(position: int) -> dict[str, Observer]:
        """The observers complete after stage ``position``, handed over (the caller frees them), and the
        values no later stage reads dropped."""
        for _, live in held:
            for name in [n for n in live if last_read_by_name.get(n, -1) <= position]:
                del live[name]
        return {name: observers.pop(name) for name in names if complete_after[name] == position}

    yield complete(-1)
    shell = weightless_proto(model)
    protos = dict(zip(graph, shell.graph.node, strict=True))
    for position, stage in enumerate(cut):
        if not any(v is not None and (last_read.get(v, -1) > position or v.name in observers)
                   for node in stage for v in node.outputs):
            yield complete(position)  # nothing later reads what it computes (an LLM's logits): not run
            continue
        proto, inputs, outputs, weights = _stage_model(model, shell, protos, stage, position, last_read, wanted,
                                                       held[0][1] if held else {})
        session, tensors = _session(proto, weights, threads)
        del proto
        for where, live in held:
            arrays = run_feed(session, [v.name for v in outputs], {v.name: live[v.name] for v in inputs}, where)
            for value, array in zip(outputs, arrays, strict=True):
                if value.name in observers:
                    observe(observers[value.name], array)
                if last_read.get(value, -1) > position:  # a copy: onnxruntime's array keeps its arena alive
                    live[value.name] = np.array(array)
            del arrays
        del session, tensors
        for weight in weights:
            release_pages(weight.const)
        yield complete(position)


def _session(proto: onnx.ModelProto, weights: list[Value], threads: int) -> tuple[Any, list[np.ndarray]]:
    """(a session of the stage's model, the arrays it reads its large weights from in place: keep them while
    it runs)."""
    import onnxruntime as ort

    options = session_options(threads, optimize=True)
    large = [v for v in weights if not is_shape_data(v)]
    tensors = [np.ascontiguousarray(v.const) for v in large]
    options.add_external_initializers([v.name for v in large], [ort.OrtValue.ortvalue_from_numpy(t) for t in tensors])
    return ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"]), tensors


def _stage_model(model: Model, shell: onnx.ModelProto, protos: dict[Node, onnx.NodeProto], stage: list[Node],
                 position: int, last_read: dict[Value, int], wanted: set[str], live: dict[str, np.ndarray]
                 ) -> tuple[onnx.ModelProto, list[Value], list[Value], list[Value]]:
    """(the stage's model, its graph inputs, its outputs, its weights); the inputs are typed as the arrays
    ``live`` holds for them (a feed's), the outputs by name only (onnxruntime infers them)."""
    graph = model.graph
    inside = set(stage)
    weights: dict[Value, None] = {}
    inputs: dict[Value, None] = {}
    for node in stage:
        for value in _reads(node):
            if value.name in graph.initializers and value.const is not None:
                weights[value] = None
            elif value.producer() not in inside:
                inputs[value] = None
    outputs = [v for node in stage for v in node.outputs
               if v is not None and (last_read.get(v, -1) > position or v.name in wanted)]
    sub = onnx.GraphProto(name=f"stage{position}")
    sub.node.extend(protos[node] for node in stage)
    sub.input.extend(onnx.helper.make_tensor_value_info(
        v.name, onnx.helper.np_dtype_to_tensor_dtype(live[v.name].dtype), None) for v in inputs)
    sub.output.extend(onnx.ValueInfoProto(name=v.name) for v in outputs)
    sub.initializer.extend(onnx.numpy_helper.from_array(np.asarray(v.const), v.name) if is_shape_data(v)
                           else _placeholder(v) for v in weights)
    proto = onnx.ModelProto(ir_version=shell.ir_version, graph=sub)
    proto.opset_import.extend(shell.opset_import)
    proto.functions.extend(shell.functions)
    return proto, list(inputs), outputs, list(weights)


def _placeholder(weight: Value) -> onnx.TensorProto:
    """An initializer's type and dims, its data to come from the session's external initializers (the
    weight's own array, memory-mapped for a model read from a data file: not copied into the proto)."""
    tensor = onnx.TensorProto(name=weight.name, dims=weight.const.shape,
                              data_type=onnx.helper.np_dtype_to_tensor_dtype(weight.const.dtype))
    tensor.data_location = onnx.TensorProto.EXTERNAL
    tensor.external_data.add(key="location", value="qcompiler-stage-weights")
    return tensor
