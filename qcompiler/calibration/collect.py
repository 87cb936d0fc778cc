"""Collect activation statistics with onnxruntime, one batch at a time.

:func:`collect` copies the model with the requested tensors added as graph outputs (their
ValueInfo copied from the model's ``value_info``, or from ONNX shape inference when the model
lacks it) and runs it in onnxruntime (CPU, all graph optimizations: a tensor that is a graph
output is never fused away, and the optimized kernels run CREPE's calibration 4x faster than with
optimizations off; ``threads`` intra-op threads) on each feed. Each output updates its observer and is
dropped at once: peak memory is one feed's worth of requested activations, whatever the number of
samples, and the observers are constant-size (streaming min/max and power-of-two histograms, see
:mod:`.observers`), so one pass over the data is enough for every method.

``max_outputs_bytes`` bounds that one-feed peak. onnxruntime keeps every graph output of a run
alive until the run ends, whether it was asked for or not (measured: ocr_det_ppocrv4 on a 736x992
page holds 1.2 GB of activations), so when the requested tensors would exceed the budget they are
split into consecutive groups, each observed by its own session in its own pass over the data
(each pass costs one inference per feed). Sizes are estimated by ONNX shape inference on the first
feed's input shapes; with dynamic shapes, a larger later feed can exceed the budget by its size
ratio. One tensor larger than the budget gets a pass of its own.

Models over protobuf's 2 GB limit are written to a temporary directory with their initializers as
external data (streamed one tensor at a time, no second in-memory copy) and loaded by path. A model
given as a path keeps its external data on disk: its data files are hard-linked (copied across file
systems) next to the augmented graph, and never read into this process.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnx.numpy_helper
import onnx.shape_inference

from ..errors import ModelLoadError, UnsupportedModelError
from ..ir.external_data import external_location
from ..ir.serde import PROTOBUF_LIMIT
from ..progress import advance, bar
from ..scaleout import SESSION_THREADS, session_options
from .data import CalibrationDataError, CalibrationSet, input_specs, open_calibration
from .observers import Observer

ProgressCallback = Callable[[int, "int | None"], None]

DEFAULT_MAX_OUTPUTS_BYTES = 1 << 30
_SIZE_LIMIT = PROTOBUF_LIMIT - (16 << 20)  # above this, the model goes to disk with external data


def collect(model: onnx.ModelProto | bytes | str | os.PathLike, tensor_names: Iterable[str],
            data: CalibrationSet | Any, make_observer: Callable[[str], Observer], *,
            max_outputs_bytes: int | None = DEFAULT_MAX_OUTPUTS_BYTES, threads: int = SESSION_THREADS,
            progress: ProgressCallback | None = None) -> dict[str, Observer]:
    """Run the float model over ``data`` and feed each named tensor to its own observer.

    Args:
        model: an ``onnx.ModelProto``, its serialized bytes, or a path to an ``.onnx`` file.
        tensor_names: tensors to observe: outputs of nodes of the main graph (intermediate or graph
            outputs), graph inputs (observed from the feeds) or initializers (observed once).
        data: a :class:`CalibrationSet`, or anything :func:`open_calibration` accepts (then checked
            against the model's inputs).
        make_observer: ``f(tensor name) -> observer`` with ``update(array)`` (e.g.
            ``make_observer_factory("mse")``).
        max_outputs_bytes: approximate bound on the bytes of requested activations of one feed
            held at once; over it, the tensors are split into groups observed in separate passes
            over the data (``None``: no bound, always one pass).
        threads: onnxruntime intra-op threads (default: :data:`qcompiler.scaleout.SESSION_THREADS`, the
            same ranges on any machine; sharded calibration gets its parallelism from workers).
        progress: called as ``progress(runs done, total runs or None)`` after every feed of every
            pass (one pass unless the budget splits the tensors); None: a "calibration" bar where the
            command asked for progress bars (:mod:`qcompiler.progress`).

    Returns ``{tensor name: observer}`` in the order of ``tensor_names``. Tensors that are not
    floating point (int64 shapes, bool masks) are not observed: their observers stay empty.
    Raises ``ValueError`` for a name the main graph does not define, and
    :class:`CalibrationDataError` for bad data, including a feed onnxruntime rejects (named).
    """
    proto, directory = _load(model)
    names = list(dict.fromkeys(tensor_names))
    initializers = {tensor.name: tensor for tensor in proto.graph.initializer}
    graph_inputs = {value.name for value in proto.graph.input if value.name not in initializers}
    produced = {output for node in proto.graph.node for output in node.output if output}
    unknown = [n for n in names if n not in produced and n not in graph_inputs and n not in initializers]
    if unknown:
        shown = ", ".join(repr(n) for n in unknown[:10])
        shown += f" and {len(unknown) - 10} more" if len(unknown) > 10 else ""
        raise ValueError(f"collect: the model's main graph defines no tensor named {shown}")
    if not isinstance(data, CalibrationSet):
        data = open_calibration(data, input_specs(proto))
    observers = {name: make_observer(name) for name in names}
    for name in names:
        if name in initializers and name not in graph_inputs:
            observe(observers[name], onnx.numpy_helper.to_array(initializers[name], directory or ""))
    fetched = [n for n in names if n in produced]
    observed_inputs = [n for n in names if n in graph_inputs]

    items = data.items()
    first = next(items)  # a source without any feed raises here
    infos, estimates = _inspect(proto, fetched, first[1], sizes=max_outputs_bytes is not None)
    groups = _plan(fetched, estimates, first[1], max_outputs_bytes)
    total = None if data.length is None else data.length * max(1, len(groups))
    done = 0
    with contextlib.ExitStack() as stack:
        if progress is None:  # a bar where the command asked for progress (qcompiler.progress), else nothing
            progress = advance(stack.enter_context(bar(total, "calibration", unit="feed")))
        scratch = stack.enter_context(tempfile.TemporaryDirectory(prefix="qcompiler-calib-"))
        writer = _ModelWriter(proto, Path(scratch), directory)
        for position, group in enumerate(groups or [[]]):
            session = writer.session(group, infos, threads) if group else None
            feeds = _resume([first], items) if position == 0 else data.items()
            first = None
            for where, feed in feeds:
                if position == 0:
                    for name in observed_inputs:
                        observe(observers[name], feed[name])
                if session is not None:
                    _run(session, group, feed, where, observers)
                del feed  # before the next one is read: one feed in memory at a time
                done += 1
                if progress is not None:
                    progress(done, total)
            del session
    return observers


def _resume(held: list, rest: Iterator) -> Iterator:
    """The held item, then the rest (without keeping a reference to the held item)."""
    yield held.pop()
    yield from rest


def run_feed(session: Any, names: list[str], feed: dict[str, np.ndarray], where: str) -> list[Any]:
    """``session.run(names, feed)``; onnxruntime's failure as a :class:`CalibrationDataError` naming the feed."""
    try:
        return session.run(names, feed)
    except Exception as exc:  # onnxruntime's exceptions have no common public base class
        text = str(exc).strip()
        message = text.splitlines()[0] if text else type(exc).__name__
        raise CalibrationDataError(f"{where}: onnxruntime failed on this feed: {message}") from exc


def _run(session: Any, group: list[str], feed: dict[str, np.ndarray], where: str,
         observers: dict[str, Observer]) -> None:
    outputs = run_feed(session, group, feed, where)
    for index, name in enumerate(group):
        array = outputs[index]
        outputs[index] = None  # drop each output as soon as it is observed
        if isinstance(array, np.ndarray):
            observe(observers[name], array)
        del array


def observe(observer: Observer, array: Any) -> None:
    """Feed ``array`` to ``observer`` when it is floating point (shapes and masks are not observed)."""
    array = np.asarray(array)
    if array.dtype.kind == "f" or array.dtype.name == "bfloat16":
        observer.update(array)


def _load(model: Any) -> tuple[onnx.ModelProto, Path | None]:
    """The proto (external data not loaded) and the directory its external data is relative to."""
    if isinstance(model, onnx.ModelProto):
        return model, None
    if isinstance(model, (bytes, bytearray)):
        try:
            return onnx.load_from_string(bytes(model)), None
        except Exception as exc:
            raise ModelLoadError(f"collect: the model bytes are not an ONNX model ({exc})") from None
    if isinstance(model, (str, os.PathLike)):
        path = Path(model)
        if not path.is_file():
            raise ModelLoadError(f"{path}: no such model file")
        try:
            return onnx.load(str(path), load_external_data=False), path.parent
        except Exception as exc:
            raise ModelLoadError(f"{path}: cannot load as ONNX ({type(exc).__name__}: {exc})") from None
    raise TypeError(f"collect: expected an onnx.ModelProto, bytes or a path, got {type(model).__name__}")


# -- the augmented model -------------------------------------------------------------------------------


def _byte_size(proto: onnx.ModelProto) -> int:
    try:
        return proto.ByteSize()
    except Exception:  # noqa: BLE001 - some protobuf builds refuse sizes over 2 GB
        return PROTOBUF_LIMIT + 1


def _copy_fields(target: Any, source: Any, skip: str) -> None:
    for field, value in source.ListFields():
        if field.name == skip:
            continue
        repeated = field.is_repeated if hasattr(field, "is_repeated") else field.label == field.LABEL_REPEATED
        if repeated:
            getattr(target, field.name).extend(value)
        elif field.type == field.TYPE_MESSAGE:
            getattr(target, field.name).CopyFrom(value)
        else:
            setattr(target, field.name, value)


def _without_initializers(proto: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of everything but the main graph's initializers (cheap even for a huge model)."""
    shell = onnx.ModelProto()
    _copy_fields(shell, proto, skip="graph")
    _copy_fields(shell.graph, proto.graph, skip="initializer")
    return shell


def _tensor_bytes(tensor: onnx.TensorProto) -> int:
    if tensor.HasField("raw_data"):
        return len(tensor.raw_data)
    try:
        itemsize = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type)).itemsize
    except Exception:  # noqa: BLE001
        itemsize = 4
    return itemsize * int(np.prod(list(tensor.dims), dtype=np.float64))


