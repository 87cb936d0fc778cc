"""Dynamic activations as a property of the scheme (no range, no calibration, a scale computed at run time), and
the ``dynamic`` pipeline: its graph form, its numerics against onnxruntime, the Conv refusal."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto

import qcompiler
from qcompiler import PassManager, ir
from qcompiler.cli import main
from qcompiler.errors import UserError
from qcompiler.executor import Interpreter
from qcompiler.executor.agreement import run_onnxruntime as onnxruntime_outputs
from qcompiler.ir import Scheme
from qcompiler.ir.testing import parse, run_onnxruntime, tensor_text
from qcompiler.passes import FoldQuantizedWeights, InsertQDQ
from qcompiler.targets import TARGETS, detect_target, runtime_saturates_u8s8

RNG = np.random.default_rng(4)
DYNAMIC = Scheme(TensorProto.UINT8, symmetric=False, dynamic=True)


def dynamic_matmul() -> ir.Model:
    proto = onnx.parser.parse_model("""
    <ir_version: 8, opset_import: ["" : 13]>
    g (float[N,64] x) => (float[N,16] y) { y = MatMul(x, w) }""")
    proto.graph.initializer.append(onnx.numpy_helper.from_array(RNG.standard_normal((64, 16)).astype(np.float32), "w"))
    model = ir.from_proto(proto)
    model.plan.start(TARGETS["x86-vnni"])
    matmul, weight = model.graph.nodes[0], model.graph.initializers["w"]
    weight.quant = TARGETS["x86-vnni"].weight_scheme().spec_for(weight.const, axis=1)
    model.plan.quantize_node(matmul)
    model.plan.needs_range(matmul.inputs[0], DYNAMIC)
    return model


def test_a_dynamic_activation_needs_no_range_and_lowers_to_dynamic_quantize_linear():
    model = dynamic_matmul()
    assert not model.plan.pending and list(model.plan.dynamic) == [model.graph.nodes[0].inputs[0]]
    x = RNG.standard_normal((3, 64)).astype(np.float32)
    want = run_onnxruntime(model, {"x": x})[0]
    PassManager([InsertQDQ(), FoldQuantizedWeights()])(model)  # no calibrate: the ranges fact holds
    proto = ir.to_proto(model)
    onnx.checker.check_model(proto)
    assert [n.op_type for n in proto.graph.node] == ["DynamicQuantizeLinear", "DequantizeLinear", "DequantizeLinear",
                                                     "MatMul"]
    for rows in (x, 10 * x):  # the scale follows each input
        got = run_onnxruntime(proto, {"x": rows})[0]
        reference = want if rows is x else 10 * want
        assert 0 < np.sum((got - reference) ** 2) < 1e-3 * np.sum(reference ** 2)


def test_a_dynamic_scheme_is_what_dynamic_quantize_linear_computes():
    with pytest.raises(ValueError, match="uint8, asymmetric, per tensor"):
        Scheme(TensorProto.INT8, symmetric=True, dynamic=True)


# -- the `dynamic` pipeline ------------------------------------------------------------------------

LINEAR = """
<ir_version: 8, opset_import: ["" : 13]>
mlp (float[N,32] x) => (float[N,8] y, float[N,16] z) <{inits}> {{
    h = Gemm <transB = 1> (x, w1, b1)
    r = Relu (h)
    y = MatMul (r, w2)
    z = MatMul (x, w3)
}}
"""


def linear_model(scale: float = 0.3) -> ir.Model:
    """A Gemm with a bias (-> MatMulIntegerToFloat with bias), a MatMul with one reader of its input
    (-> DynamicQuantizeMatMul) and one sharing ``x`` with the Gemm (-> MatMulIntegerToFloat)."""
    rng = np.random.default_rng(7)
    weights = {"w1": rng.normal(0, scale, (24, 32)), "b1": rng.normal(0, 0.1, 24),
               "w2": rng.normal(0, scale, (24, 8)), "w3": rng.normal(0, scale, (32, 16))}
    inits = ", ".join(tensor_text(k, v.astype(np.float32)) for k, v in weights.items())
    return parse(LINEAR.format(inits=inits))


def test_dynamic_pipeline_needs_no_calibration_and_writes_onnxruntimes_integer_form():
    model = qcompiler.compile(linear_model(), None, pipeline="dynamic", target="x86-vnni")
    ops = [n.op_type for n in model.graph]
    assert ops.count("DynamicQuantizeLinear") == 2 and ops.count("MatMulInteger") == 3
    assert "Gemm" not in ops and "QuantizeLinear" not in ops and "DequantizeLinear" not in ops
    assert {model.graph.initializers[n.inputs[1].name].const.dtype for n in model.graph
            if n.op_type == "MatMulInteger"} == {np.dtype(np.int8)}
    fused = ort_optimized_ops(model)
    assert fused.count("DynamicQuantizeMatMul") == 1 and fused.count("MatMulIntegerToFloat") == 2
    assert "MatMul" not in fused and "Gemm" not in fused and "FusedGemm" not in fused


def embedding_model() -> ir.Model:
    """Token ids -> an embedding table (a Gather along axis 0) -> a MatMul."""
    rng = np.random.default_rng(9)
    proto = onnx.parser.parse_model("""
    <ir_version: 8, opset_import: ["" : 13]>
    g (int64[N,T] ids) => (float[N,T,16] y) { e = Gather(table, ids) y = MatMul(e, w) }""")
    proto.graph.initializer.extend([
        onnx.numpy_helper.from_array(rng.standard_normal((1000, 256)).astype(np.float32), "table"),
        onnx.numpy_helper.from_array(rng.standard_normal((256, 16)).astype(np.float32), "w")])
    return ir.from_proto(proto)


def test_dynamic_stores_embedding_tables_in_8_bits_unless_gather_is_excluded():
    """The table becomes 8-bit blocks read by GatherBlockQuantized (about a quarter of its float bytes) and
    the output stays close to float; ``--exclude Gather`` keeps the table float."""
    ids = {"ids": np.random.default_rng(2).integers(0, 1000, (3, 7)).astype(np.int64)}
    want = onnxruntime_outputs(embedding_model(), ids)["y"]
    model = qcompiler.compile(embedding_model(), None, pipeline="dynamic", target="x86-vnni")
    gather = next(n for n in model.graph if n.op_type == "GatherBlockQuantized")
    assert gather.domain == "com.microsoft" and gather.inputs[0].const.nbytes == 1000 * 256
    got = onnxruntime_outputs(model, ids, optimize=True)["y"]
    assert 0 < np.sum((got - want) ** 2) / np.sum(want ** 2) < 1e-3
    kept = qcompiler.compile(embedding_model(), None, pipeline="dynamic", target="x86-vnni", exclude=["Gather"])
    assert [n.op_type for n in kept.graph if "Gather" in n.op_type] == ["Gather"]


def ort_optimized_ops(model: ir.Model) -> list[str]:
    import tempfile

    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp:
        options = ort.SessionOptions()
        options.optimized_model_filepath = f"{tmp}/optimized.onnx"
        options.log_severity_level = 3
        ort.InferenceSession(ir.to_proto(model).SerializeToString(), options, providers=["CPUExecutionProvider"])
        return [n.op_type for n in onnx.load(options.optimized_model_filepath).graph.node]


@pytest.mark.parametrize("scale", [0.3, 30.0])  # 30: inputs and weights that fill the integer ranges
def test_dynamic_numerics_equal_onnxruntime(scale):
    """The executor under this CPU's profile against onnxruntime with its fused dynamic kernels, bit for bit
    (DynamicQuantizeLinear, then MatMulInteger -> Cast -> Mul (-> Add) unfused, equals DynamicQuantizeMatMul
    and MatMulIntegerToFloat with bias); the float model's outputs as a sanity bound. The target is this
    CPU's: uint8 weights (u8 x u8, exact) where u8 x s8 saturates, else int8."""
    target = detect_target().name
    model = qcompiler.compile(linear_model(), None, pipeline="dynamic", target=target)
    weights = {model.graph.initializers[n.inputs[1].name].const.dtype for n in model.graph
               if n.op_type == "MatMulInteger"}
    assert weights == {np.dtype(np.uint8 if target == "x86-avx2" else np.int8)}
    reference = linear_model()
    rng = np.random.default_rng(11)
    for rows in (1, 5):
        feed = {"x": (scale * rng.standard_normal((rows, 32))).astype(np.float32)}
        ours = Interpreter(model, profile=target).run(feed)
        theirs = onnxruntime_outputs(model, feed, optimize=True)
        want = onnxruntime_outputs(reference, feed)
        for name in ("y", "z"):
            np.testing.assert_array_equal(ours[name], theirs[name], err_msg=name)
            error = np.sum((theirs[name] - want[name]) ** 2) / np.sum(want[name] ** 2)
            assert 0 < error < 1e-3, (name, error)


