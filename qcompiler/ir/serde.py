"""Reading and writing ONNX files: ``onnx.ModelProto`` <-> the IR.

The conversion is written against the protobuf directly rather than through onnx-graphsurgeon,
because graphsurgeon's export drops node doc strings, ``metadata_props`` and the model doc string
(checked with onnx-graphsurgeon 0.6.1), and real models keep data there (PP-OCR keeps its character
dictionary in ``metadata_props``). graphsurgeon is used where it is good: constant folding
(``qcompiler.passes.fold_constants``).

What round-trips: node and value names, doc strings, attributes with their types, opset imports,
IR version, producer, ``metadata_props`` of model and graph, ``value_info``, subgraphs of
If/Loop/Scan (kept as opaque GraphProtos), model-local functions (kept as FunctionProtos), and
external data. Sparse initializers and training info are refused with a clear message rather than
dropped. A model that leaves the compiler (saved, or handed to onnxruntime) carries in ``value_info``
only the symbolic dimensions its inputs and outputs name: the symbols ONNX shape inference invents
(``unk__0``) assert equalities the source never stated, and onnxruntime fuses on them
(``SkipLayerNormalization`` takes an ``Add`` whose inputs' shapes are known and equal), so a model
annotated with them would run other kernels than its source does.

Models past protobuf's 2 GB limit: the main graph's external initializers are memory-mapped when
loaded (read-only NumPy views of the data file, :mod:`qcompiler.ir.external_data`), never copied into
protobuf; a model whose tensors come near the limit is saved with external data, streamed one tensor at
a time into the data file, so the whole model is never one protobuf message; :func:`onnxruntime_model`
hands onnxruntime such a model as a file path, never as a >2 GB in-memory proto.

Files are written atomically; a model with external data is replaced together with its data file, so a
reader never sees one save's ``.onnx`` with another's data (:func:`qcompiler.ir.external_data.replace_pair`).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import tempfile
import time
import weakref
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import AttributeProto, numpy_helper

from ..errors import ModelLoadError, ModelSaveError, UnsupportedModelError
from ._core import Graph, Model, Node, Value, captured_names
from .external_data import MAP_BYTES, DataFiles, TensorWriter, data_files, external_location, file_mode, replace_pair

PROTOBUF_LIMIT = 2**31 - 1
"""Largest serialized protobuf message; larger models need external data."""

# ---------------------------------------------------------------------------------------------
# proto -> IR


def _shape_of(tensor_type: onnx.TypeProto.Tensor) -> tuple[int | str | None, ...] | None:
    if not tensor_type.HasField("shape"):
        return None
    dims: list[int | str | None] = []
    for dim in tensor_type.shape.dim:
        if dim.HasField("dim_value"):
            dims.append(dim.dim_value)
        elif dim.HasField("dim_param"):
            dims.append(dim.dim_param)
        else:
            dims.append(None)
    return tuple(dims)


def apply_value_info(value: Value, info: onnx.ValueInfoProto) -> None:
    """Copy the type of a ValueInfoProto onto a value."""
    value.doc_string = info.doc_string or value.doc_string
    kind = info.type.WhichOneof("value")
    if kind == "tensor_type" and not _has_denotation(info.type):
        value.dtype = info.type.tensor_type.elem_type or None
        value.shape = _shape_of(info.type.tensor_type)
        value.type_proto = None
    elif kind is not None:
        value.type_proto = onnx.TypeProto()
        value.type_proto.CopyFrom(info.type)
        if kind == "tensor_type":
            value.dtype = info.type.tensor_type.elem_type or None
            value.shape = _shape_of(info.type.tensor_type)


def _has_denotation(type_proto: onnx.TypeProto) -> bool:
    if type_proto.denotation:
        return True
    shape = type_proto.tensor_type.shape
    return any(dim.denotation for dim in shape.dim)


def _attr_to_python(attr: AttributeProto) -> Any:
    if attr.type == AttributeProto.STRING:
        return attr.s.decode("utf-8", errors="surrogateescape")
    if attr.type == AttributeProto.STRINGS:
        return [s.decode("utf-8", errors="surrogateescape") for s in attr.strings]
    if attr.type == AttributeProto.TENSOR:
        return numpy_helper.to_array(attr.t)
    if attr.type == AttributeProto.TENSORS:
        return [numpy_helper.to_array(t) for t in attr.tensors]
    if attr.type == AttributeProto.GRAPH:
        graph = onnx.GraphProto()
        graph.CopyFrom(attr.g)
        return graph
    if attr.type in (AttributeProto.SPARSE_TENSOR, AttributeProto.SPARSE_TENSORS,
                     AttributeProto.TYPE_PROTO, AttributeProto.TYPE_PROTOS):
        copy = AttributeProto()
        copy.CopyFrom(attr)
        return copy  # kept opaque, written back as it was
    value = onnx.helper.get_attribute_value(attr)
    if attr.type == AttributeProto.GRAPHS:
        return [_copy_graph(g) for g in value]
    return list(value) if isinstance(value, (list, tuple)) or attr.type in (
        AttributeProto.INTS, AttributeProto.FLOATS) else value


def _copy_graph(graph: onnx.GraphProto) -> onnx.GraphProto:
    copy = onnx.GraphProto()
    copy.CopyFrom(graph)
    return copy


def _graph_from_proto(proto: onnx.GraphProto, where: str, data: DataFiles | None = None) -> Graph:
    if len(proto.sparse_initializer):
        raise UnsupportedModelError(
            f"{where}: graph {proto.name!r} has sparse initializers, which qcompiler does not support"
        )
    graph = Graph(proto.name, proto.doc_string)
    graph.metadata = {p.key: p.value for p in proto.metadata_props}
    values: dict[str, Value] = {}

    def value_named(name: str) -> Value:
        if name not in values:
            values[name] = Value(name)
        return values[name]

    for tensor in proto.initializer:
        external = tensor.data_location == onnx.TensorProto.EXTERNAL
        if external and data is None:
            raise ModelLoadError(f"{where}: initializer {tensor.name!r} has external data but the model has no "
                                 f"directory to read it from (load it from its file)")
        array = data.array(tensor) if external else numpy_helper.to_array(tensor)
        value = Value(tensor.name, tensor.data_type, tuple(tensor.dims), array, doc_string=tensor.doc_string)
        values[tensor.name] = value
        graph.initializers[tensor.name] = value
    for info in proto.input:
        value = value_named(info.name)
        apply_value_info(value, info)
        graph.inputs.append(value)
    for node_proto in proto.node:
        inputs = [value_named(name) if name else None for name in node_proto.input]
        outputs = []
        for name in node_proto.output:
            if not name:
                outputs.append(None)
            elif name in values and (values[name].producer() or values[name].const is not None
                                      or values[name] in graph.inputs):
                raise ModelLoadError(f"{where}: value {name!r} is produced twice (invalid SSA graph)")
            else:
                outputs.append(value_named(name))
        attrs = {a.name: _attr_to_python(a) for a in node_proto.attribute}
        attr_types = {a.name: a.type for a in node_proto.attribute}
        captures = [value_named(n) for n in captured_names(attrs)]
        node = Node(node_proto.op_type, inputs, outputs, attrs=attrs, domain=node_proto.domain,
                    name=node_proto.name, doc_string=node_proto.doc_string, attr_types=attr_types,
                    captures=captures)
        graph.append(node)
    for info in proto.value_info:
        value = value_named(info.name)
        apply_value_info(value, info)
        graph.value_info[info.name] = value
    for info in proto.output:
        value = value_named(info.name)
        apply_value_info(value, info)
        graph.outputs.append(value)
    return graph


def from_proto(proto: onnx.ModelProto, where: str = "<model>", data: DataFiles | None = None) -> Model:
    """Build the IR from a ModelProto: external data of the main graph's initializers is mapped from
    ``data``; any other external data must already be loaded."""
    if len(proto.training_info):
        raise UnsupportedModelError(f"{where}: models with training_info are not supported")
    graph = _graph_from_proto(proto.graph, where, data)
    opsets = {op.domain: op.version for op in proto.opset_import}
    model = Model(graph, opsets)
    model.ir_version = proto.ir_version
    model.producer_name = proto.producer_name
    model.producer_version = proto.producer_version
    model.domain = proto.domain
    model.model_version = proto.model_version
    model.doc_string = proto.doc_string
    model.metadata = {p.key: p.value for p in proto.metadata_props}
    for function in proto.functions:
        copy = onnx.FunctionProto()
        copy.CopyFrom(function)
        model.functions.append(copy)
    return model


# ---------------------------------------------------------------------------------------------
# IR -> proto


def _value_info(value: Value, symbols: set[str] | None = None) -> onnx.ValueInfoProto:
    """``value``'s ValueInfoProto; with ``symbols``, a symbolic dimension not among them is written unknown."""
    info = onnx.ValueInfoProto(name=value.name, doc_string=value.doc_string)
    if value.type_proto is not None:
        info.type.CopyFrom(value.type_proto)
    elif value.dtype is not None:
        tensor = info.type.tensor_type
        tensor.elem_type = value.dtype
        if value.shape is not None:
            tensor.shape.SetInParent()
            for dim in value.shape:
                entry = tensor.shape.dim.add()
                if isinstance(dim, (int, np.integer)):
                    entry.dim_value = int(dim)
                elif isinstance(dim, str) and (symbols is None or dim in symbols):
                    entry.dim_param = dim
    return info


