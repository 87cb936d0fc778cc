"""Reading and writing ONNX files: ``onnx.ModelProto`` <-> the IR.

The conversion is written against the protobuf directly rather than through onnx-graphsurgeon,
because graphsurgeon's export drops node doc strings, ``metadata_props`` and the model doc string
(checked with onnx-graphsurgeon 0.6.1), and real models keep data there (PP-OCR keeps its character
dictionary in ``metadata_props``). graphsurgeon is used where it is good: constant folding
(``qcompiler.passes.fold_constants``).

What round-trips: node and value names, doc strings, attributes with their types, opset imports,
IR version, producer, ``metadata_props`` of model and graph, ``value_info``, subgraphs of
If/Loop/Scan (kept as opaque GraphProtos), model-local functions (kept as FunctionProtos), and
external data (loaded into memory; a model whose tensors exceed protobuf's 2 GB limit is saved with
external data in a file next to it). Sparse initializers and training info are refused with a
clear message rather than dropped.

Files are written atomically: to a temporary file in the destination directory, then renamed.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from collections.abc import Callable
from typing import Any

import numpy as np
import onnx
from onnx import AttributeProto, numpy_helper

from ..errors import ModelLoadError, ModelSaveError, UnsupportedModelError
from ._core import Graph, Model, Node, Value, captured_names

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


def _graph_from_proto(proto: onnx.GraphProto, where: str) -> Graph:
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
        array = numpy_helper.to_array(tensor)
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


def from_proto(proto: onnx.ModelProto, where: str = "<model>") -> Model:
    """Build the IR from a ModelProto (external data must already be loaded)."""
    if len(proto.training_info):
        raise UnsupportedModelError(f"{where}: models with training_info are not supported")
    graph = _graph_from_proto(proto.graph, where)
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


def _value_info(value: Value) -> onnx.ValueInfoProto:
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
                elif isinstance(dim, str):
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


def _tensor_proto(value: Value, with_data: bool = True) -> onnx.TensorProto:
    if not with_data:  # type and dims only (for analyses that never read the values)
        return onnx.TensorProto(name=value.name, data_type=value.dtype, dims=value.const.shape,
                                data_location=onnx.TensorProto.DEFAULT)
    tensor = numpy_helper.from_array(value.const, value.name)
    if value.dtype is not None and tensor.data_type != value.dtype:
        tensor = onnx.helper.make_tensor(value.name, value.dtype, value.const.shape,
                                         value.const.flatten().tolist())
    tensor.doc_string = value.doc_string
    return tensor


def _graph_to_proto(graph: Graph, include_data: Callable[[Value], bool] | None = None) -> onnx.GraphProto:
    proto = onnx.GraphProto(name=graph.name, doc_string=graph.doc_string)
    for key, val in graph.metadata.items():
        proto.metadata_props.add(key=key, value=val)
    proto.input.extend(_value_info(v) for v in graph.inputs)
    proto.output.extend(_value_info(v) for v in graph.outputs)
    proto.initializer.extend(_tensor_proto(v, include_data is None or include_data(v))
                             for v in graph.initializers.values())
    proto.node.extend(_node_to_proto(n) for n in graph)
    boundary = {id(v) for v in graph.inputs} | {id(v) for v in graph.outputs}
    for value in graph.values():
        if id(value) in boundary or value.const is not None:
            continue
        if value.dtype is not None or value.type_proto is not None:
            proto.value_info.append(_value_info(value))
    return proto


def to_proto(model: Model, include_data: Callable[[Value], bool] | None = None) -> onnx.ModelProto:
    """Serialize the IR into a ModelProto (all tensor data inline).

    ``include_data(value)`` False leaves an initializer's data out (type and dims stay): for
    analyses such as shape inference that never read weights. Such a proto is not a valid model.
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
    proto.graph.CopyFrom(_graph_to_proto(model.graph, include_data))
    proto.functions.extend(model.functions)
    return proto


