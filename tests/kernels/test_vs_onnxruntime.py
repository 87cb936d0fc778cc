"""onnxruntime (CPU provider, graph optimizations off) vs our kernels on one-node models: bit-exact.

Every integer GEMM kernel (QLinearConv, ConvInteger, QLinearMatMul, MatMulInteger) runs under the
accumulation profile of the onnxruntime this runs on, as :func:`qcompiler.targets.runtime_saturates_u8s8`
measures it (``avx2_pair_saturate`` on x86 without VNNI, ``exact`` with VNNI or on Arm), not as the
CPU flags suggest. QLinearConv and QLinearMatMul draw int8 weights from [-64, 63] so that no int16
pair of u8 x s8 products saturates (2 * 255 * 64 < 32767): the two profiles agree there. MatMulInteger
and ConvInteger take the full int8 range: on AVX2 without VNNI MatMulInteger's u8 x s8 pairs do
saturate (and onnxruntime's ConvInteger, an s8 x u8 GEMM, stays exact). The extreme-value cases at
the end make the profiles differ and check that this host's is the one onnxruntime computes.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest

from qcompiler.kernels import default_registry
from qcompiler.targets import runtime_saturates_u8s8

RNG_SEED = 20240601
BACKENDS = ("reference", "jit")


def kernel(op_type: str, backend: str, opset: int = 13):
    return default_registry.lookup("", op_type, opset, backends=(backend,))


def ints(rng, dtype, shape, lo=None, hi=None):
    info = np.iinfo(dtype)
    return rng.integers(info.min if lo is None else lo, (info.max if hi is None else hi) + 1, shape).astype(dtype)


def weights(rng, dtype, shape):
    return ints(rng, dtype, shape, -64, 63) if dtype == np.int8 else ints(rng, dtype, shape)


def host_accumulation() -> str:
    """The accumulation profile of this machine's onnxruntime for u8 x s8, probed (not read from the
    CPU flags: the runtime picks its kernels itself)."""
    return "avx2_pair_saturate" if runtime_saturates_u8s8() else "exact"


def integer_kernel(op_type: str, backend: str):
    """An integer GEMM kernel of ours under this host's accumulation profile."""
    return functools.partial(kernel(op_type, backend), accumulation=host_accumulation())


CONVS = {  # name: (x shape, w shape, attributes)
    "3x3_pad": ((1, 3, 8, 8), (4, 3, 3, 3), dict(pads=[1, 1, 1, 1])),
    "group2_stride2_batch2": ((2, 4, 7, 7), (6, 2, 3, 3), dict(group=2, strides=[2, 2], pads=[1, 0, 1, 0])),
    "depthwise": ((1, 8, 6, 6), (8, 1, 3, 3), dict(group=8, pads=[1, 1, 1, 1])),
    "dilation2": ((1, 5, 9, 9), (7, 5, 3, 3), dict(dilations=[2, 1], pads=[2, 1, 1, 0])),
    "same_upper_stride2": ((1, 3, 7, 7), (4, 3, 3, 3), dict(strides=[2, 2], auto_pad="SAME_UPPER")),
    "same_lower_stride2": ((1, 4, 6, 6), (4, 4, 2, 2), dict(strides=[2, 2], auto_pad="SAME_LOWER")),
    "valid_rect": ((1, 3, 7, 5), (2, 3, 3, 2), dict(auto_pad="VALID")),
    "conv1d": ((1, 3, 10), (2, 3, 3), dict(pads=[2, 1])),
    "conv3d": ((1, 2, 4, 4, 4), (3, 2, 2, 2, 2), dict(pads=[1, 0, 0, 0, 1, 1])),
    "pointwise": ((1, 16, 5, 5), (8, 16, 1, 1), {}),
}
CONV_TYPES = [(np.uint8, np.int8), (np.uint8, np.uint8), (np.int8, np.int8)]