def _attr_to_proto(name: str, value: Any, attr_type: int | None) -> AttributeProto:
    if isinstance(value, AttributeProto):
        return value
    if isinstance(value, np.ndarray):
        return onnx.helper.make_attribute(name, numpy_helper.from_array(value))
    if isinstance(value, list) and value and isinstance(value[0], np.ndarray):
        return onnx.helper.make_attribute(name, [numpy_helper.from_array(v) for v in value])
    if isinstance(value, (np.integer, np.floating)):
        value = value.item()
    # strings were decoded with surrogateescape (attributes may hold bytes that are not UTF-8):
    # encode them the same way, which onnx.helper's plain UTF-8 encoding refuses
    if isinstance(value, str):
        value = _encode(value)
    elif isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        value = [_encode(v) for v in value]
    return onnx.helper.make_attribute(name, value, attr_type=attr_type)


def _encode(text: str) -> bytes:
    return text.encode("utf-8", errors="surrogateescape")


def _node_to_proto(node: Node) -> onnx.NodeProto:
    proto = onnx.NodeProto(
        op_type=node.op_type,
        domain=node.domain,
        name=node.name,
        doc_string=node.doc_string,
        input=[v.name if v is not None else "" for v in node.inputs],
        output=[v.name if v is not None else "" for v in node.outputs],
    )
    for name, value in node.attrs.items():
        proto.attribute.append(_attr_to_proto(name, value, node.attr_types.get(name)))
    return proto