class _ModelWriter:
    """Makes one onnxruntime session per group of extra outputs.

    Small models are serialized in memory. Larger ones are written once to ``directory`` with their
    initializers as external data, streamed one tensor at a time; each session then saves only the
    graph (with its outputs) next to that data and loads it by path.
    """

    def __init__(self, proto: onnx.ModelProto, directory: Path, source: Path | None = None):
        self.proto = proto
        self.directory = directory
        external = {external_location(t)[0] for t in proto.graph.initializer
                    if t.data_location == onnx.TensorProto.EXTERNAL}
        self.large = bool(external) or _byte_size(proto) > _SIZE_LIMIT
        if external and source is None:
            raise ModelLoadError("collect: a model with external data must be given by its path")
        for location in external:  # the model's own data files, beside the graphs written here
            if Path(location).is_absolute() or ".." in Path(location).parts:
                raise ModelLoadError(f"collect: external data location {location!r} is outside the model's directory")
            linked = directory / location
            linked.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(source / location, linked)
            except OSError:
                shutil.copyfile(source / location, linked)
        self._external: list[onnx.TensorProto] | None = None

    def _external_initializers(self) -> list[onnx.TensorProto]:
        if self._external is not None:
            return self._external
        location = "qcompiler-collect.data"
        tensors = []
        with open(self.directory / location, "wb") as stream:
            for tensor in self.proto.graph.initializer:
                if tensor.data_location == onnx.TensorProto.EXTERNAL or tensor.data_type == onnx.TensorProto.STRING:
                    tensors.append(tensor)  # already external (its data file linked beside), or string
                    continue
                raw = tensor.raw_data if tensor.HasField("raw_data") else onnx.numpy_helper.to_array(tensor).tobytes()
                written = onnx.TensorProto()
                written.name, written.data_type = tensor.name, tensor.data_type
                written.dims.extend(tensor.dims)
                if len(raw) < 1024:
                    written.raw_data = raw
                else:
                    stream.write(b"\0" * (-stream.tell() % 4096))  # page-aligned, so it can be mapped
                    offset = stream.tell()
                    stream.write(raw)
                    for key, value in (("location", location), ("offset", str(offset)), ("length", str(len(raw)))):
                        entry = written.external_data.add()
                        entry.key, entry.value = key, value
                    written.data_location = onnx.TensorProto.EXTERNAL
                tensors.append(written)
                del raw
        self._external = tensors
        return tensors

    def session(self, outputs: list[str], infos: dict[str, onnx.ValueInfoProto], threads: int):
        augmented = _without_initializers(self.proto) if self.large else _copy(self.proto)
        present = {value.name for value in augmented.graph.output}
        for name in outputs:
            if name not in present:
                augmented.graph.output.append(infos[name] if name in infos
                                              else onnx.helper.make_empty_tensor_value_info(name))
        options = session_options(threads)
        providers = ["CPUExecutionProvider"]
        if self.large:
            augmented.graph.initializer.extend(self._external_initializers())
            path = self.directory / "model.onnx"
            onnx.save_model(augmented, str(path))
            del augmented
            model = str(path)
        else:
            model = augmented.SerializeToString()
            del augmented
        return open_session(self.proto, model, options, providers)