def test_full_range_weights_saturate_where_the_target_says_so():
    """Full-range int8 weights (x86-vnni) on a CPU whose u8 x s8 kernels saturate: onnxruntime's answer is
    the saturating one, which the x86-avx2 profile reproduces and the exact one does not."""
    if not runtime_saturates_u8s8():
        pytest.skip("this CPU's onnxruntime accumulates u8 x s8 exactly")
    model = qcompiler.compile(linear_model(), None, pipeline="dynamic", target="x86-vnni")
    feed = {"x": (30 * np.random.default_rng(3).standard_normal((4, 32))).astype(np.float32)}
    theirs = onnxruntime_outputs(model, feed, optimize=True)["z"]
    np.testing.assert_array_equal(Interpreter(model, profile="x86-avx2").run(feed)["z"], theirs)
    assert not np.allclose(Interpreter(model, profile="exact").run(feed)["z"], theirs, rtol=1e-3)


CONV = """
<ir_version: 8, opset_import: ["" : 13]>
cnn (float[1,3,8,8] x) => (float[1,4] y) <{inits}> {{
    c = Conv <pads = [1, 1, 1, 1]> (x, wc)
    g = GlobalAveragePool (c)
    f = Flatten (g)
    y = MatMul (f, wl)
}}
"""


def conv_model() -> ir.Model:
    rng = np.random.default_rng(5)
    inits = ", ".join(tensor_text(k, v.astype(np.float32)) for k, v in
                      {"wc": rng.normal(0, 0.3, (6, 3, 3, 3)), "wl": rng.normal(0, 0.3, (6, 4))}.items())
    return parse(CONV.format(inits=inits))


