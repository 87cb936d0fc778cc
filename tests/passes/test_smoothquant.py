"""SmoothQuant and the transformer placement on small graphs written in ONNX text, run in onnxruntime.

The graphs carry the outliers SmoothQuant is for: a LayerNorm whose gamma has a few large channels,
so a handful of the MatMul's input channels are 30x larger than the rest.
"""

from __future__ import annotations

import os
import tempfile

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from qcompiler import PassManager, ir
from qcompiler.errors import UserError
from qcompiler.instruments import CheckNumerics
from qcompiler.ir.testing import run_onnxruntime
from qcompiler.passes import AssignPrecision, Calibrate, InferShapes, InsertQDQ, SmoothQuant
from qcompiler.options import CompileOptions
from qcompiler.passes.smoothquant import find_groups, folding, smoothing_scales
from qcompiler.pipelines import int8_transformer

K, N = 32, 24


def block(shared_ln: bool = False, gemm: bool = False, seed: int = 0) -> ir.Model:
    """x -> LayerNorm (outlier gamma) -> linear -> +bias -> *0.5 -> linear -> y; optionally a residual."""
    rng = np.random.default_rng(seed)
    gamma = np.ones(K, np.float32)
    gamma[[3, 17]] = 30.0
    first = "h = Gemm <transB = 1> (n, w1, b1)" if gemm else "m = MatMul(n, w1)\n      h = Add(b1, m)"
    residual = "r = Add(n, y0)\n      y = Identity(r)" if shared_ln else "y = Identity(y0)"
    dims = "16," if gemm else "B,T,"  # Gemm takes 2-D inputs; MatMuls get [batch, tokens, channels]
    text = f"""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[{dims}{K}] x) => (float[{dims}{K}] y) {{
      n = LayerNormalization <axis = -1> (x, gamma, beta)
      {first}
      a = Mul(h, half)
      y0 = MatMul(a, w2)
      {residual}
    }}"""
    proto = onnx.parser.parse_model(text)
    w1 = rng.standard_normal((N, K) if gemm else (K, N)).astype(np.float32) * 0.2
    proto.graph.initializer.extend(onnx.numpy_helper.from_array(a, name) for name, a in [
        ("gamma", gamma), ("beta", rng.standard_normal(K).astype(np.float32) * 0.1), ("w1", w1),
        ("b1", rng.standard_normal(N).astype(np.float32)), ("half", np.array(0.5, np.float32)),
        ("w2", rng.standard_normal((N, K)).astype(np.float32) * 0.2)])
    model = ir.from_proto(proto)
    PassManager([InferShapes()])(model)
    return model


def feeds(count: int = 8, seed: int = 1, shape=(2, 8, K)) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [{"x": rng.standard_normal(shape).astype(np.float32)} for _ in range(count)]


def outputs(model: ir.Model, data) -> np.ndarray:
    return np.concatenate([run_onnxruntime(model, feed)[0] for feed in data])


def quantized_error(model: ir.Model, calib, test) -> float:
    """Relative squared error of the W8A8 model against ``model`` in float."""
    reference = outputs(model, test)
    quantized = model.clone()
    PassManager([AssignPrecision(target="x86-vnni", float_linear_outputs=True),
                 Calibrate(data=calib, method="minmax"), InsertQDQ()])(quantized)
    return float(np.square(outputs(quantized, test) - reference).sum() / np.square(reference).sum())


