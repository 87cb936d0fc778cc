"""Pinned precision decisions for small graphs: which nodes run in int8, which activations are absorbed,
quantized or share a spec, each weight's axis, and which biases become int32 once lowered.

These pin what the per-op facts (weighted, int8, pass-through and absorbed ops, weight axes, bias inputs)
make the assignment and the lowering decide, so a change to a fact shows here as a changed decision.
"""

from __future__ import annotations

import numpy as np
import pytest

from qcompiler import PassManager
from qcompiler.ir.testing import parse, tensor_text
from qcompiler.lowering import lower
from qcompiler.passes import AssignPrecision, InferShapes

from .executor.conftest import cnn_model


def _inits(seed: int, **shapes) -> str:
    rng = np.random.default_rng(seed)
    return ", ".join(tensor_text(k, rng.normal(0, 0.3, s).astype(np.float32)) for k, s in shapes.items())


def transformer_block(dims: str = "B,T"):
    """Attention (Q/K/V projections with bias Adds, Q·Kᵀ, Softmax, ·V), a residual Add, LayerNorm, and an
    MLP with a residual, on ``[dims, 16]`` inputs."""
    weights = _inits(1, wq=(16, 16), bq=(16,), wk=(16, 16), bk=(16,), wv=(16, 16), bv=(16,), wo=(16, 16),
                     bo=(16,), gamma=(16,), beta=(16,), w1=(16, 32), b1=(32,), w2=(32, 16), b2=(16,))
    return parse(f"""<ir_version: 8, opset_import: ["" : 17]>
    block (float[{dims},16] x) => (float[{dims},16] y) <{weights}> {{
      q0 = MatMul(x, wq)
      q = Add(q0, bq)
      k0 = MatMul(x, wk)
      k = Add(k0, bk)
      v0 = MatMul(x, wv)
      v = Add(v0, bv)
      kt = Transpose <perm = [0, 2, 1]> (k)
      s = MatMul(q, kt)
      p = Softmax <axis = -1> (s)
      a = MatMul(p, v)
      o0 = MatMul(a, wo)
      o = Add(bo, o0)
      r = Add(x, o)
      n = LayerNormalization <axis = -1> (r, gamma, beta)
      h0 = MatMul(n, w1)
      h = Add(h0, b1)
      g = Relu(h)
      f0 = MatMul(g, w2)
      f = Add(f0, b2)
      y = Add(n, f)
    }}""")


def mixed_ops():
    """Clip and Relu after Convs, Concat, AveragePool, MaxPool, Slice and Flatten after quantized values, a float
    Sigmoid, a Gemm, and a ConvTranspose (no int8 kernel)."""
    weights = _inits(2, w1=(8, 4, 3, 3), b1=(8,), w2=(8, 8, 1, 1), wg=(64, 10), bg=(10,), wt=(8, 4, 3, 3))
    return parse(f"""<ir_version: 8, opset_import: ["" : 13]>
    mixed (float[1,4,8,8] x) => (float[1,10] y, float[1,4,8,8] t, float[1,8,2,2] sg) <{weights},
           float lo = {{0.0}}, float hi = {{6.0}}, int64[4] st = {{0, 0, 0, 0}}, int64[4] en = {{1, 8, 2, 2}}> {{
      c1 = Conv <pads = [1, 1, 1, 1]> (x, w1, b1)
      r1 = Clip(c1, lo, hi)
      c2 = Conv(r1, w2)
      r2 = Relu(c2)
      cat = Concat <axis = 1> (r1, r2)
      ap = AveragePool <kernel_shape = [2, 2], strides = [2, 2]> (cat)
      sl = Slice(r2, st, en)
      sg = Sigmoid(sl)
      mp = MaxPool <kernel_shape = [2, 2], strides = [2, 2]> (ap)
      fl = Flatten(mp)
      y = Gemm(fl, wg, bg)
      t = ConvTranspose <pads = [1, 1, 1, 1]> (r2, wt)
    }}""")


def decisions(model, target="x86-avx2", **options) -> dict:
    """The plan's decisions for ``model`` and the int32 biases of its lowered form, by output name."""
    PassManager([InferShapes(), AssignPrecision(target=target, **options)])(model)
    plan = model.plan
    name = lambda node: node.outputs[0].name  # noqa: E731
    weights = {v.name: v.quant.axis for v in model.graph.values() if v.const is not None and v.quant is not None}
    result = {"int8": [name(n) for n in plan.layers], "absorbed": sorted(name(n) for n in plan.absorbed),
              "ranged": sorted(v.name for v in plan.pending),
              "shares": {v.name: s.name for v, s in plan.shares.items()},
              "weight_axes": weights}
    names = {n: name(n) for n in model.graph}  # (lowering renames a quantized graph output)
    plan.set_ranges({v: (-1.0, 2.0) for v in plan.pending})
    lower(model)
    result["int32_bias"] = sorted(names[n] for n in names if len(n.inputs) > 2 and n.inputs[2] is not None
                                  and n.inputs[2].producer() is not None
                                  and n.inputs[2].producer().op_type == "DequantizeLinear")
    return result


