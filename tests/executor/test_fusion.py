"""onnxruntime's QDQ propagation and fusions, found in the IR: the same node units onnxruntime fuses.

Each graph is also handed to onnxruntime (all optimizations, the optimized model saved) and the fused
kernels it created are counted: our selection must produce the same kernels, as many of each.
"""

from __future__ import annotations

import collections

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from qcompiler import ir
from qcompiler.executor.fusion import find_fusions
from qcompiler.executor.propagation import propagate_qdq
from qcompiler.ir.testing import parse

FUSED = {"QLinearConv", "QLinearMatMul", "QGemm", "QLinearAdd", "QLinearGlobalAveragePool", "QLinearSoftmax",
         "MatMulIntegerToFloat"}

HEADER = """<ir_version: 8, opset_import: ["" : 13]>"""
PARAMS = """float xs = {0.02}, uint8 xz = {128}, float ys = {0.05}, uint8 yz = {3}, float ws = {0.01},
            int8 wz = {0}, float bs = {0.0002}, int32 bz = {0}"""


def onnxruntime_kernels(model: ir.Model, tmp_path) -> collections.Counter:
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    options.log_severity_level = 3
    ort.InferenceSession(ir.to_proto(model).SerializeToString(), options, providers=["CPUExecutionProvider"])
    nodes = onnx.load(options.optimized_model_filepath).graph.node
    return collections.Counter(n.op_type for n in nodes if n.op_type in FUSED)


def our_kernels(model: ir.Model) -> collections.Counter:
    return collections.Counter(f.kernel[1] for f in find_fusions(propagate_qdq(model)))


GRAPHS = {
    "conv_relu_q": (f"""g (uint8[1,4,5,5] xq) => (uint8[1,4,5,5] y) <{PARAMS}, int8[4,4,3,3] w = {{{', '.join(['1'] * 144)}}},
                     int32[4] b = {{1, 2, 3, 4}}> {{
        x = DequantizeLinear (xq, xs, xz)
        wf = DequantizeLinear (w, ws, wz)
        bf = DequantizeLinear (b, bs, bz)
        c = Conv <pads = [1, 1, 1, 1]> (x, wf, bf)
        r = Relu (c)
        y = QuantizeLinear (r, ys, bz_u8)
    }}""", {"QLinearConv": 1}),
    "conv_output_read_twice": (f"""g (uint8[1,4,5,5] xq) => (uint8[1,4,5,5] y, float[1,4,5,5] c) <{PARAMS},
                     int8[4,4,1,1] w = {{{', '.join(['1'] * 16)}}}> {{
        x = DequantizeLinear (xq, xs, xz)
        wf = DequantizeLinear (w, ws, wz)
        c = Conv (x, wf)
        y = QuantizeLinear (c, ys, yz)
    }}""", {}),
    "softmax_reshape_q": (f"""g (uint8[2,6] xq) => (uint8[3,4] y) <{PARAMS}, int64[2] shape = {{3, 4}},
                     float ss = {{0.00390625}}, uint8 sz = {{0}}> {{
        x = DequantizeLinear (xq, xs, xz)
        s = Softmax (x)
        r = Reshape (s, shape)
        y = QuantizeLinear (r, ss, sz)
    }}""", {"QLinearSoftmax": 1}),
    "transpose_then_matmul": (f"""g (uint8[4,3] xq) => (uint8[3,2] y) <{PARAMS}, int8[4,2] w = {{1, 2, 3, 4, 5, 6, 7, 8}}> {{
        x = DequantizeLinear (xq, xs, xz)
        t = Transpose <perm = [1, 0]> (x)
        wf = DequantizeLinear (w, ws, wz)
        m = MatMul (t, wf)
        y = QuantizeLinear (m, ys, yz)
    }}""", {"QLinearMatMul": 1}),
    "matmul_float_output": (f"""g (uint8[3,4] xq) => (float[3,2] m) <{PARAMS}, int8[4,2] w = {{1, 2, 3, 4, 5, 6, 7, 8}}> {{
        x = DequantizeLinear (xq, xs, xz)
        wf = DequantizeLinear (w, ws, wz)
        m2 = MatMul (x, wf)
        m = Relu (m2)
    }}""", {"MatMulIntegerToFloat": 1}),
    "add_gap_flatten_gemm": (f"""g (uint8[1,4,3,3] aq, uint8[1,4,3,3] bq) => (uint8[1,2] y) <{PARAMS},
                     int8[2,4] w = {{1, 2, 3, 4, 5, 6, 7, 8}}, int32[2] b = {{5, 6}}> {{
        a = DequantizeLinear (aq, xs, xz)
        bb = DequantizeLinear (bq, ys, yz)
        s = Add (a, bb)
        sq = QuantizeLinear (s, ys, yz)
        sd = DequantizeLinear (sq, ys, yz)
        g = GlobalAveragePool (sd)
        gq = QuantizeLinear (g, xs, xz)
        gd = DequantizeLinear (gq, xs, xz)
        f = Flatten (gd)
        wf = DequantizeLinear (w, ws, wz)
        bf = DequantizeLinear (b, bs, bz)
        o = Gemm <transB = 1> (f, wf, bf)
        y = QuantizeLinear (o, ys, yz)
    }}""", {"QLinearAdd": 1, "QLinearGlobalAveragePool": 1}),  # Flatten does not propagate: Gemm stays float
    "int8_activations_on_x86": (f"""g (int8[3,4] xq) => (int8[3,2] y) <{PARAMS}, int8 xz8 = {{0}},
                     int8[4,2] w = {{1, 2, 3, 4, 5, 6, 7, 8}}> {{
        x = DequantizeLinear (xq, xs, xz8)
        wf = DequantizeLinear (w, ws, wz)
        m = MatMul (x, wf)
        y = QuantizeLinear (m, ys, xz8)
    }}""", {}),
}


@pytest.mark.parametrize("name", list(GRAPHS))
def test_we_fuse_what_onnxruntime_fuses(name, tmp_path):
    text, expected = GRAPHS[name]
    model = parse(HEADER + "\n" + text.replace("bz_u8", "yz0").replace(PARAMS, PARAMS + ", uint8 yz0 = {0}"))
    assert dict(our_kernels(model)) == expected
    assert our_kernels(model) == onnxruntime_kernels(model, tmp_path)


def test_relu_before_a_q_with_a_nonzero_zero_point_is_not_absorbed(tmp_path):
    text, _ = GRAPHS["conv_relu_q"]
    model = parse(HEADER + "\n" + text.replace("bz_u8", "yz"))  # zero point 3: Relu is not redundant
    assert our_kernels(model) == onnxruntime_kernels(model, tmp_path) == collections.Counter()


def test_propagation_copies_and_inserts_pairs_that_change_no_value():
    text, _ = GRAPHS["softmax_reshape_q"]
    model = parse(HEADER + "\n" + text)
    propagated = propagate_qdq(model)
    assert [n.op_type for n in model.graph] == ["DequantizeLinear", "Softmax", "Reshape", "QuantizeLinear"]
    assert [n.op_type for n in propagated.graph] == ["DequantizeLinear", "Softmax", "QuantizeLinear",
                                                     "DequantizeLinear", "Reshape", "QuantizeLinear"]
    ir.verify(propagated)
    from qcompiler.executor import Interpreter

    feed = {"xq": np.arange(12, dtype=np.uint8).reshape(2, 6) * 20}
    np.testing.assert_array_equal(Interpreter(model).run(feed)["y"], Interpreter(propagated).run(feed)["y"])