# ---------------------------------------------------------------------------------------------
# files


def load_proto(path: str | os.PathLike) -> onnx.ModelProto:
    """Read an ONNX file, with external data, turning every failure into a one-line error."""
    path = Path(path)
    if not path.exists():
        raise ModelLoadError(f"{path}: no such file")
    if path.is_dir():
        raise ModelLoadError(f"{path}: is a directory, expected an .onnx file")
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf raises DecodeError and others
        raise ModelLoadError(f"{path}: not a readable ONNX model ({type(exc).__name__}: {exc})") from exc
    if not proto.HasField("graph") or not proto.opset_import:
        raise ModelLoadError(f"{path}: not an ONNX model (no graph or no opset_import; truncated or wrong file?)")
    try:
        onnx.load_external_data_for_model(proto, str(path.parent))
    except Exception as exc:
        raise ModelLoadError(f"{path}: cannot read its external data ({exc})") from exc
    return proto


def load(path: str | os.PathLike) -> Model:
    """Load an ONNX file into the IR."""
    return from_proto(load_proto(path), where=str(path))


def _tensor_bytes(model: Model) -> int:
    return sum(v.const.nbytes for v in model.graph.initializers.values())


def save_proto(proto: onnx.ModelProto, path: str | os.PathLike, *, external_data: bool | None = None) -> None:
    """Write a ModelProto atomically; with external data when asked or when it exceeds 2 GB.

    External data goes to ``<file name>.data`` next to the model. Everything is first written into a
    temporary directory beside the destination, then renamed into place, so a failure leaves no
    partial file. With external data the proto's tensors are moved out of it (it is modified).
    """
    path = Path(path)
    directory = path.parent
    if not directory.is_dir():
        raise ModelSaveError(f"{path}: directory {directory} does not exist")
    if path.is_dir():
        raise ModelSaveError(f"{path}: is a directory")
    if external_data is None:
        external_data = proto.ByteSize() > PROTOBUF_LIMIT
    try:
        staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=directory))
    except OSError as exc:
        raise ModelSaveError(f"{path}: cannot write in {directory} ({exc.strerror})") from exc
    try:
        staged = staging / path.name
        if external_data:
            data_name = path.name + ".data"
            onnx.save_model(proto, str(staged), save_as_external_data=True,
                            all_tensors_to_one_file=True, location=data_name, size_threshold=1024)
            if (staging / data_name).exists():  # not written when every tensor is under 1 KiB
                os.replace(staging / data_name, directory / data_name)
        else:
            staged.write_bytes(proto.SerializeToString())
        os.replace(staged, path)
    except OSError as exc:
        raise ModelSaveError(f"{path}: cannot write ({exc.strerror or exc})") from exc
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def write_atomically(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` as :func:`save_proto` writes a model: through a temporary file
    in the same directory, renamed into place, so a failure leaves no partial file. An ``OSError``
    (unwritable directory, disk full) is raised as a :class:`ModelSaveError`: a one-line user error."""
    path = Path(path)
    try:
        handle, staged = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        raise ModelSaveError(f"{path}: cannot write in {path.parent} ({exc.strerror or exc})") from exc
    umask = os.umask(0)
    os.umask(umask)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            stream.write(text)
        os.chmod(staged, 0o666 & ~umask)  # as open() would create it, not mkstemp's 0600
        os.replace(staged, path)
    except BaseException as exc:
        Path(staged).unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise ModelSaveError(f"{path}: cannot write ({exc.strerror or exc})") from exc
        raise


def save(model: Model, path: str | os.PathLike, *, external_data: bool | None = None) -> None:
    """Write the IR to an ONNX file atomically (external data when over 2 GB or when asked)."""
    if external_data is None:
        external_data = _tensor_bytes(model) > PROTOBUF_LIMIT - (64 << 20)
    save_proto(to_proto(model), path, external_data=external_data)