def _tensor_proto(value: Value, with_data: bool = True, writer: TensorWriter | None = None) -> onnx.TensorProto:
    if not with_data:  # type and dims only (for analyses that never read the values)
        return onnx.TensorProto(name=value.name, data_type=value.dtype, dims=value.const.shape,
                                data_location=onnx.TensorProto.DEFAULT)
    if writer is not None and value.dtype == onnx.helper.np_dtype_to_tensor_dtype(value.const.dtype):
        return writer.add(onnx.TensorProto(name=value.name, data_type=value.dtype, dims=value.const.shape,
                                           doc_string=value.doc_string), value.const)
    tensor = numpy_helper.from_array(value.const, value.name)
    if value.dtype is not None and tensor.data_type != value.dtype:
        tensor = onnx.helper.make_tensor(value.name, value.dtype, value.const.shape,
                                         value.const.flatten().tolist())
    tensor.doc_string = value.doc_string
    return tensor


def _graph_to_proto(graph: Graph, include_data: Callable[[Value], bool] | None = None,
                    writer: TensorWriter | None = None, interface_symbols_only: bool = False) -> onnx.GraphProto:
    proto = onnx.GraphProto(name=graph.name, doc_string=graph.doc_string)
    for key, val in graph.metadata.items():
        proto.metadata_props.add(key=key, value=val)
    proto.input.extend(_value_info(v) for v in graph.inputs)
    proto.output.extend(_value_info(v) for v in graph.outputs)
    proto.initializer.extend(_tensor_proto(v, include_data is None or include_data(v), writer)
                             for v in graph.initializers.values())
    proto.node.extend(_node_to_proto(n) for n in graph)
    boundary = {id(v) for v in graph.inputs} | {id(v) for v in graph.outputs}
    named = ({d for v in graph.inputs + graph.outputs for d in v.shape or () if isinstance(d, str)}
             if interface_symbols_only else None)
    for value in graph.values():
        if id(value) in boundary or value.const is not None:
            continue
        if value.dtype is not None or value.type_proto is not None:
            proto.value_info.append(_value_info(value, named))
    return proto