def qlinear_conv_inputs(rng, x_shape, w_shape, xt, wt, per_channel: bool, bias: bool, w=None, x=None):
    m, k = w_shape[0], int(np.prod(w_shape[1:]))
    x_scale, w_scale = np.float32(0.02), np.float32(0.005)
    return {
        "x": ints(rng, xt, x_shape) if x is None else x,
        "x_scale": x_scale,
        "x_zero_point": ints(rng, xt, ()),
        "w": weights(rng, wt, w_shape) if w is None else w,
        "w_scale": (w_scale * rng.uniform(0.5, 2.0, m)).astype(np.float32) if per_channel else w_scale,
        "w_zero_point": np.array(128 if wt == np.uint8 else rng.integers(-2, 3), wt),  # symmetric or not
        "y_scale": np.float32(x_scale * w_scale * 24 * np.sqrt(k)),
        "y_zero_point": ints(rng, xt, (), -20 if xt == np.int8 else 100, 20 if xt == np.int8 else 150),
        "B": rng.integers(-5000, 5000, m).astype(np.int32) if bias else None,
    }


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("xt, wt", CONV_TYPES, ids=lambda t: np.dtype(t).name)
@pytest.mark.parametrize("name", list(CONVS))
def test_qlinearconv(single_node, run_ort, name, xt, wt, backend):
    rng = np.random.default_rng([RNG_SEED, len(name)])
    x_shape, w_shape, attrs = CONVS[name]
    inputs = qlinear_conv_inputs(rng, x_shape, w_shape, xt, wt, per_channel=name != "pointwise", bias=True)
    model, feeds = single_node("QLinearConv", inputs, xt, **attrs)
    expected = run_ort(model, feeds)
    np.testing.assert_array_equal(integer_kernel("QLinearConv", backend)(*inputs.values(), **attrs), expected)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", ["3x3_pad", "group2_stride2_batch2", "conv1d", "pointwise"])
@pytest.mark.parametrize("wt", [np.uint8, np.int8], ids=lambda t: np.dtype(t).name)
def test_convinteger(single_node, run_ort, name, wt, backend):
    rng = np.random.default_rng([RNG_SEED, 1, len(name)])
    x_shape, w_shape, attrs = CONVS[name]
    inputs = {"x": ints(rng, np.uint8, x_shape), "w": ints(rng, wt, w_shape),
              "x_zero_point": np.uint8(131), "w_zero_point": ints(rng, wt, ())}
    model, feeds = single_node("ConvInteger", inputs, np.int32, **attrs)
    np.testing.assert_array_equal(integer_kernel("ConvInteger", backend)(*inputs.values(), **attrs),
                                  run_ort(model, feeds))


MATMULS = {  # name: (a shape, b shape)
    "2d": ((5, 7), (7, 3)),
    "k1": ((4, 1), (1, 6)),
    "batch3d": ((2, 3, 16), (2, 16, 5)),
    "weights2d_batch": ((2, 3, 9), (9, 4)),
    "broadcast_batch": ((2, 1, 3, 8), (4, 8, 5)),
}
MATMUL_TYPES = [(np.uint8, np.int8), (np.uint8, np.uint8), (np.int8, np.int8)]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("at, bt", MATMUL_TYPES, ids=lambda t: np.dtype(t).name)
@pytest.mark.parametrize("name", list(MATMULS))
def test_qlinearmatmul(single_node, run_ort, name, at, bt, backend):
    rng = np.random.default_rng([RNG_SEED, 2, len(name)])
    a_shape, b_shape = MATMULS[name]
    n = b_shape[-1]
    per_column = len(b_shape) == 2
    inputs = {
        "a": ints(rng, at, a_shape), "a_scale": np.float32(0.03), "a_zero_point": ints(rng, at, ()),
        "b": weights(rng, bt, b_shape),
        "b_scale": rng.uniform(0.002, 0.01, n).astype(np.float32) if per_column else np.float32(0.004),
        "b_zero_point": (ints(rng, bt, (n,), -3, 3) if bt == np.int8 else ints(rng, bt, (n,))) if per_column
        else ints(rng, bt, (), -3, 3),
        "y_scale": np.float32(0.03 * 0.004 * 24 * np.sqrt(a_shape[-1])),
        "y_zero_point": ints(rng, at, (), -10 if at == np.int8 else 120, 10 if at == np.int8 else 136),
    }
    model, feeds = single_node("QLinearMatMul", inputs, at)
    np.testing.assert_array_equal(integer_kernel("QLinearMatMul", backend)(*inputs.values()), run_ort(model, feeds))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("at, bt", MATMUL_TYPES, ids=lambda t: np.dtype(t).name)
@pytest.mark.parametrize("name", list(MATMULS))
def test_matmulinteger(single_node, run_ort, name, at, bt, backend):
    rng = np.random.default_rng([RNG_SEED, 3, len(name)])
    a_shape, b_shape = MATMULS[name]
    inputs = {"A": ints(rng, at, a_shape), "B": ints(rng, bt, b_shape),
              "a_zero_point": ints(rng, at, ()),
              "b_zero_point": ints(rng, bt, b_shape[-1:]) if len(b_shape) == 2 else ints(rng, bt, ())}
    model, feeds = single_node("MatMulInteger", inputs, np.int32)
    np.testing.assert_array_equal(integer_kernel("MatMulInteger", backend)(*inputs.values()), run_ort(model, feeds))


