"""ONNX files <-> IR: what round-trips, external data, atomic saves, and load errors."""

from __future__ import annotations

import os
import re

import numpy as np
import onnx
import pytest
from onnx import AttributeProto, TensorProto, helper, numpy_helper

from qcompiler import ir
from qcompiler.errors import ModelLoadError, ModelSaveError, UnsupportedModelError
from qcompiler.ir import external_data
from qcompiler.ir.testing import parse, random_feeds, run_onnxruntime, tensor_text

MODEL_TEXT = """
<ir_version: 9, opset_import: ["" : 17, "com.example" : 1, "ai.onnx.ml" : 3],
 producer_name: "exporter", producer_version: "4.2", domain: "org.example", model_version: 7,
 doc_string: "model doc">
main (float[N,4] x, bool c) => (float[N,4] y, float[N,4] z) <float[4] w = {1, 2, 3, 4}> {
  h = Mul(x, w)
  y = Relu(h)
  z = If(c) <then_branch = th () => (float[N,4] o) { o = Neg(h) },
             else_branch = el () => (float[N,4] o2) { o2 = com.example.Double(h) }>
}

<domain: "com.example", opset_import: ["" : 17]>
Double (a) => (b) {
  b = Add(a, a)
}
"""


def rich_model() -> ir.Model:
    proto = onnx.parser.parse_model(MODEL_TEXT)
    proto.graph.doc_string = "graph doc"
    proto.graph.node[0].name = "scale_node"
    proto.graph.node[0].doc_string = "multiplies by w"
    helper.set_model_props(proto, {
        "character": "\n".join(chr(c) for c in range(0x4E00, 0x4E00 + 6000)),  # a PP-OCR-like dictionary
        "author": "someone",
    })
    proto.graph.metadata_props.add(key="graph_key", value="graph value")
    proto.graph.value_info.append(helper.make_tensor_value_info("h", TensorProto.FLOAT, ["N", 4],
                                                                doc_string="scaled input"))
    onnx.checker.check_model(proto)
    return ir.from_proto(proto)


def assert_same_proto(before: onnx.ModelProto, after: onnx.ModelProto) -> None:
    """The fields the IR promises to keep, compared one by one."""
    for field in ("ir_version", "producer_name", "producer_version", "domain", "model_version", "doc_string"):
        assert getattr(after, field) == getattr(before, field), field
    assert {(o.domain, o.version) for o in after.opset_import} == {(o.domain, o.version) for o in before.opset_import}
    assert list(after.metadata_props) == list(before.metadata_props)
    assert list(after.functions) == list(before.functions)
    graph_b, graph_a = before.graph, after.graph
    assert (graph_a.name, graph_a.doc_string) == (graph_b.name, graph_b.doc_string)
    assert list(graph_a.metadata_props) == list(graph_b.metadata_props)
    assert list(graph_a.input) == list(graph_b.input) and list(graph_a.output) == list(graph_b.output)
    assert list(graph_a.node) == list(graph_b.node)
    assert list(graph_a.initializer) == list(graph_b.initializer)
    infos_b = {i.name: i for i in graph_b.value_info}
    for info in graph_a.value_info:
        if info.name in infos_b:
            assert info == infos_b[info.name]
    assert set(infos_b) <= {i.name for i in graph_a.value_info}


def test_round_trip_keeps_names_docs_metadata_opsets_functions_and_subgraphs():
    model = rich_model()
    original = ir.to_proto(model)
    again = ir.to_proto(ir.from_proto(original))
    assert_same_proto(original, again)
    assert model.metadata["character"].count("\n") == 5999
    assert model.graph.nodes[0].name == "scale_node"
    assert model.graph.nodes[0].doc_string == "multiplies by w"
    assert model.opset_imports == {"": 17, "com.example": 1, "ai.onnx.ml": 3}
    assert (model.producer_name, model.producer_version, model.ir_version) == ("exporter", "4.2", 9)
    assert model.find_value("h").shape == ("N", 4)
    assert model.find_value("h").doc_string == "scaled input"
    assert [f.name for f in model.functions] == ["Double"]