def to_proto(model: Model, include_data: Callable[[Value], bool] | None = None,
             writer: TensorWriter | None = None, *, interface_symbols_only: bool = False) -> onnx.ModelProto:
    """Serialize the IR into a ModelProto (all tensor data inline, or with ``writer`` the main graph's
    initializers of 1 KiB and more streamed into its data file as external data).

    ``include_data(value)`` False leaves an initializer's data out (type and dims stay): for
    analyses such as shape inference that never read weights. Such a proto is not a valid model.
    ``interface_symbols_only``: the main graph's ``value_info`` keeps only the symbolic dimensions that
    its inputs and outputs name, as every model that leaves the compiler (saved, or run by onnxruntime)
    does (see the module docstring).
    """
    proto = onnx.ModelProto(
        ir_version=model.ir_version,
        producer_name=model.producer_name,
        producer_version=model.producer_version,
        domain=model.domain,
        model_version=model.model_version,
        doc_string=model.doc_string,
    )
    for domain, version in model.opset_imports.items():
        proto.opset_import.add(domain=domain, version=version)
    for key, val in model.metadata.items():
        proto.metadata_props.add(key=key, value=val)
    proto.graph.CopyFrom(_graph_to_proto(model.graph, include_data, writer, interface_symbols_only))
    proto.functions.extend(model.functions)
    return proto


SHAPE_DATA_ELEMENTS = 1024
"""Initializers up to this many elements may be shape or axis data that graph tools read (shape inference,
the version converter's adapters); larger ones are weights they only need the type and dims of."""

_KEPT = "qcompiler:kept-in-memory"


def is_shape_data(value: Value) -> bool:
    """Whether a tool that rewrites or analyses the graph may need ``value``'s data
    (see :data:`SHAPE_DATA_ELEMENTS`)."""
    return value.const.size <= SHAPE_DATA_ELEMENTS


def weightless_proto(model: Model, keep: Callable[[Value], bool] | None = None) -> onnx.ModelProto:
    """``model`` as a ModelProto whose weights (initializers past :data:`SHAPE_DATA_ELEMENTS`, except those
    ``keep`` names) are left out: type, dims and an external-data marker only, so a tool that rewrites the
    graph (the version converter, graphsurgeon's constant folding) runs on a copy without the weights;
    :func:`from_weightless` takes them back from ``model`` without a copy. A model of gigabytes would
    otherwise go through protobuf and the tool several times whole."""
    def with_data(value: Value) -> bool:
        return is_shape_data(value) or (keep is not None and keep(value))

    proto = to_proto(model, include_data=with_data)
    for tensor in proto.graph.initializer:
        value = model.graph.initializers[tensor.name]
        if not with_data(value):
            tensor.data_location = onnx.TensorProto.EXTERNAL
            tensor.external_data.add(key="location", value=_KEPT)
            tensor.doc_string = value.doc_string
    return proto


class _Kept:
    """The arrays :func:`weightless_proto` left out, handed back by name (``from_proto``'s ``data``)."""

    def __init__(self, model: Model, read_only: bool):
        self.model, self.read_only = model, read_only

    def array(self, tensor: onnx.TensorProto) -> np.ndarray:
        if external_location(tensor)[0] != _KEPT or tensor.name not in self.model.graph.initializers:
            raise ModelLoadError(f"initializer {tensor.name!r} has external data of its own")
        array = self.model.graph.initializers[tensor.name].const
        if self.read_only:
            array = array.view()
            array.flags.writeable = False
        return array


def from_weightless(proto: onnx.ModelProto, model: Model, where: str = "<model>", read_only: bool = False) -> Model:
    """The IR of ``proto``, a :func:`weightless_proto` of ``model`` that a tool rewrote: each weight left out
    is ``model``'s array of the same name (shared, not copied; with ``read_only``, as a view that refuses
    writes)."""
    return from_proto(proto, where, data=_Kept(model, read_only))


# ---------------------------------------------------------------------------------------------
# files