# -- operators onnxruntime does not implement ------------------------------------------------------------

_MISSING_OP = (  # what onnxruntime says when it has no kernel for a node; (op, node name) groups where given
    re.compile(r"Could not find an implementation for (?P<op>[\w.]+)\(\d+\) node with name '(?P<name>[^']*)'"),
    re.compile(r"(?:(?P<domain>[\w.]+):)?(?P<op>\w+)\(-?\d+\) is not a registered function/op"),
    re.compile(r"No Op registered for (?P<op>\w+) with domain_version of \d+"),
)


class UnsupportedOperatorError(UnsupportedModelError):
    """onnxruntime has no kernel for a node of the model (an unknown custom op, or an op/type/opset it lacks)."""


def unsupported_operator(proto: onnx.ModelProto, exc: BaseException, use: str = "calibration runs the model in it"
                         ) -> UnsupportedOperatorError | None:
    """The user error for onnxruntime's refusal ``exc`` to load ``proto`` when the cause is a node whose
    operator (or operator for these types, at this opset) onnxruntime does not implement, naming the node,
    its operator and opset; None for any other cause. ``use`` says why onnxruntime had to run it."""
    text = str(exc).strip()
    for pattern in _MISSING_OP:
        found = pattern.search(text)
        if found is not None:
            break
    else:
        return None
    groups = found.groupdict()
    op, name = groups["op"], groups.get("name")
    nodes = [n for n in proto.graph.node if n.op_type == op and (not name or n.name == name)]
    if groups.get("domain"):
        nodes = [n for n in nodes if n.domain == groups["domain"]] or nodes
    opsets = {entry.domain or "ai.onnx": entry.version for entry in proto.opset_import}
    if nodes:
        node = nodes[0]
        domain = node.domain or "ai.onnx"
        label = f"node {node.name!r}" if node.name else f"the node computing {node.output[0]!r}"
        more = f" and {len(nodes) - 1} more {op} node(s)" if len(nodes) > 1 else ""
        what = f"{label} ({domain}::{op}, opset {opsets.get(domain, '?')}){more}"
    else:
        what = f"operator {op}"
    reason = text.split(" : ")[-1].splitlines()[0].strip()
    return UnsupportedOperatorError(f"onnxruntime has no kernel for {what}, and {use}: {reason}")