def test_groups_and_where_one_over_s_can_go():
    model = block(shared_ln=True)
    groups = {x.name: (x, layers) for x, layers in find_groups(model.graph)}
    assert sorted(groups) == ["a", "n"]
    assert folding(model.graph, *groups["n"]) == (None, "also read by Add")
    assert folding(model.graph, *groups["a"])[0] is not None  # Mul by a constant
    proto = onnx.parser.parse_model("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[2,8,4] x, int64[2] s) => (float[16,3] y) {
      r = Reshape(x, s)
      y = MatMul(r, w)
    }""")
    proto.graph.initializer.append(onnx.numpy_helper.from_array(np.ones((4, 3), np.float32), "w"))
    reshaped = ir.from_proto(proto)
    PassManager([InferShapes()])(reshaped)
    (x, layers), = find_groups(reshaped.graph)
    assert folding(reshaped.graph, x, layers) == (None, "produced by Reshape")


@pytest.mark.parametrize("gemm", [False, True])
def test_folded_smoothing_keeps_float_outputs_and_lowers_the_int8_error(gemm):
    shape = (16, K) if gemm else (2, 8, K)
    model, calib, test = block(gemm=gemm), feeds(8, shape=shape), feeds(4, seed=9, shape=shape)
    before = quantized_error(model, calib, test)
    check = CheckNumerics(test[0], rtol=1e-4)
    result = PassManager([SmoothQuant(data=calib, target="x86-vnni", method="minmax")], instruments=[check])(model)
    assert result.records[-1].modified
    ir.verify(model)
    applied = [e for e in model.plan.reports["smoothquant"] if "skipped" not in e]
    assert {e["input"] for e in applied} >= {"n"}  # the LayerNorm -> linear group, folded into gamma/beta
    assert not any(n.op_type == "Mul" and n.name.endswith("SmoothMul") for n in model.graph)
    np.testing.assert_allclose(outputs(model, test), outputs(block(gemm=gemm), test), rtol=1e-4, atol=1e-4)
    after = quantized_error(model, calib, test)
    assert after < 0.5 * before, (before, after)


def test_fixed_alpha_applies_the_papers_scales():
    model, calib = block(), feeds(8)
    ln_out = np.concatenate([run_onnxruntime(_with_output(model, "n"), f)[1] for f in calib])
    act_max = np.abs(ln_out.reshape(-1, K)).max(axis=0)
    w1 = model.graph.initializers["w1"].const.copy()
    expected = smoothing_scales(act_max, np.abs(w1).max(axis=1), 0.5)
    np.testing.assert_allclose(expected, np.sqrt(act_max) / np.sqrt(np.abs(w1).max(axis=1)), rtol=1e-6)
    PassManager([SmoothQuant(data=calib, alpha=0.5, target="x86-vnni")])(model)
    layer = next(n for n in model.graph if n.op_type == "MatMul" and n.inputs[0].name == "n")
    np.testing.assert_allclose(layer.inputs[1].const, w1 * expected[:, None].astype(np.float32), rtol=1e-5)
    ln = model.graph.nodes[0]
    np.testing.assert_allclose(ln.inputs[1].const * expected, block().graph.initializers["gamma"].const, rtol=1e-5)


def _with_output(model: ir.Model, name: str) -> onnx.ModelProto:
    proto = ir.to_proto(model)
    proto.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
    return proto


def test_shared_producer_is_skipped_or_gets_an_explicit_mul():
    calib, test = feeds(8), feeds(4, seed=9)
    model = block(shared_ln=True)
    PassManager([SmoothQuant(data=calib, target="x86-vnni", alphas=[0.5])])(model)
    skipped = {e["input"]: e.get("skipped") for e in model.plan.reports["smoothquant"]}
    assert skipped["n"] == "also read by Add"

    explicit = block(shared_ln=True)
    before = quantized_error(explicit, calib, test)
    PassManager([SmoothQuant(data=calib, target="x86-vnni", method="minmax", explicit=True)],
                instruments=[CheckNumerics(test[0])])(explicit)
    ir.verify(explicit)
    muls = [n for n in explicit.graph if n.name.endswith("SmoothMul")]
    assert len(muls) == 1 and muls[0].inputs[0].name == "n"
    assert {n.op_type for n in muls[0].outputs[0].consumers()} == {"MatMul"}  # the residual still reads n
    assert quantized_error(explicit, calib, test) < before


def test_no_linear_layer_or_no_gain_leaves_the_model_alone():
    model = ir.from_proto(onnx.parser.parse_model("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[2,4] x) => (float[2,4] y) { y = Relu(x) }"""))
    result = PassManager([SmoothQuant(data=feeds(2), target="x86-vnni")])(model)
    assert not result.records[-1].modified and model.plan.reports["smoothquant"] == []


@pytest.mark.parametrize("options, message", [({}, "no calibration data"),
                                              ({"data": [{}], "alpha": 1.5}, "must lie in"),
                                              ({"data": [{}], "holdout": 1}, "holdout"),
                                              ({"data": [{}], "method": "best"}, "unknown method")])
def test_bad_options_are_user_errors(options, message):
    with pytest.raises(UserError, match=message):
        SmoothQuant(**options).requires(block())


def test_int8_transformer_pipeline_quantizes_every_linear_layer_with_float_outputs():
    model, calib, test = block(shared_ln=True), feeds(8), feeds(4, seed=9)
    reference = outputs(model, test)
    PassManager(int8_transformer(CompileOptions(calib=calib, target="x86-vnni", objective="size")))(model)
    ir.verify(model)
    linear = [n for n in model.graph if n.op_type == "MatMul"]
    assert len(linear) == 2
    for node in linear:
        assert all(v.producer().op_type == "DequantizeLinear" for v in node.inputs)  # W8A8
        assert all(c.op_type != "QuantizeLinear" for c in node.outputs[0].consumers())  # float output
    adds = [n for n in model.graph if n.op_type == "Add"]
    assert len(adds) == 2 and all(c.op_type != "QuantizeLinear" for n in adds for c in n.outputs[0].consumers())
    error = np.square(outputs(model, test) - reference).sum() / np.square(reference).sum()
    assert error < 1e-3
    assert fused_ops(model).count("MatMulIntegerToFloat") == 2  # onnxruntime still runs both in int8


def fused_ops(model: ir.Model) -> list[str]:
    """Op types onnxruntime runs after its graph optimizations."""
    with tempfile.TemporaryDirectory() as tmp:
        options = ort.SessionOptions()
        options.optimized_model_filepath = os.path.join(tmp, "optimized.onnx")
        ort.InferenceSession(ir.to_proto(model).SerializeToString(), options, providers=["CPUExecutionProvider"])
        return [n.op_type for n in onnx.load(options.optimized_model_filepath).graph.node]


@pytest.mark.parametrize("dims, output_quantized", [("B,T,", False), ("2,8,", True), ("16,", True)])
def test_float_linear_outputs_only_where_onnxruntime_keeps_the_matmul_int8(dims, output_quantized):
    """A MatMul + bias Add with a static input shape becomes a float Gemm in onnxruntime: keep its Q/DQ."""
    proto = onnx.parser.parse_model(f"""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[{dims}{K}] x) => (float[{dims}{N}] y) {{
      m = MatMul(x, w)
      y = Add(m, b)
    }}""")
    proto.graph.initializer.extend([onnx.numpy_helper.from_array(np.ones((K, N), np.float32), "w"),
                                    onnx.numpy_helper.from_array(np.ones(N, np.float32), "b")])
    model = ir.from_proto(proto)
    PassManager([InferShapes(), AssignPrecision(target="x86-vnni", float_linear_outputs=True)])(model)
    assert (model.find_value("m") in model.plan.pending) == output_quantized
    assert model.find_value("x") in model.plan.pending
