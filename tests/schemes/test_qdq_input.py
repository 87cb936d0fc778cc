"""QDQ models as input: ``ingest-qdq`` recovers the float model and the given specs; a model qcompiler
compiled, ingested and compiled again with ``keep_qdq_scales`` carries the same specs; without it the
activations are calibrated again; ``analyze`` analyzes a QDQ model in its own configuration."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import qcompiler
from qcompiler import PassManager, ir
from qcompiler.executor.agreement import run_onnxruntime
from qcompiler.ir.quant import spec_of_qdq
from qcompiler.passes import IngestQDQ

RNG = np.random.default_rng(13)


def conv_net() -> onnx.ModelProto:
    """Conv -> Relu -> Conv -> Add (residual) -> GlobalAveragePool -> Flatten -> Gemm, float32."""
    weights = [numpy_helper.from_array((RNG.standard_normal(s) * 0.3).astype(np.float32), n)
               for n, s in (("w1", (8, 3, 3, 3)), ("b1", (8,)), ("w2", (8, 8, 3, 3)), ("b2", (8,)),
                            ("fc", (8, 4)), ("fc_b", (4,)))]
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
             helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1], name="conv2"),
             helper.make_node("Add", ["c2", "r1"], ["s"], name="add"),
             helper.make_node("GlobalAveragePool", ["s"], ["p"], name="pool"),
             helper.make_node("Flatten", ["p"], ["f"], name="flatten"),
             helper.make_node("Gemm", ["f", "fc", "fc_b"], ["y"], name="fc")]
    graph = helper.make_graph(nodes, "net", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4])], weights)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def feeds(count: int, scale: float = 1.0) -> list[dict[str, np.ndarray]]:
    return [{"x": (RNG.standard_normal((2, 3, 8, 8)) * scale).astype(np.float32)} for _ in range(count)]


def activation_specs(model: onnx.ModelProto) -> list[object]:
    """The spec of every QuantizeLinear, in graph order (the model input's first)."""
    graph = ir.from_proto(model).graph
    return [spec_of_qdq(n) for n in graph if n.op_type == "QuantizeLinear"]


def weight_specs(model: onnx.ModelProto) -> list[object]:
    """The spec of every DequantizeLinear of an 8-bit constant (a weight), ordered by scale."""
    graph = ir.from_proto(model).graph
    specs = [spec_of_qdq(n) for n in graph if n.op_type == "DequantizeLinear" and n.inputs[0].const is not None
             and n.inputs[0].dtype != TensorProto.INT32]
    return sorted(specs, key=lambda spec: spec.scale.tobytes())


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    """(float file, qcompiler's int8 file, calibration feeds)."""
    directory = tmp_path_factory.mktemp("qdq")
    source, quantized = directory / "net.onnx", directory / "net.int8.onnx"
    onnx.save(conv_net(), source)
    calib = feeds(8)
    qcompiler.compile(str(source), quantized, calib=calib, objective="size", target="x86-vnni")
    return source, quantized, calib


def test_ingestion_recovers_the_float_model_and_the_specs(compiled):
    source, quantized, calib = compiled
    written = onnx.load(quantized)
    model = ir.from_proto(written)
    PassManager([IngestQDQ()])(model)
    assert not any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in model.graph)
    given = model.plan.given
    written_specs = activation_specs(written)  # values renamed: the output's, a clamp's Relu
    given_activations = [spec for name, spec in given.items() if model.find_value(name).const is None]
    assert len(given_activations) == len(written_specs)
    assert all(any(spec == g for g in given_activations) for spec in written_specs)
    assert [n.op_type for n in model.graph].count("Clip") == 1  # conv1's ReLU, absorbed into its quantization
    report = model.plan.reports["ingest_qdq"]
    assert report["activations"] >= 3 and report["weights"] >= 5 and report["left"] == 0
    # the recovered float model computes what the float model computes, within the weights' rounding
    want = run_onnxruntime(ir.from_proto(onnx.load(source)), calib[0])["y"]
    got = run_onnxruntime(model, calib[0])["y"]
    assert np.abs(got - want).max() < 0.02 * np.abs(want).max()