DROPPED_OUTPUT = "Failed to find node output or a constant initializer producing output"
"""onnxruntime's message when its optimizations removed the producer of a graph output."""


def observing_session(model: bytes | str, options: Any, providers: list[str]):
    """``onnxruntime.InferenceSession`` of a model whose graph outputs include intermediate values to observe.

    onnxruntime 1.32's basic graph optimizations can drop a node whose output the model returns (a Gemm
    read by a Transpose: the fused pair no longer computes it) and then refuse the model; the session is
    then made again without graph optimizations, which computes the same float values, only unfused."""
    import onnxruntime as ort

    try:
        return ort.InferenceSession(model, options, providers=providers)
    except Exception as exc:  # onnxruntime's exceptions have no common public base class
        if DROPPED_OUTPUT not in str(exc):
            raise
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(model, options, providers=providers)


def open_session(proto: onnx.ModelProto, model: bytes | str, options: Any, providers: list[str],
                 use: str = "calibration runs the model in it"):
    """:func:`observing_session` of ``model``, where a node onnxruntime has no kernel for is an
    :class:`UnsupportedOperatorError` naming the node of ``proto`` (the same model, as a proto)."""
    try:
        return observing_session(model, options, providers)
    except Exception as exc:  # onnxruntime's exceptions have no common public base class
        error = unsupported_operator(proto, exc, use)
        if error is None:
            raise
        raise error from None


def _copy(proto: onnx.ModelProto) -> onnx.ModelProto:
    copy = onnx.ModelProto()
    copy.CopyFrom(proto)
    return copy


# -- types of the outputs, and their sizes on the first feed -----------------------------------------