def test_conv_under_dynamic_is_refused_unless_excluded():
    with pytest.raises(UserError, match=r"Conv layer.*static quantization.*--exclude Conv"):
        qcompiler.compile(conv_model(), None, pipeline="dynamic", target="x86-vnni")
    model = qcompiler.compile(conv_model(), None, pipeline="dynamic", target="x86-vnni", exclude=["Conv"])
    ops = [n.op_type for n in model.graph]
    assert "Conv" in ops and ops.count("MatMulInteger") == 1


def test_cli_refuses_conv_with_exit_2_and_compiles_without_calib(tmp_path, capsys):
    source, output = tmp_path / "cnn.onnx", tmp_path / "cnn.dynamic.onnx"
    onnx.save(ir.to_proto(conv_model()), source)
    assert main(["compile", str(source), "-o", str(output), "--pipeline", "dynamic", "-q"]) == 2
    error = capsys.readouterr().err
    assert "static quantization" in error and "--exclude Conv" in error and "Traceback" not in error
    assert not output.exists()
    assert main(["compile", str(source), "-o", str(output), "--pipeline", "dynamic", "--exclude", "Conv", "-q"]) == 0
    assert "MatMulInteger" in {n.op_type for n in onnx.load(output).graph.node}


def test_dynamic_with_calibration_keeps_float_the_layer_whose_input_has_outlier_tokens():
    """One token with a value 1000 times the others' sets the run's range: the other tokens of ``u`` round
    to the zero point, so ``b``'s typical token is mostly error; ``a`` reads an ordinary input."""
    rng = np.random.default_rng(5)
    inits = ", ".join(tensor_text(k, rng.normal(0, 0.3, (32, 16)).astype(np.float32)) for k in ("w1", "w2"))
    model = parse(f"""
    <ir_version: 8, opset_import: ["" : 13]>
    g (float[N,32] x, float[N,32] u) => (float[N,16] a, float[N,16] b) <{inits}> {{
        a = MatMul (x, w1)
        b = MatMul (u, w2)
    }}""")
    feeds = []
    for _ in range(3):
        x, u = rng.standard_normal((64, 32)).astype(np.float32), rng.standard_normal((64, 32)).astype(np.float32)
        u[0, 3] = 1000.0
        feeds.append({"x": x, "u": u})
    compiled = qcompiler.compile(model, None, pipeline="dynamic", target="x86-vnni", calib=feeds, objective="size")
    screen = compiled.plan.reports["dynamic_screen"]
    assert screen["layers"] == 2 and [row["layer"] for row in screen["float"]] == ["b"]
    assert screen["float"][0]["token_sqnr_db"] < 10
    readers = {n.outputs[0].name: n.op_type for n in compiled.graph}
    assert readers["b"] == "MatMul" and readers["a"] != "MatMul"  # a: MatMulInteger -> Cast -> Mul
    ordinary = [{"x": f["x"], "u": f["x"]} for f in feeds]
    compiled = qcompiler.compile(model, None, pipeline="dynamic", target="x86-vnni", calib=ordinary,
                                objective="size")
    assert compiled.plan.reports["dynamic_screen"]["float"] == []