def test_round_trip_through_a_file_runs_the_same(tmp_path):
    model = rich_model()
    path = tmp_path / "m.onnx"
    ir.save(model, path)
    loaded = ir.load(path)
    assert_same_proto(ir.to_proto(model), ir.to_proto(loaded))
    assert ir.format_model(loaded) == ir.format_model(model)
    feeds = random_feeds(model)
    for c in (True, False):  # both branches: the If reads the outer h, the else branch calls the function
        feeds["c"] = np.array(c)
        original = run_onnxruntime(onnx.parser.parse_model(MODEL_TEXT), feeds)
        for expected, actual in zip(original, run_onnxruntime(loaded, feeds)):
            np.testing.assert_array_equal(actual, expected)
    ir.verify(loaded, strict=True)


def test_a_saved_model_keeps_only_the_symbols_its_inputs_and_outputs_name(tmp_path):
    """ONNX shape inference names the length a Reshape computes ``unk__0`` in both inputs of the Add; written
    out, that would tell onnxruntime the two shapes are equal and let it fuse Add + LayerNormalization into
    SkipLayerNormalization, which the source (no such annotation) does not run."""
    import onnxruntime as ort

    from qcompiler.passes import InferShapes

    model = parse("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[B,S,8] x) => (float[B,S2,8] y) <int64[3] shape = {0, -1, 8}, float[8] gamma = {1, 1, 1, 1, 1, 1, 1, 1},
                                             float[8] beta = {0, 0, 0, 0, 0, 0, 0, 0}> {
      r = Reshape(x, shape)
      t = Relu(r)
      a = Add(r, t)
      y = LayerNormalization <axis = -1> (a, gamma, beta)
    }""")
    InferShapes().call(model)
    assert model.find_value("a").shape == ("B", "unk__0", 8)
    ir.save(model, tmp_path / "saved.onnx")
    saved = onnx.load(str(tmp_path / "saved.onnx"))
    dims = {v.name: [d.dim_param or d.dim_value or None for d in v.type.tensor_type.shape.dim]
            for v in saved.graph.value_info}
    assert dims["a"] == dims["r"] == ["B", None, 8]
    assert ir.to_proto(model).graph.value_info  # (in the compiler, the IR keeps every symbol)

    def fused(source) -> int:
        options = ort.SessionOptions()
        options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
        ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
        optimized = onnx.load(options.optimized_model_filepath)
        return sum(n.op_type == "SkipLayerNormalization" for n in optimized.graph.node)

    assert fused(ir.to_proto(model).SerializeToString()) == 1
    assert fused(str(tmp_path / "saved.onnx")) == 0
    with ir.onnxruntime_model(model) as runtime:
        assert fused(runtime) == 0


def test_attributes_of_every_type_round_trip():
    tensor = numpy_helper.from_array(np.array([[1.5, -2.0]], np.float16), "t")
    node = helper.make_node(
        "Custom", ["x"], ["y"], domain="my.domain", name="custom",
        f=0.25, i=-3, s="text", s_bytes=b"\xff\xfenot utf-8", t=tensor,
        g=helper.make_graph([], "empty", [], []),
        floats=[1.0, 2.5], ints=[1, 2, 3], strings=["a", "b"],
        tensors=[numpy_helper.from_array(np.array([7], np.int8)),
                 helper.make_tensor("b16", TensorProto.BFLOAT16, [2], [1.0, 2.5]),
                 helper.make_tensor("i4", TensorProto.INT4, [3], [1, -2, 7])],
        graphs=[helper.make_graph([], "g1", [], []), helper.make_graph([], "g2", [], [])],
        tp=helper.make_tensor_type_proto(TensorProto.FLOAT, [2]),
        sparse=helper.make_sparse_tensor(helper.make_tensor("v", TensorProto.FLOAT, [1], [2.0]),
                                         helper.make_tensor("i", TensorProto.INT64, [1], [1]), [3]),
    )
    for name, kind in [("empty_ints", AttributeProto.INTS), ("empty_floats", AttributeProto.FLOATS),
                       ("empty_strings", AttributeProto.STRINGS), ("empty_tensors", AttributeProto.TENSORS),
                       ("empty_graphs", AttributeProto.GRAPHS)]:
        node.attribute.append(helper.make_attribute(name, [], attr_type=kind))
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("my.domain", 1)])

    model = ir.from_proto(proto)
    attrs = model.graph.nodes[0].attrs
    assert attrs["f"] == 0.25 and attrs["i"] == -3 and attrs["s"] == "text"
    assert attrs["ints"] == [1, 2, 3] and attrs["empty_ints"] == []
    assert attrs["t"].dtype == np.float16

    before = {a.name: a for a in proto.graph.node[0].attribute}
    after = {a.name: a for a in ir.to_proto(model).graph.node[0].attribute}
    assert sorted(after) == sorted(before)
    for name, attr in before.items():
        back = after[name]
        assert back.type == attr.type, name
        if attr.type == AttributeProto.TENSOR:
            tensors = [(attr.t, back.t)]
        elif attr.type == AttributeProto.TENSORS:
            tensors = list(zip(attr.tensors, back.tensors, strict=True))
        else:
            assert back == attr, name
            continue
        for original, copy in tensors:  # same type and values (the encoding may differ)
            assert copy.data_type == original.data_type and list(copy.dims) == list(original.dims)
            np.testing.assert_array_equal(numpy_helper.to_array(copy), numpy_helper.to_array(original))


def test_value_info_with_non_tensor_types_round_trips():
    proto = onnx.parser.parse_model("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[2] x) => (seq(float[2]) s) {
      s = SequenceConstruct(x, x)
    }""")
    model = ir.from_proto(proto)
    back = ir.to_proto(model)
    assert back.graph.output[0].type == proto.graph.output[0].type
    out = run_onnxruntime(model, {"x": np.ones(2, np.float32)})
    assert len(out[0]) == 2