def _inspect(proto: onnx.ModelProto, names: list[str], feed: dict[str, np.ndarray], sizes: bool = True
             ) -> tuple[dict[str, onnx.ValueInfoProto], dict[str, float | None]]:
    """ValueInfos for the outputs to add, and each one's size in bytes on ``feed`` (None: unknown).

    ValueInfos come from the model when it has them, else (type only) from ONNX shape inference.
    Sizes come from shape inference (with data propagation) on a copy whose inputs have the
    feed's shapes; weights over 64 KiB are left out of that copy and declared as inputs, so it
    stays small whatever the model's size.
    """
    infos = {value.name: value for value in list(proto.graph.input) + list(proto.graph.value_info)
             + list(proto.graph.output) if value.type.HasField("tensor_type")}
    if not sizes and all(name in infos for name in names):
        return infos, dict.fromkeys(names)
    shell = _without_initializers(proto)
    declared = {value.name for value in shell.graph.input}
    for tensor in proto.graph.initializer:
        if tensor.data_location != onnx.TensorProto.EXTERNAL and _tensor_bytes(tensor) <= 1 << 16:
            shell.graph.initializer.add().CopyFrom(tensor)
        elif tensor.name not in declared:
            shell.graph.input.append(
                onnx.helper.make_tensor_value_info(tensor.name, tensor.data_type, list(tensor.dims)))
    for value in shell.graph.input:
        if value.name in feed and value.type.HasField("tensor_type"):
            shape = value.type.tensor_type.shape
            shape.ClearField("dim")
            for size in np.shape(feed[value.name]):
                shape.dim.add().dim_value = int(size)
    try:
        inferred = onnx.shape_inference.infer_shapes(shell, strict_mode=False, data_prop=True)
        found = {v.name: v for v in list(inferred.graph.value_info) + list(inferred.graph.output)}
    except Exception:  # noqa: BLE001 - shape inference is best effort: outputs without a type still run
        found = {}
    estimates: dict[str, float | None] = {}
    for name in names:
        value = found.get(name)
        if name not in infos and value is not None and value.type.HasField("tensor_type"):
            infos[name] = onnx.helper.make_tensor_value_info(name, value.type.tensor_type.elem_type, None)
        estimates[name] = _size(value if value is not None else infos.get(name))
    return infos, estimates


def _size(info: onnx.ValueInfoProto | None) -> float | None:
    if info is None or not info.type.HasField("tensor_type") or not info.type.tensor_type.HasField("shape"):
        return None
    dims = info.type.tensor_type.shape.dim
    if not all(d.HasField("dim_value") and d.dim_value >= 0 for d in dims):
        return None
    try:
        itemsize = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(info.type.tensor_type.elem_type)).itemsize
    except Exception:  # noqa: BLE001 - undefined or exotic element types
        itemsize = 4
    return float(itemsize) * float(np.prod([d.dim_value for d in dims], dtype=np.float64))


def _plan(names: list[str], estimates: dict[str, float | None], feed: dict[str, np.ndarray],
          limit: int | None) -> list[list[str]]:
    """Consecutive groups of ``names`` whose estimated sizes add up to at most ``limit`` (balanced).

    An unknown size counts as the largest known one (4x the feed's bytes when none is known).
    """
    if not names:
        return []
    if limit is None:
        return [list(names)]
    known = [e for e in estimates.values() if e is not None]
    fallback = max(known) if known else 4.0 * sum(np.asarray(a).nbytes for a in feed.values())
    sizes = [fallback if estimates.get(name) is None else float(estimates[name]) for name in names]
    fewest = _greedy(sizes, limit)
    if fewest == 1:
        return [list(names)]
    # as few passes as the budget allows, then the smallest largest group with that many passes
    low, high = max(sizes), float(limit)
    if _greedy(sizes, low) > fewest:
        for _ in range(50):
            middle = (low + high) / 2
            low, high = (low, middle) if _greedy(sizes, middle) <= fewest else (middle, high)
        capacity = high
    else:
        capacity = low
    groups: list[list[str]] = []
    current: list[str] = []
    size = 0.0
    for name, estimate in zip(names, sizes):
        if current and size + estimate > capacity:
            groups.append(current)
            current, size = [], 0.0
        current.append(name)
        size += estimate
    groups.append(current)
    return groups


def _greedy(sizes: list[float], capacity: float) -> int:
    """How many consecutive groups of at most ``capacity`` (a larger single size gets its own)."""
    count, size, members = 1, 0.0, 0
    for estimate in sizes:
        if members and size + estimate > capacity:
            count, size, members = count + 1, 0.0, 0
        size += estimate
        members += 1
    return count
