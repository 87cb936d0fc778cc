"""The ``weight-only`` pipeline end to end on a small transformer: both output forms run in onnxruntime and
compute the same outputs, every bit width, block size and symmetry; the algorithms; size; options, CLI
flags and user errors; the executor on MatMulNBits models."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import qcompiler
from qcompiler.cli import main
from qcompiler.errors import UserError
from qcompiler.executor.interpreter import Interpreter


def outputs(path, feeds):
    """onnxruntime's outputs; its fusion of blocked DequantizeLinear + MatMul into MatMulNBits is told to
    keep float activations (its default, accuracy level 4, quantizes them to int8), as MatMulNBits
    written with accuracy_level 0 does."""
    options = ort.SessionOptions()
    options.add_session_config_entry("session.qdq_matmulnbits_accuracy_level", "0")
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return [session.run(None, feed) for feed in feeds]


def relative_error(got, reference):
    return max(np.linalg.norm(g - r) / np.linalg.norm(r) for gs, rs in zip(got, reference, strict=True)
               for g, r in zip(gs, rs, strict=True))


def op_types(path):
    return [node.op_type for node in onnx.load(str(path)).graph.node]


@pytest.mark.parametrize("bits, block_size, symmetric", [
    (4, 32, True), (4, 128, False), (4, 0, True), (4, 16, False), (8, 64, True), (8, 256, False), (2, 16, True),
    (2, 32, False)])
def test_both_formats_run_and_agree(tiny_transformer, tmp_path, bits, block_size, symmetric):
    model, _, feeds = tiny_transformer
    paths = {}
    for fmt in ("matmulnbits", "qdq"):
        paths[fmt] = tmp_path / f"{fmt}.onnx"
        qcompiler.compile(model, paths[fmt], pipeline="weight-only", weight_bits=bits, block_size=block_size,
                          symmetric=symmetric, weight_format=fmt)
    nbits, qdq = outputs(paths["matmulnbits"], feeds), outputs(paths["qdq"], feeds)
    for got, expected in zip(nbits, qdq, strict=True):
        for a, b in zip(got, expected, strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4 * np.abs(b).max())
    # every linear layer became MatMulNBits, the tied Gemm head included, and the embedding Gather of its
    # table GatherBlockQuantized; the qdq form has one blocked DequantizeLinear of the table for both
    nbits_ops = op_types(paths["matmulnbits"])
    assert nbits_ops.count("MatMulNBits") == 6 and nbits_ops.count("GatherBlockQuantized") == 1
    assert "DequantizeLinear" not in nbits_ops and "Gather" not in nbits_ops
    qdq_graph = onnx.load(str(paths["qdq"])).graph
    assert "MatMulNBits" not in op_types(paths["qdq"])
    dequantized = [n for n in qdq_graph.node if n.op_type == "DequantizeLinear"]
    table = [n for n in dequantized if {c.op_type for c in qdq_graph.node if n.output[0] in c.input} == {"Gather", "Gemm"}]
    assert len(table) == 1
    error = relative_error(nbits, outputs(model, feeds))
    assert error < {2: 2.0, 4: 0.35, 8: 0.02}[bits]  # 2 bits: three or four levels per block


def test_packing_in_column_chunks_writes_the_same_file(tiny_transformer, tmp_path, monkeypatch):
    """MatMulNBits/GatherBlockQuantized weights quantized a few columns at a time (what keeps a big table's
    temporaries small) are byte for byte those quantized at once."""
    from qcompiler.weight_only import matmulnbits

    model, _, _ = tiny_transformer
    for name, columns in (("whole", 1 << 30), ("chunks", 5)):
        monkeypatch.setattr(matmulnbits, "COLUMNS_AT_ONCE", columns)
        for symmetric in (True, False):
            qcompiler.compile(model, tmp_path / f"{name}-{symmetric}.onnx", pipeline="weight-only", weight_bits=4,
                              block_size=16, symmetric=symmetric)
    for symmetric in (True, False):
        assert (tmp_path / f"whole-{symmetric}.onnx").read_bytes() == (tmp_path / f"chunks-{symmetric}.onnx").read_bytes()


def test_four_bit_model_is_under_a_third_of_fp32(tiny_transformer, tmp_path):
    model, _, _ = tiny_transformer
    for fmt in ("matmulnbits", "qdq"):
        out = tmp_path / f"{fmt}.onnx"
        qcompiler.compile(model, out, pipeline="weight-only", block_size=32, weight_format=fmt)
        assert out.stat().st_size < 0.3 * model.stat().st_size


@pytest.mark.parametrize("method", ["hqq", "awq", "gptq"])
def test_methods_beat_round_to_nearest(tiny_transformer, tmp_path, method):
    model, calib, feeds = tiny_transformer
    reference = outputs(model, feeds)
    errors = {}
    for name in ("rtn", method):
        out = tmp_path / f"{name}.onnx"
        qcompiler.compile(model, out, pipeline="weight-only", block_size=32, weight_method=name,
                          calib=calib if name in ("awq", "gptq") else None)
        errors[name] = relative_error(outputs(out, feeds), reference)
    assert errors[method] < errors["rtn"]


def test_awq_folds_or_inserts_its_scales(tiny_transformer, tmp_path):
    model, calib, feeds = tiny_transformer
    out = tmp_path / "awq.onnx"
    qcompiler.compile(model, out, pipeline="weight-only", calib=calib, weight_method="awq", weight_format="qdq")
    graph = onnx.load(str(out)).graph
    # ln feeds q/k only: 1/s folds into the LayerNorm; h (also read by the residual Add), r (a Relu's
    # output) and out (also reshaped for the tied head) get a Mul each, next to the model's own two Muls
    assert sum(n.op_type == "Mul" for n in graph.node) == 2 + 3
    layer_norm = next(n for n in graph.node if n.op_type == "LayerNormalization")
    gamma = next(t for t in graph.initializer if t.name == layer_norm.input[1])
    assert not np.allclose(onnx.numpy_helper.to_array(gamma), 1.5)


def test_executor_runs_matmulnbits_models(tiny_transformer, tmp_path):
    model, _, feeds = tiny_transformer
    out = tmp_path / "nbits.onnx"
    qcompiler.compile(model, out, pipeline="weight-only", block_size=32, symmetric=False)
    ours = Interpreter(out).run(feeds[0])
    theirs = outputs(out, feeds[:1])[0]
    for name, expected in zip(("logits", "tied_logits"), theirs, strict=True):
        np.testing.assert_allclose(ours[name], expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())


@pytest.mark.parametrize("fields, pattern", [
    ({"weight_method": "awq"}, "needs calibration data"),
    ({"weight_method": "gptq"}, "needs calibration data"),
    ({"weight_bits": 3}, "weight_bits must be one of"),
    ({"block_size": 24}, "power of two"),
    ({"block_size": 8}, "power of two"),
    ({"weight_format": "gguf"}, "unknown weight_format"),
    ({"weight_format": "qdq", "int8_activations": True}, "needs weight_format 'matmulnbits'"),
])
def test_user_errors(tiny_transformer, tmp_path, fields, pattern):
    model, _, _ = tiny_transformer
    with pytest.raises(UserError, match=pattern):
        qcompiler.compile(model, tmp_path / "out.onnx", pipeline="weight-only", **fields)
    assert not (tmp_path / "out.onnx").exists()


def test_other_pipelines_refuse_weight_only_options(tiny_transformer, tmp_path):
    model, calib, _ = tiny_transformer
    with pytest.raises(UserError, match="does not take weight_bits"):
        qcompiler.compile(model, tmp_path / "out.onnx", pipeline="int8", calib=calib, weight_bits=8)


def test_cli_flags(tiny_transformer, tmp_path, capsys):
    model, _, feeds = tiny_transformer
    out = tmp_path / "cli.onnx"
    status = main(["compile", str(model), "-o", str(out), "--pipeline", "weight-only", "--bits", "8", "--block-size",
                   "0", "--asymmetric", "--method", "hqq", "--weight-format", "qdq", "-q"])
    assert status == 0
    integers = [t for t in onnx.load(str(out)).graph.initializer if t.data_type == onnx.TensorProto.UINT8]
    assert integers  # asymmetric: unsigned weights with zero points
    assert relative_error(outputs(out, feeds), outputs(model, feeds)) < 0.02


def test_int8_activations_flag_writes_accuracy_level_4(tiny_transformer, tmp_path):
    """``--int8-activations``: every MatMulNBits has accuracy_level 4 (onnxruntime's int8-activation kernels),
    and its outputs stay close to the float-activation model's."""
    model, _, feeds = tiny_transformer
    paths = {flag: tmp_path / f"{flag or 'float'}.onnx" for flag in ("", "--int8-activations")}
    for flag, out in paths.items():
        assert main(["compile", str(model), "-o", str(out), "--pipeline", "weight-only", "--block-size", "16", "-q",
                     *([flag] if flag else [])]) == 0
    levels = {a.i for n in onnx.load(str(paths["--int8-activations"])).graph.node if n.op_type == "MatMulNBits"
              for a in n.attribute if a.name == "accuracy_level"}
    assert levels == {4}
    assert relative_error(outputs(paths["--int8-activations"], feeds), outputs(paths[""], feeds)) < 0.05


def test_float_zero_points_run_in_onnxruntime_and_beat_integer_ones(tiny_transformer, tmp_path):
    """``--float-zero-points``: each MatMulNBits keeps packed uint8 zero points (onnxruntime's fast kernels)
    and its output gets the correction ``(A · E) · Δ`` of the rounded part subtracted, except the tied table's,
    which keeps integer zero points (GatherBlockQuantized takes no float ones); onnxruntime and the executor
    agree, and HQQ's error is below the integer-zero-point one."""
    model, _, feeds = tiny_transformer
    reference = outputs(model, feeds)
    errors = {}
    for flag in ("", "--float-zero-points"):
        out = tmp_path / f"hqq{flag}.onnx"
        assert main(["compile", str(model), "-o", str(out), "--pipeline", "weight-only", "--block-size", "32",
                     "--asymmetric", "--method", "hqq", "-q", *([flag] if flag else [])]) == 0
        errors[flag] = relative_error(outputs(out, feeds), reference)
    graph = onnx.load(str(out)).graph
    types = {t.name: t.data_type for t in graph.initializer}
    readers = {name: [n.op_type for n in graph.node if name in n.input] for n in graph.node for name in n.output}
    nbits = [node for node in graph.node if node.op_type == "MatMulNBits"]
    assert all(types[node.input[3]] == onnx.TensorProto.UINT8 for node in nbits)
    corrected = {node.input[1].startswith("table"): readers[node.output[0]] == ["Sub"] for node in nbits}
    assert corrected == {True: False, False: True}  # the tied head alone is uncorrected
    assert errors["--float-zero-points"] < errors[""]
    ours = Interpreter(out).run(feeds[0])
    for name, expected in zip(("logits", "tied_logits"), outputs(out, feeds[:1])[0], strict=True):
        np.testing.assert_allclose(ours[name], expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())


def test_float_zero_point_correction_is_exact():
    """``MatMulNBits(integer zero points) - (A · E) · Δ`` computes ``A · W`` with ``W = (q - z) · s`` for the float
    ``z``, a partial last block included (K = 80, blocks of 32), in onnxruntime."""
    from qcompiler.ir import Model
    from qcompiler.ir.serde import from_proto, to_proto
    from qcompiler.weight_only.layers import find_layers, rtn, weight_scheme
    from qcompiler.weight_only.matmulnbits import lower_to_matmulnbits

    rng = np.random.default_rng(3)
    w = rng.standard_normal((80, 24)).astype(np.float32)
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("MatMul", ["a", "w"], ["y"])], "g",
        [onnx.helper.make_tensor_value_info("a", onnx.TensorProto.FLOAT, [5, 80])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [5, 24])], [onnx.numpy_helper.from_array(w, "w")])
    model: Model = from_proto(onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 21)]))
    grid, spec = rtn(w, weight_scheme(4, 32, False, float_zero_point=True))
    (layer,) = find_layers(model)
    layer.weight.quant = spec
    assert lower_to_matmulnbits(model) == 1
    a = rng.standard_normal((5, 80)).astype(np.float32)
    session = ort.InferenceSession(to_proto(model).SerializeToString(), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(session.run(None, {"a": a})[0], a @ grid, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("fields", [{"float_zero_points": True},
                                    {"float_zero_points": True, "symmetric": False, "weight_format": "qdq"}])
def test_float_zero_points_need_asymmetric_matmulnbits(tiny_transformer, tmp_path, fields):
    model, _, _ = tiny_transformer
    with pytest.raises(UserError, match="float_zero_points: a float zero point is asymmetric"):
        qcompiler.compile(model, tmp_path / "out.onnx", pipeline="weight-only", **fields)