def _read_proto(path: Path) -> tuple[onnx.ModelProto, os.stat_result]:
    """The ModelProto at ``path`` without its external data, and the status of the file read."""
    if not path.exists():
        raise ModelLoadError(f"{path}: no such file")
    if path.is_dir():
        raise ModelLoadError(f"{path}: is a directory, expected an .onnx file")
    try:
        with open(path, "rb") as stream:
            status = os.fstat(stream.fileno())
            proto = onnx.load(stream, load_external_data=False)
    except Exception as exc:  # protobuf raises DecodeError and others
        raise ModelLoadError(f"{path}: not a readable ONNX model ({type(exc).__name__}: {exc})") from exc
    if not proto.HasField("graph") or not proto.opset_import:
        raise ModelLoadError(f"{path}: not an ONNX model (no graph or no opset_import; truncated or wrong file?)")
    return proto, status


def _load_nested_external_data(proto: onnx.ModelProto, directory: Path) -> None:
    """Load into memory the external data of tensors other than the main graph's initializers
    (node attributes, subgraphs, functions: kept as protos, and small in practice)."""
    from onnx.external_data_helper import (_get_attribute_tensors, _get_initializer_tensors_from_graph,
                                           _recursive_attribute_processor, load_external_data_for_tensor,
                                           uses_external_data)

    subgraph_initializers = (tensor for node in proto.graph.node for attribute in node.attribute
                             for tensor in _recursive_attribute_processor(attribute, _get_initializer_tensors_from_graph))
    for tensor in itertools.chain(subgraph_initializers, _get_attribute_tensors(proto)):
        if uses_external_data(tensor):
            load_external_data_for_tensor(tensor, str(directory))
            tensor.data_location = onnx.TensorProto.DEFAULT
            del tensor.external_data[:]


def load_proto(path: str | os.PathLike) -> onnx.ModelProto:
    """Read an ONNX file with all its external data in memory (for tools that need one proto; a model
    past 2 GB cannot be one). :func:`load` maps the data instead."""
    path = Path(path)
    proto, _ = _read_proto(path)
    try:
        onnx.load_external_data_for_model(proto, str(path.parent))
    except Exception as exc:
        raise ModelLoadError(f"{path}: cannot read its external data ({exc})") from exc
    return proto


LOAD_ATTEMPTS = 50
"""How many times :func:`load` reads a file that concurrent saves keep replacing before it gives up."""


def load(path: str | os.PathLike) -> Model:
    """Load an ONNX file into the IR, its external initializers memory-mapped (see the module docstring).

    When the file is replaced by a concurrent save between reading the ``.onnx`` and opening its data
    (whose old data file that save deletes), the new pair is read instead, after a pause that grows by a
    millisecond each time. A save names its data file afresh (``qcompiler.ir.external_data``), so a pair
    was replaced exactly when the ``.onnx`` read again names other data files; the file's inode says
    nothing, as a later save's file can be given the inode of the one it replaced."""
    path = Path(path)
    failed: tuple[set[str], ModelLoadError] | None = None
    for attempt in range(1, LOAD_ATTEMPTS + 1):
        proto, _ = _read_proto(path)
        files = data_files(proto)
        if failed is not None and files == failed[0]:
            raise failed[1]  # the same pair as before: not a concurrent save
        try:
            try:
                _load_nested_external_data(proto, path.parent)
            except Exception as exc:
                raise ModelLoadError(f"{path}: cannot read its external data ({exc})") from exc
            return from_proto(proto, where=str(path), data=DataFiles(path.parent, str(path)))
        except ModelLoadError as exc:
            if not files:
                raise
            failed = files, exc
        time.sleep(attempt / 1000)
    raise failed[1]


def tensor_bytes(model: Model) -> int:
    """Bytes of the main graph's initializers."""
    return sum(v.const.nbytes for v in model.graph.initializers.values())


EXTERNAL_DATA_BYTES = PROTOBUF_LIMIT - (64 << 20)
"""Tensor bytes from which a model is saved with external data."""

IN_MEMORY_BYTES = 256 << 20
"""Tensor bytes up to which a model is handed to onnxruntime, or kept aside, serialized in memory; a
larger one goes through a scratch file with external data (one more copy of hundreds of megabytes in
memory costs more than writing it: the serialized bytes, and onnxruntime's parse of them)."""