def test_external_data_is_written_next_to_the_model_and_reloads_identically(tmp_path):
    rng = np.random.default_rng(0)
    w = rng.standard_normal((64, 64)).astype(np.float32)  # 16 KiB: above the 1 KiB threshold
    model = parse(f"""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[1,64] x) => (float[1,64] y) <{tensor_text("w", w)}, float[1] small = {{2}}> {{
      m = MatMul(x, w)
      y = Mul(m, small)
    }}""")
    path = tmp_path / "model.onnx"
    ir.save(model, path, external_data=True)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names[0] == "model.onnx" and re.fullmatch(r"model\.onnx\.[0-9a-f]{12}\.data", names[1]) and len(names) == 2
    assert (tmp_path / names[1]).stat().st_size >= w.nbytes
    assert path.stat().st_size < w.nbytes  # the weights are not inline
    loaded = ir.load(path)
    np.testing.assert_array_equal(loaded.graph.initializers["w"].const, w)
    assert ir.format_model(loaded) == ir.format_model(model)
    feeds = random_feeds(model)
    np.testing.assert_array_equal(run_onnxruntime(loaded, feeds)[0], run_onnxruntime(model, feeds)[0])


def test_external_data_requested_for_a_model_without_large_tensors(tmp_path):
    model = parse("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[4] x) => (float[4] y) <float[4] w = {1, 2, 3, 4}> { y = Mul(x, w) }""")
    path = tmp_path / "tiny.onnx"
    ir.save(model, path, external_data=True)
    assert [p.name for p in tmp_path.iterdir()] == ["tiny.onnx"]  # every tensor stays inline
    assert ir.format_model(ir.load(path)) == ir.format_model(model)


def test_save_overwrites_and_leaves_no_temporary_files(tmp_path):
    path = tmp_path / "m.onnx"
    ir.save(rich_model(), path)
    ir.save(rich_model(), path)
    assert [p.name for p in tmp_path.iterdir()] == ["m.onnx"]


def _disk_full(monkeypatch):
    """Make every save fail like a full disk: the data is written, then its fsync fails."""

    def failing_fsync(descriptor):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(external_data.os, "fsync", failing_fsync)


def test_failed_save_to_a_new_path_leaves_nothing(tmp_path, monkeypatch):
    _disk_full(monkeypatch)
    path = tmp_path / "new.onnx"
    with pytest.raises(ModelSaveError, match="No space left"):
        ir.save(rich_model(), path)
    assert list(tmp_path.iterdir()) == []


