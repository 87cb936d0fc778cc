"""float16 and bfloat16 source models: upcast to float32 compute (``upcast-float32``), interface kept,
quantized like float32 models; calibration feeds follow the model's input types."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import qcompiler
from qcompiler import PassManager, ir
from qcompiler.errors import UserError
from qcompiler.executor.agreement import run_onnxruntime
from qcompiler.passes import UpcastFloat32

RNG = np.random.default_rng(5)
BFLOAT16 = np.dtype(ml_dtypes.bfloat16)


def conv_net(dtype: int, interface: int) -> onnx.ModelProto:
    """Conv -> Relu -> GlobalAveragePool -> Flatten -> Gemm computing in ``dtype``; inputs and outputs of
    type ``interface`` (Casts at the boundary when they differ, as onnxconverter-common's keep_io_types)."""
    np_type = helper.tensor_dtype_to_np_dtype(dtype)
    weights = [numpy_helper.from_array((RNG.standard_normal(s) * 0.3).astype(np_type), n)
               for n, s in (("w", (8, 3, 3, 3)), ("b", (8,)), ("fc", (8, 4)), ("fc_b", (4,)))]
    nodes, x, y = [], "x", "y"
    if interface != dtype:
        nodes.append(helper.make_node("Cast", ["x"], ["x_low"], to=dtype))
        x, y = "x_low", "y_low"
    nodes += [helper.make_node("Conv", [x, "w", "b"], ["c"], pads=[1, 1, 1, 1]),
              helper.make_node("Relu", ["c"], ["r"]),
              helper.make_node("GlobalAveragePool", ["r"], ["p"]),
              helper.make_node("Flatten", ["p"], ["f"]),
              helper.make_node("Gemm", ["f", "fc", "fc_b"], [y])]
    if interface != dtype:
        nodes.append(helper.make_node("Cast", ["y_low"], ["y"], to=interface))
    graph = helper.make_graph(nodes, "net", [helper.make_tensor_value_info("x", interface, [2, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", interface, [2, 4])], weights)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def feeds(dtype: np.dtype, count: int = 4) -> list[dict[str, np.ndarray]]:
    return [{"x": RNG.standard_normal((2, 3, 8, 8)).astype(np.float32).astype(dtype)} for _ in range(count)]


def test_upcast_keeps_the_interface_and_the_outputs():
    model = ir.from_proto(conv_net(TensorProto.FLOAT16, TensorProto.FLOAT16))
    source = ir.to_proto(model)
    PassManager([UpcastFloat32()])(model)
    graph = model.graph
    assert [v.dtype for v in graph.inputs + graph.outputs] == [TensorProto.FLOAT16, TensorProto.FLOAT16]
    inside = [v for v in graph.values() if v not in graph.inputs + graph.outputs]
    assert all(v.const.dtype == np.float32 for v in inside if v.const is not None)
    assert not any(v.dtype in (TensorProto.FLOAT16, TensorProto.BFLOAT16) for v in inside)
    assert [n.op_type for n in graph].count("Cast") == 2
    report = model.plan.reports["upcast"]
    assert report["types"] == ["float16"] and report["boundary_casts"] == 2
    feed = feeds(np.float16, 1)[0]
    upcast, original = run_onnxruntime(model, feed)["y"], run_onnxruntime(ir.from_proto(source), feed)["y"]
    assert upcast.dtype == np.float16
    np.testing.assert_allclose(upcast.astype(np.float32), original.astype(np.float32), rtol=2e-2, atol=2e-2)


def test_float32_interface_casts_become_identities():
    model = ir.from_proto(conv_net(TensorProto.FLOAT16, TensorProto.FLOAT))
    PassManager([UpcastFloat32()])(model)
    assert "Cast" not in [n.op_type for n in model.graph]
    assert [n.op_type for n in model.graph].count("Identity") == 2
    assert model.plan.reports["upcast"]["boundary_casts"] == 0


def test_a_float32_model_is_left_alone():
    model = ir.from_proto(conv_net(TensorProto.FLOAT, TensorProto.FLOAT))
    result = PassManager([UpcastFloat32()])(model)
    assert not any(r.modified for r in result.records) and "upcast" not in model.plan.reports


@pytest.mark.parametrize("dtype, np_type", [(TensorProto.FLOAT16, np.float16), (TensorProto.BFLOAT16, BFLOAT16)])
def test_low_precision_model_compiles_to_int8(tmp_path, dtype, np_type):
    source = conv_net(dtype, TensorProto.FLOAT16 if dtype == TensorProto.FLOAT16 else TensorProto.FLOAT)
    interface = np.float16 if dtype == TensorProto.FLOAT16 else np.float32
    reference = conv_net(TensorProto.FLOAT, TensorProto.FLOAT)  # same weights, read in float32
    for init, low in zip(reference.graph.initializer, source.graph.initializer):
        init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(low).astype(np.float32), low.name))
    path, out = tmp_path / "low.onnx", tmp_path / "low.int8.onnx"
    onnx.save(source, path)
    calib = feeds(interface, 8)
    model = qcompiler.compile(str(path), out, calib=calib, objective="size", target="x86-avx2")
    assert model.plan.reports["upcast"]["types"] == [helper.tensor_dtype_to_string(dtype).split(".")[-1].lower()]
    written = onnx.load(out)
    assert {i.type.tensor_type.elem_type for i in [*written.graph.input, *written.graph.output]} == \
        {helper.np_dtype_to_tensor_dtype(np.dtype(interface))}
    assert sum(n.op_type == "QuantizeLinear" for n in written.graph.node) >= 2
    x = calib[0]
    got = run_onnxruntime(ir.from_proto(written), x)["y"].astype(np.float32)
    want = run_onnxruntime(ir.from_proto(reference), {"x": x["x"].astype(np.float32)})["y"]
    assert np.abs(got - want).max() < 0.05 * np.abs(want).max()


def test_float32_feeds_for_a_float16_input_are_refused_before_writing(tmp_path):
    path, out = tmp_path / "half.onnx", tmp_path / "half.int8.onnx"
    onnx.save(conv_net(TensorProto.FLOAT16, TensorProto.FLOAT16), path)
    with pytest.raises(UserError, match="float16"):
        qcompiler.compile(str(path), out, calib=feeds(np.float32), objective="size")
    assert not out.exists()