def test_keep_qdq_scales_gives_back_the_same_specs(compiled, tmp_path):
    _, quantized, calib = compiled
    again = tmp_path / "again.onnx"
    other_feeds = feeds(8, scale=3.0)  # other ranges: calibration would choose other scales
    qcompiler.compile(str(quantized), again, calib=other_feeds, objective="size", target="x86-vnni",
                      keep_qdq_scales=True)
    first, second = onnx.load(quantized), onnx.load(again)
    assert activation_specs(second) == activation_specs(first)
    assert weight_specs(second) == weight_specs(first)
    np.testing.assert_array_equal(run_onnxruntime(ir.from_proto(second), calib[0])["y"],
                                  run_onnxruntime(ir.from_proto(first), calib[0])["y"])


def test_without_keep_the_activations_are_calibrated_again(compiled, tmp_path):
    _, quantized, _ = compiled
    again = tmp_path / "again.onnx"
    qcompiler.compile(str(quantized), again, calib=feeds(8, scale=3.0), objective="size", target="x86-vnni")
    first, second = activation_specs(onnx.load(quantized)), activation_specs(onnx.load(again))
    assert len(first) == len(second) and first[0] != second[0]


def test_an_onnxruntime_qdq_model_compiles(tmp_path):
    """onnxruntime's quantize_static output (QDQ, per channel): every pair taken out, re-quantized by qcompiler."""
    quantization = pytest.importorskip("onnxruntime.quantization")
    source, theirs, ours = tmp_path / "net.onnx", tmp_path / "ort.onnx", tmp_path / "ours.onnx"
    onnx.save(conv_net(), source)
    calib = feeds(4)

    class Reader(quantization.CalibrationDataReader):
        def __init__(self):
            self.items = iter(calib)

        def get_next(self):
            return next(self.items, None)

    quantization.quantize_static(str(source), str(theirs), Reader(), quant_format=quantization.QuantFormat.QDQ,
                                 per_channel=True, activation_type=quantization.QuantType.QUInt8,
                                 weight_type=quantization.QuantType.QInt8)
    model = qcompiler.compile(str(theirs), ours, calib=calib, objective="size", target="x86-vnni")
    assert model.plan.reports["ingest_qdq"]["left"] == 0
    want = run_onnxruntime(ir.from_proto(onnx.load(source)), calib[0])["y"]
    got = run_onnxruntime(ir.from_proto(onnx.load(ours)), calib[0])["y"]
    assert np.abs(got - want).max() < 0.1 * np.abs(want).max()


def test_analyze_uses_the_given_scales(compiled):
    from qcompiler.analysis import analyze

    _, quantized, calib = compiled
    report = analyze(str(quantized), calib, target="x86-vnni")
    given = report["given_qdq"]
    assert given["activations"] >= 3 and given["kept"] >= 5 and not given["calibrated"]
    assert {r["name"] for r in report["layers"]} >= {"conv1", "conv2", "fc"}


@pytest.mark.parametrize("keep", [False, True])
def test_compile_command_reports_the_qdq_input(compiled, tmp_path, capsys, keep):
    from qcompiler.cli import main

    _, quantized, calib = compiled
    for index, feed in enumerate(calib[:2]):
        np.savez(tmp_path / f"batch_{index}.npz", **feed)
    out = tmp_path / "out.onnx"
    flags = ["--keep-qdq-scales"] if keep else []
    assert main(["compile", str(quantized), "-o", str(out), "--calib", str(tmp_path), "--objective", "size",
                 "--target", "x86-vnni", "-q", *flags]) == 0
    printed = capsys.readouterr().out
    assert "qdq input:" in printed and ("its scales kept on" in printed) == keep
    assert out.exists()