def test_small_cnn():
    assert decisions(cnn_model()) == {
        "int8": ["c1", "r1", "d1", "r2", "s", "p", "g", "f", "y"], "absorbed": ["r1", "r2"],
        "ranged": ["g", "r1", "r2", "s", "x", "y"], "shares": {"f": "g", "p": "s"},
        "weight_axes": {"w1": 0, "wd": 0, "wf": 0}, "int32_bias": ["c1", "d1", "y"]}


def test_small_cnn_per_tensor():
    assert decisions(cnn_model(), per_channel=False)["weight_axes"] == {"w1": None, "wd": None, "wf": None}


TRANSFORMER = {
    "int8": ["q0", "q", "k0", "k", "v0", "v", "kt", "s", "a", "o0", "o", "r", "h0", "h", "f0", "f", "y"],
    "absorbed": [],  # the Relu follows a bias Add, not a layer
    "ranged": ["a", "f", "f0", "g", "h", "h0", "k", "k0", "n", "o", "o0", "p", "q", "q0", "r", "s", "v", "v0", "x",
               "y"],
    "shares": {"kt": "k"}, "weight_axes": {"wq": 1, "wk": 1, "wv": 1, "wo": 1, "w1": 1, "w2": 1}, "int32_bias": []}


@pytest.mark.parametrize("dims", ["B,T", "2,8"])
def test_transformer_block(dims):
    assert decisions(transformer_block(dims)) == TRANSFORMER


def test_transformer_block_float_linear_outputs_dynamic_shapes():
    """Dynamic batch and sequence: every MatMul keeps a float output (MatMulIntegerToFloat)."""
    assert decisions(transformer_block("B,T"), float_linear_outputs=True) == {
        **TRANSFORMER, "int8": ["q0", "k0", "v0", "s", "a", "o0", "h0", "f0"],
        "ranged": ["a", "g", "kt", "n", "p", "q", "v", "x"], "shares": {}}


def test_transformer_block_float_linear_outputs_static_shapes():
    """Static shapes: onnxruntime fuses a MatMul read by an Add into a float Gemm, so those MatMuls keep
    quantized outputs; only Q·Kᵀ (read by Softmax) has a float output."""
    expected = {**TRANSFORMER, "ranged": [v for v in TRANSFORMER["ranged"] if v != "s"]}
    assert decisions(transformer_block("2,8"), float_linear_outputs=True) == expected


def test_mixed_ops():
    """Slice stays float (not a pass-through op yet, see qcompiler/ops.py); MaxPool and Flatten share specs."""
    assert decisions(mixed_ops()) == {
        "int8": ["c1", "r1", "c2", "r2", "cat", "ap", "mp", "fl", "y"], "absorbed": ["r1", "r2"],
        "ranged": ["ap", "cat", "r1", "r2", "x", "y"], "shares": {"mp": "ap", "fl": "mp"},
        "weight_axes": {"w1": 0, "w2": 0, "wg": 1}, "int32_bias": ["c1", "y"]}


def test_avx2_weights_keep_eight_bits_only_in_depthwise_convs():
    """On x86-avx2 weights get 7 bits (u8 x s8 pairs saturate an int16) except a depthwise Conv's, which
    onnxruntime runs on an exactly accumulating kernel; x86-vnni keeps 8 bits everywhere."""
    for target, regular, depthwise in (("x86-avx2", 63, 127), ("x86-vnni", 127, 127)):
        model = cnn_model()
        PassManager([InferShapes(), AssignPrecision(target=target)], verify="off")(model)
        weights = {name: model.graph.initializers[name].quant for name in ("w1", "wd")}
        peaks = {name: np.abs(model.graph.initializers[name].const).reshape(8, -1).max(axis=1) for name in weights}
        np.testing.assert_allclose(weights["w1"].scale, peaks["w1"] / regular, rtol=1e-6)
        np.testing.assert_allclose(weights["wd"].scale, peaks["wd"] / depthwise, rtol=1e-6)


def test_onnxruntime_accumulates_a_full_range_depthwise_conv_exactly():
    """What the depthwise exception rests on, on the machine the tests run on (AVX2-only or VNNI): a depthwise
    QLinearConv with x = 255 and w = ±127 over a 3x3 window, whose u8 x s8 pair sums would overflow an int16
    (2 · 255 · 127 = 64,770), gives the int32 result."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    channels = 4
    w = np.full((channels, 1, 3, 3), 127, np.int8)
    w[1::2] = -127
    params = {"xs": np.array(1.0, np.float32), "xz": np.array(0, np.uint8), "w": w, "ws": np.ones(channels, np.float32),
              "wz": np.zeros(channels, np.int8), "ys": np.array(4000.0, np.float32), "yz": np.array(128, np.uint8)}
    node = helper.make_node("QLinearConv", ["x", "xs", "xz", "w", "ws", "wz", "ys", "yz"], ["y"], group=channels)
    graph = helper.make_graph([node], "depthwise_probe",
                              [helper.make_tensor_value_info("x", TensorProto.UINT8, [1, channels, 3, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.UINT8, None)],
                              [numpy_helper.from_array(v, k) for k, v in params.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    got = session.run(None, {"x": np.full((1, channels, 3, 3), 255, np.uint8)})[0].reshape(channels)
    exact = np.rint(9 * 255 * w[:, 0, 0, 0].astype(np.int64) / 4000.0 + 128)  # 128 ± 73; pair saturation: 128 ± 41
    np.testing.assert_array_equal(got, exact)