def test_failed_save_keeps_the_previous_file_intact(tmp_path, monkeypatch):
    path = tmp_path / "m.onnx"
    ir.save(rich_model(), path)
    previous = path.read_bytes()
    _disk_full(monkeypatch)
    with pytest.raises(ModelSaveError, match=str(path)):
        ir.save(parse(CONV), path)
    assert path.read_bytes() == previous
    assert [p.name for p in tmp_path.iterdir()] == ["m.onnx"]


def test_failed_external_data_save_keeps_the_previous_files(tmp_path, monkeypatch):
    path = tmp_path / "m.onnx"
    model = parse(CONV)
    model.graph.add_initializer(ir.Value("big", const=np.zeros(1024, np.float32)))
    ir.save(model, path, external_data=True)
    previous = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    _disk_full(monkeypatch)
    with pytest.raises(ModelSaveError):
        ir.save(model, path, external_data=True)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == previous


def test_save_into_a_missing_directory_or_onto_a_directory(tmp_path):
    with pytest.raises(ModelSaveError, match="does not exist"):
        ir.save(parse(CONV), tmp_path / "missing" / "m.onnx")
    (tmp_path / "d.onnx").mkdir()
    with pytest.raises(ModelSaveError, match="is a directory"):
        ir.save(parse(CONV), tmp_path / "d.onnx")


# -- load errors -----------------------------------------------------------------------------

CONV = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[1,8,8,8] x) => (float[1,8,8,8] y) {
  y = Relu(x)
}"""


def _real_model_bytes() -> bytes:
    model = parse(CONV)
    model.graph.add_initializer(ir.Value("w", const=np.arange(4096, dtype=np.float32)))
    return ir.to_proto(model).SerializeToString()


@pytest.mark.parametrize("kind", ["missing", "directory", "random bytes", "text", "truncated", "empty"])
def test_load_errors_name_the_file(tmp_path, kind):
    path = tmp_path / "input.onnx"
    if kind == "directory":
        path.mkdir()
    elif kind == "random bytes":
        path.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    elif kind == "text":
        path.write_text("this is not an onnx model\n" * 20)
    elif kind == "truncated":
        data = _real_model_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif kind == "empty":
        path.write_bytes(b"")
    before = path.read_bytes() if path.is_file() else None
    with pytest.raises(ModelLoadError) as info:
        ir.load(path)
    assert str(path) in str(info.value)
    assert "\n" not in str(info.value)
    if before is not None:
        assert path.read_bytes() == before


def test_load_error_for_missing_external_data(tmp_path):
    path = tmp_path / "m.onnx"
    model = parse(CONV)
    model.graph.add_initializer(ir.Value("big", const=np.zeros(1024, np.float32)))
    ir.save(model, path, external_data=True)
    next(tmp_path.glob("m.onnx.*.data")).unlink()
    with pytest.raises(ModelLoadError, match="external data"):
        ir.load(path)


def test_loading_does_not_touch_the_file(tmp_path):
    path = tmp_path / "m.onnx"
    ir.save(rich_model(), path)
    data, mtime = path.read_bytes(), os.stat(path).st_mtime_ns
    model = ir.load(path)
    model.graph.nodes[0].name = "changed"
    assert path.read_bytes() == data and os.stat(path).st_mtime_ns == mtime


def test_two_producers_of_one_name_is_a_load_error():
    proto = onnx.parser.parse_model(CONV)
    proto.graph.node.append(helper.make_node("Neg", ["x"], ["y"]))
    with pytest.raises(ModelLoadError, match="'y' is produced twice"):
        ir.from_proto(proto, where="twice.onnx")


def test_sparse_initializers_and_training_info_are_refused_clearly():
    proto = onnx.parser.parse_model(CONV)
    proto.graph.sparse_initializer.append(helper.make_sparse_tensor(
        helper.make_tensor("v", TensorProto.FLOAT, [1], [2.0]), helper.make_tensor("i", TensorProto.INT64, [1], [1]), [3]))
    with pytest.raises(UnsupportedModelError, match="sparse initializers"):
        ir.from_proto(proto)
    proto = onnx.parser.parse_model(CONV)
    proto.training_info.add()
    with pytest.raises(UnsupportedModelError, match="training_info"):
        ir.from_proto(proto)