def save_proto(proto: onnx.ModelProto, path: str | os.PathLike) -> None:
    """Write a ModelProto (under 2 GB, all data inline) atomically, replacing any previous pair at ``path``."""
    path = _checked_destination(path)
    replace_pair(path, lambda stream, _: stream.write(proto.SerializeToString()), external=False)


def _checked_destination(path: str | os.PathLike) -> Path:
    path = Path(path)
    if not path.parent.is_dir():
        raise ModelSaveError(f"{path}: directory {path.parent} does not exist")
    if path.is_dir():
        raise ModelSaveError(f"{path}: is a directory")
    return path


def write_atomically(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` as :func:`save_proto` writes a model: through a temporary file
    in the same directory, renamed into place, so a failure leaves no partial file. An ``OSError``
    (unwritable directory, disk full) is raised as a :class:`ModelSaveError`: a one-line user error."""
    path = Path(path)
    try:
        handle, staged = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        raise ModelSaveError(f"{path}: cannot write in {path.parent} ({exc.strerror or exc})") from exc
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            stream.write(text)
        os.chmod(staged, file_mode(path))
        os.replace(staged, path)
    except BaseException as exc:
        Path(staged).unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise ModelSaveError(f"{path}: cannot write ({exc.strerror or exc})") from exc
        raise


def save(model: Model, path: str | os.PathLike, *, external_data: bool | None = None) -> None:
    """Write the IR to an ONNX file atomically: with its tensors streamed into a data file beside it when
    they come near 2 GB or when asked, the pair replacing any previous one as a pair (see the module)."""
    path = _checked_destination(path)
    if external_data is None:
        external_data = tensor_bytes(model) > EXTERNAL_DATA_BYTES

    def write(stream, writer: TensorWriter | None) -> None:
        if writer is None:
            write_inline(model, stream)
        else:
            stream.write(to_proto(model, writer=writer, interface_symbols_only=True).SerializeToString())

    replace_pair(path, write, external=external_data)


_GRAPH_FIELD = 0x3A  # ModelProto.graph: field 7, length-delimited
_INITIALIZER_FIELD = 0x2A  # GraphProto.initializer: field 5
_RAW_DATA_FIELD = 0x4A  # TensorProto.raw_data: field 9


def _varint(number: int) -> bytes:
    out = bytearray()
    while True:
        byte, number = number & 0x7F, number >> 7
        out.append(byte | (0x80 if number else 0))
        if not number:
            return bytes(out)


def write_inline(model: Model, stream) -> None:
    """Write ``model`` as one ``.onnx`` (all data inline) without building it in memory.

    Protobuf merges repeated occurrences of an embedded message field and appends repeated fields, so
    the file is the model without initializers followed by, per initializer, a ``graph { initializer
    { ... } }`` fragment; the raw data of a large tensor is written straight from its array (or copied
    file to file when mapped). Parsers read the same ModelProto as ``to_proto(model)``."""
    header = to_proto(model, include_data=lambda v: False, interface_symbols_only=True)
    del header.graph.initializer[:]
    stream.write(header.SerializeToString())
    del header
    raw = TensorWriter(stream, "")
    for value in model.graph.initializers.values():
        streamed = value.const.nbytes >= MAP_BYTES and value.dtype == onnx.helper.np_dtype_to_tensor_dtype(
            value.const.dtype) and value.dtype != onnx.TensorProto.STRING
        if not streamed:
            tensor = _tensor_proto(value).SerializeToString()
            entry = bytes([_INITIALIZER_FIELD]) + _varint(len(tensor)) + tensor
            stream.write(bytes([_GRAPH_FIELD]) + _varint(len(entry)) + entry)
            continue
        head = onnx.TensorProto(name=value.name, data_type=value.dtype, dims=value.const.shape,
                                doc_string=value.doc_string).SerializeToString()
        head += bytes([_RAW_DATA_FIELD]) + _varint(value.const.nbytes)
        tensor_bytes = len(head) + value.const.nbytes
        entry_head = bytes([_INITIALIZER_FIELD]) + _varint(tensor_bytes)
        stream.write(bytes([_GRAPH_FIELD]) + _varint(len(entry_head) + tensor_bytes) + entry_head + head)
        raw.raw(value.const)


def write_model(model: Model, path: Path, extra_outputs: list[str] = ()) -> None:
    """Write ``model`` to a fresh ``path`` (a scratch directory nobody else reads) with external data in
    ``path.name + ".data"``, ``extra_outputs`` added to the graph's outputs: what onnxruntime loads by path."""
    with open(path.with_name(path.name + ".data"), "xb", buffering=0) as stream:
        proto = to_proto(model, writer=TensorWriter(stream, path.name + ".data"), interface_symbols_only=True)
    _add_outputs(proto, extra_outputs)
    path.write_bytes(proto.SerializeToString())


def _add_outputs(proto: onnx.ModelProto, names: list[str]) -> None:
    known = {o.name for o in proto.graph.output}
    proto.graph.output.extend(onnx.ValueInfoProto(name=n) for n in dict.fromkeys(names) if n not in known)


@contextlib.contextmanager
def onnxruntime_model(model: Model, extra_outputs: list[str] = ()) -> Iterator[bytes | str]:
    """What ``onnxruntime.InferenceSession`` takes for ``model`` (with ``extra_outputs`` exposed): the
    serialized proto, or past :data:`IN_MEMORY_BYTES` of tensors the path of a copy with external data
    in a scratch directory, removed when the block ends (a session made inside the block keeps working)."""
    if tensor_bytes(model) <= IN_MEMORY_BYTES:
        proto = to_proto(model, interface_symbols_only=True)
        _add_outputs(proto, list(extra_outputs))
        yield proto.SerializeToString()
        return
    with tempfile.TemporaryDirectory(prefix="qcompiler-") as scratch:
        path = Path(scratch) / "model.onnx"
        write_model(model, path, list(extra_outputs))
        yield str(path)


class SavedModel:
    """A model kept aside for later (the float reference, the original model): its serialized bytes, or,
    past :data:`IN_MEMORY_BYTES` of tensors, a file with external data in a scratch directory that goes
    with the object, so a large model is never held twice in memory (tensors mapped from a file are
    copied file to file)."""

    def __init__(self, model: Model):
        self.nbytes = tensor_bytes(model)
        """Bytes it takes as a file (what the model's size is compared on)."""
        if self.nbytes <= IN_MEMORY_BYTES:
            self.source: bytes | str = to_proto(model, interface_symbols_only=True).SerializeToString()
            self.nbytes = len(self.source)
            return
        scratch = tempfile.mkdtemp(prefix="qcompiler-saved-")
        self._cleanup = weakref.finalize(self, shutil.rmtree, scratch, True)
        path = Path(scratch) / "model.onnx"
        write_model(model, path)
        self.source = str(path)
        self.nbytes += path.stat().st_size

    def load(self, where: str) -> Model:
        """The model as it was kept (a fresh IR; tensors of the file variant are mapped)."""
        if isinstance(self.source, bytes):
            return from_proto(onnx.load_from_string(self.source), where)
        return load(self.source)


def _varint_bytes(number: int) -> int:
    return max(1, (number.bit_length() + 6) // 7)


def serialized_bytes(model: Model) -> int:
    """``to_proto(model).ByteSize()``, computed without serializing the tensors of 1 MiB and more
    (their raw data is counted, not copied): the size of the model as one ``.onnx`` file, also for a
    model past 2 GB that can only be written with external data."""
    def counted(value: Value) -> bool:  # tensors serialized as raw data of exactly their bytes
        return value.const.nbytes >= MAP_BYTES and value.dtype == onnx.helper.np_dtype_to_tensor_dtype(
            value.const.dtype) and value.dtype != onnx.TensorProto.STRING

    proto = to_proto(model, include_data=lambda v: not counted(v))
    graph_before = proto.graph.ByteSize()
    extra = 0
    for tensor, value in zip(proto.graph.initializer, model.graph.initializers.values()):
        if counted(value):
            tensor.ClearField("data_location")
            tensor.doc_string = value.doc_string  # as _tensor_proto writes it
            without = tensor.ByteSize()
            with_data = without + 1 + _varint_bytes(value.const.nbytes) + value.const.nbytes
            extra += with_data + _varint_bytes(with_data) - without - _varint_bytes(without)
    graph_after = graph_before + extra
    return proto.ByteSize() + graph_after - graph_before + _varint_bytes(graph_after) - _varint_bytes(graph_before)