EDGE_FLOATS = np.array([0.0, 0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 126.5, 127.5, -128.5, 1e9, -1e9, np.inf, -np.inf, np.nan,
                        3.4e38, 1e-30], np.float32)
Q_TYPES = [np.uint8, np.int8, np.uint16, np.int16]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", Q_TYPES, ids=lambda t: np.dtype(t).name)
@pytest.mark.parametrize("granularity", ["tensor", "axis", "blocked"])
def test_quantize_dequantize_linear(single_node, run_ort, granularity, dtype, backend):
    rng = np.random.default_rng([RNG_SEED, 4, Q_TYPES.index(dtype)])
    x = np.concatenate([EDGE_FLOATS, rng.normal(0, 60, 3 * 6 * 4 - EDGE_FLOATS.size)]).astype(np.float32)
    x = x.reshape(3, 6, 4)
    scale_shape, attrs = {"tensor": ((), {}), "axis": ((6,), dict(axis=1)),
                          "blocked": ((3, 2, 4), dict(axis=1, block_size=4))}[granularity]
    scale = rng.uniform(0.25, 2.0, scale_shape).astype(np.float32)
    zero_point = ints(rng, dtype, scale_shape)
    model, feeds = single_node("QuantizeLinear", {"x": x, "y_scale": scale, "y_zero_point": zero_point}, dtype,
                               opset=21, **attrs)
    q = kernel("QuantizeLinear", backend, 21)(x, scale, zero_point, **attrs)
    np.testing.assert_array_equal(q, run_ort(model, feeds))
    model, feeds = single_node("DequantizeLinear", {"x": q, "x_scale": scale, "x_zero_point": zero_point},
                               np.float32, opset=21, **attrs)
    dequantize = default_registry.lookup("", "DequantizeLinear", 21)
    np.testing.assert_array_equal(dequantize(q, scale, zero_point, **attrs), run_ort(model, feeds))


def test_dequantize_int32_bias(single_node, run_ort):
    x = np.array([-2**31, -1, 0, 1, 2**24 + 1, 2**31 - 1], np.int32)
    model, feeds = single_node("DequantizeLinear", {"x": x, "x_scale": np.float32(0.001)}, np.float32)
    dequantize = default_registry.lookup("", "DequantizeLinear", 13)
    np.testing.assert_array_equal(dequantize(x, np.float32(0.001)), run_ort(model, feeds))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("op", ["QLinearMatMul", "QLinearConv"])
def test_extreme_values_follow_this_hosts_accumulation(single_node, run_ort, op, backend):
    accumulation = host_accumulation()
    rng = np.random.default_rng([RNG_SEED, 5])
    if op == "QLinearMatMul":
        a = rng.choice(np.array([0, 1, 254, 255], np.uint8), (6, 64))
        b = rng.choice(np.array([-128, -127, 126, 127], np.int8), (64, 5))
        inputs = {"a": a, "a_scale": np.float32(0.02), "a_zero_point": np.uint8(128), "b": b,
                  "b_scale": np.float32(0.01), "b_zero_point": np.int8(0), "y_scale": np.float32(2.0),
                  "y_zero_point": np.uint8(128)}
        attrs = {}
    else:
        x = rng.choice(np.array([0, 255], np.uint8), (1, 8, 5, 5))
        w = rng.choice(np.array([-128, 127], np.int8), (4, 8, 3, 3))
        inputs = qlinear_conv_inputs(rng, x.shape, w.shape, np.uint8, np.int8, per_channel=True, bias=False, w=w, x=x)
        inputs["y_scale"] = np.float32(inputs["y_scale"] / 4)
        attrs = dict(pads=[1, 1, 1, 1])
    model, feeds = single_node(op, inputs, np.uint8, **attrs)
    expected = run_ort(model, feeds)
    ours = {acc: kernel(op, backend)(*inputs.values(), **attrs, accumulation=acc)
            for acc in ("exact", "avx2_pair_saturate")}
    assert not np.array_equal(ours["exact"], ours["avx2_pair_saturate"])  # the case discriminates
    np.testing.assert_array_equal(ours[accumulation], expected)

