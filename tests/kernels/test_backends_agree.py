"""Every jit kernel matches the reference bit for bit: seeded random shapes, zero points at the
extremes, edge values (0, 255, -128, 127), saturation, int32 wrap-around, both accumulation profiles."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto
from onnx.helper import tensor_dtype_to_np_dtype

from qcompiler.kernels import RUNTIME, default_registry
from qcompiler.kernels.jit import JIT, loops
from qcompiler.kernels.reference import ACCUMULATIONS, REFERENCE, integer_matmul
from qcompiler.kernels.reference.quantize import integer_range

EDGES = {np.uint8: [0, 1, 127, 128, 254, 255], np.int8: [-128, -127, -1, 0, 1, 126, 127]}
TYPE_PAIRS = [(np.uint8, np.int8), (np.uint8, np.uint8), (np.int8, np.int8), (np.int8, np.uint8)]
SEEDS = range(8)


def both(op_type: str, *args, opset: int = 21, **kwargs):
    """``(reference result, jit result)``."""
    return tuple(default_registry.lookup("", op_type, opset, backends=(backend,))(*args, **kwargs)
                 for backend in ("reference", "jit"))


def assert_agree(pair):
    reference, jit = pair
    assert reference.dtype == jit.dtype and reference.shape == jit.shape
    np.testing.assert_array_equal(jit, reference)


def draw(rng, dtype, shape, edge: bool):
    if edge:
        return rng.choice(np.array(EDGES[dtype], dtype), shape)
    info = np.iinfo(dtype)
    return rng.integers(info.min, info.max + 1, shape).astype(dtype)


def zero_point(rng, dtype, shape=()):
    info = np.iinfo(dtype)
    return rng.choice(np.array([info.min, info.max, 0, info.min + 1, info.max - 1], dtype), shape)


@pytest.mark.parametrize("accumulation", ACCUMULATIONS)
@pytest.mark.parametrize("seed", SEEDS)
def test_matmul_ops(seed, accumulation):
    rng = np.random.default_rng(seed)
    at, bt = TYPE_PAIRS[seed % len(TYPE_PAIRS)]
    batch = tuple(rng.integers(1, 4, rng.integers(0, 3)))
    m, k, n = rng.integers(1, 40, 3)
    b_shape = (k, n) if seed % 3 else batch[-1:] + (k, n)
    a, b = draw(rng, at, batch + (m, k), edge=seed % 2 == 0), draw(rng, bt, b_shape, edge=seed % 2 == 0)
    za, zb = zero_point(rng, at), zero_point(rng, bt, (n,) if len(b_shape) == 2 else ())
    assert_agree(both("MatMulInteger", a, b, za, zb, accumulation=accumulation))
    scales = rng.uniform(1e-3, 0.05, 3).astype(np.float32)
    b_scale = rng.uniform(1e-3, 0.05, n).astype(np.float32) if len(b_shape) == 2 else scales[1]
    y = both("QLinearMatMul", a, scales[0], za, b, b_scale, zb, scales[2], zero_point(rng, at),
             accumulation=accumulation)
    assert_agree(y)
    assert np.isin(y[0], [np.iinfo(at).min, np.iinfo(at).max]).any() or seed % 2  # edge seeds saturate


def random_conv(rng):
    nd = int(rng.integers(1, 4))
    group = int(rng.choice([1, 2, 3]))
    cg, mg = int(rng.integers(1, 4)), int(rng.integers(1, 4))
    kernel = [int(v) for v in rng.integers(1, 4, nd)]
    dilations = [int(v) for v in rng.integers(1, 3, nd)]
    strides = [int(v) for v in rng.integers(1, 3, nd)]
    spatial = [int((k - 1) * d + 1 + rng.integers(0, 4)) for k, d in zip(kernel, dilations, strict=True)]
    attrs = dict(group=group, strides=strides, dilations=dilations)
    if rng.random() < 0.5:
        attrs["pads"] = [int(v) for v in rng.integers(0, 3, 2 * nd)]
    else:
        attrs["auto_pad"] = str(rng.choice(["SAME_UPPER", "SAME_LOWER", "VALID"]))
    return (int(rng.integers(1, 3)), group * cg) + tuple(spatial), (group * mg, cg) + tuple(kernel), attrs


@pytest.mark.parametrize("accumulation", ACCUMULATIONS)
@pytest.mark.parametrize("seed", SEEDS)
def test_conv_ops(seed, accumulation):
    rng = np.random.default_rng(100 + seed)
    xt, wt = TYPE_PAIRS[seed % len(TYPE_PAIRS)]
    x_shape, w_shape, attrs = random_conv(rng)
    x, w = draw(rng, xt, x_shape, edge=seed % 2 == 0), draw(rng, wt, w_shape, edge=seed % 2 == 0)
    m = w_shape[0]
    wz = zero_point(rng, wt, (m,)) if seed % 3 else zero_point(rng, wt)
    assert_agree(both("ConvInteger", x, w, zero_point(rng, xt), wz, accumulation=accumulation, **attrs))
    w_scale = rng.uniform(1e-3, 0.02, m).astype(np.float32) if np.ndim(wz) else np.float32(0.01)
    bias = rng.integers(-2**20, 2**20, m).astype(np.int32) if seed % 2 else None
    assert_agree(both("QLinearConv", x, np.float32(0.02), zero_point(rng, xt), w, w_scale, wz, np.float32(0.5),
                      zero_point(rng, xt), bias, accumulation=accumulation, **attrs))


FLOAT_EDGES = np.array([0.5, 1.5, 2.5, -0.5, -2.5, 127.5, -128.5, 255.5, 1e30, -1e30, np.inf, -np.inf, np.nan, 0.0],
                       np.float32)


Q_TYPES = [np.uint8, np.int8, np.uint16, np.int16, tensor_dtype_to_np_dtype(TensorProto.INT4),
           tensor_dtype_to_np_dtype(TensorProto.UINT4)]


@pytest.mark.parametrize("dtype", Q_TYPES, ids=lambda t: np.dtype(t).name)
@pytest.mark.parametrize("granularity", ["tensor", "axis", "blocked"])
def test_quantize_linear(granularity, dtype):
    rng = np.random.default_rng(len(granularity))
    x = np.concatenate([FLOAT_EDGES, rng.normal(0, 100, 4 * 7 * 3 - FLOAT_EDGES.size)]).astype(np.float32)
    x = x.reshape(4, 7, 3)
    shape, attrs = {"tensor": ((), {}), "axis": ((7,), dict(axis=-2)),
                    "blocked": ((4, 3, 3), dict(axis=1, block_size=3))}[granularity]
    scale = rng.choice(np.array([0.5, 1.0, 0.37, 2.0], np.float32), shape)
    lo, hi = integer_range(dtype)
    zp = rng.integers(lo, hi + 1, shape).astype(dtype)
    assert_agree(both("QuantizeLinear", x, scale, zp, **attrs))
    with np.errstate(over="ignore"):
        x16 = x.astype(np.float16)  # 1e30 -> inf
    assert_agree(both("QuantizeLinear", x16, scale, zp, **attrs))  # not float32: jit falls back


@pytest.mark.parametrize("dtype", Q_TYPES + [np.int32], ids=lambda t: np.dtype(t).name)
@pytest.mark.parametrize("granularity", ["tensor", "axis", "blocked"])
def test_dequantize_linear(granularity, dtype):
    rng = np.random.default_rng([len(granularity), np.dtype(dtype).itemsize])
    lo, hi = (-2**31, 2**31 - 1) if dtype == np.int32 else integer_range(dtype)
    x = np.concatenate([[lo, hi, 0], rng.integers(lo, hi + 1, 4 * 7 * 3 - 3)]).astype(dtype).reshape(4, 7, 3)
    shape, attrs = {"tensor": ((), {}), "axis": ((7,), dict(axis=-2)),
                    "blocked": ((4, 3, 3), dict(axis=1, block_size=3))}[granularity]
    scale = rng.choice(np.array([0.5, 1e-3, 0.37, 3.3e-5], np.float32), shape)
    zp = None if dtype == np.int32 else rng.integers(lo, hi + 1, shape).astype(dtype)
    assert_agree(both("DequantizeLinear", x, scale, zp, **attrs))
    if dtype != np.int32:  # int32 values overflow float16
        assert_agree(both("DequantizeLinear", x, scale.astype(np.float16), zp, **attrs))  # not float32: falls back


@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.uint16, np.int16])
def test_requantize(dtype):
    rng = np.random.default_rng(3)
    acc = np.concatenate([[-2**31, 2**31 - 1, 0, 1, -1, 3, 5, -3], rng.integers(-2**31, 2**31, 200)]).astype(np.int32)
    acc = np.concatenate([acc, rng.integers(-3000, 3000, 200).astype(np.int32)]).reshape(2, -1, 2)
    multiplier = rng.choice(np.array([0.5, 0.25, 1e-4, 3.1e-2, 1.0], np.float32), (1, acc.shape[1], 1))
    zp = zero_point(rng, dtype)
    np.testing.assert_array_equal(JIT.requantize(acc, multiplier, zp, dtype),
                                  REFERENCE.requantize(acc, multiplier, zp, dtype))


@pytest.mark.parametrize("gemm", ["gemm_exact", "gemm_pair_saturate"])
def test_gemm_loops_wrap_around_like_the_reference(gemm):
    k = 70_001  # odd, and 70001 * 255 * 255 leaves int32
    a = np.full((1, 2, k), 255, np.int16)
    b = np.stack([np.full(k, 255), np.full(k, -128)], axis=1).astype(np.int16)[None]
    reference, jit = getattr(REFERENCE, gemm)(a, b), getattr(JIT, gemm)(a, b)
    np.testing.assert_array_equal(jit, reference)
    if gemm == "gemm_exact":
        assert reference[0, 0, 0] == (k * 255 * 255 + 2**31) % 2**32 - 2**31


def test_each_loop_compiles_for_one_signature():
    """Wrappers cast their arguments, so odd inputs (int8, strided, read-only) add no compilation."""
    a = np.arange(24, dtype=np.int8).reshape(2, 3, 4)[:, :, ::2]
    for n in (3, loops.NARROW):  # the dot-product form and the column form
        b = np.ones((2, 2, n), np.uint8)
        b.flags.writeable = False
        JIT.gemm_exact(a, b)
        JIT.gemm_pair_saturate(a, b)
    JIT.requantize(np.arange(6, dtype=np.int64)[::2], 0.5, np.uint8(1), np.uint8)
    loops.quantize(np.ones(3, np.float32), np.float32(1), 0, np.int8)
    JIT.depthwise2d(np.ones((1, 2, 3, 3), np.int8), np.ones((2, 2, 2), np.int64), (1, 1), (1, 1), (2, 2))
    loops.dequantize(np.ones(3, np.uint8), np.float32(1), np.uint8(2))
    for fn in (loops._gemm_pair_saturate, loops._gemm_pair_saturate_dot, loops._requantize, loops._quantize,
               loops._dequantize, loops._depthwise2d):
        assert len(fn.signatures) == 1, (fn, fn.signatures)


@pytest.mark.parametrize("accumulation", ACCUMULATIONS)
@pytest.mark.parametrize("n", [1, loops.NARROW - 1, loops.NARROW, 97])
def test_both_gemm_forms_match_the_reference(n, accumulation):
    """Columns on both sides of ``NARROW`` (the pair-saturating forms), odd K, edge values that saturate
    pairs, K beyond one exact float32 slice (the exact BLAS form)."""
    rng = np.random.default_rng(n)
    a = rng.choice(np.array([0, 1, 254, 255], np.uint8), (2, 9, 601))
    b = rng.choice(np.array([-128, -127, 126, 127], np.int8), (2, 601, n))
    reference = integer_matmul(a, b, np.uint8(3), np.int8(1), accumulation=accumulation, arith=REFERENCE)
    np.testing.assert_array_equal(integer_matmul(a, b, np.uint8(3), np.int8(1), accumulation=accumulation, arith=JIT),
                                  reference)


@pytest.mark.parametrize("seed", range(6))
def test_depthwise_loop_matches_the_im2col_reference(seed):
    """The jit depthwise 2-D loop against the reference's im2col GEMM (strides, dilations, pads, zero points)."""
    rng = np.random.default_rng(300 + seed)
    c, k = int(rng.integers(1, 9)), [int(v) for v in rng.integers(1, 6, 2)]
    dilations, strides = [int(v) for v in rng.integers(1, 3, 2)], [int(v) for v in rng.integers(1, 3, 2)]
    x = draw(rng, np.uint8, (int(rng.integers(1, 3)), c) + tuple(int((kk - 1) * d + 1 + rng.integers(0, 6))
                                                                  for kk, d in zip(k, dilations)), edge=seed % 2 == 0)
    w = draw(rng, np.int8, (c, 1) + tuple(k), edge=seed % 2 == 0)
    attrs = dict(group=c, strides=strides, dilations=dilations, pads=[int(v) for v in rng.integers(0, 3, 4)])
    for op, args in (("ConvInteger", (x, w, np.uint8(7), np.int8(-3))),
                     ("QLinearConv", (x, np.float32(0.02), np.uint8(7), w, rng.uniform(0.001, 0.01, c).astype(np.float32),
                                      np.zeros(c, np.int8), np.float32(0.05), np.uint8(128),
                                      rng.integers(-999, 999, c).astype(np.int32)))):
        assert_agree(both(op, *args, opset=13, **attrs))


# -- prepared kernels (kernels.jit.prepared): specialized for constant inputs, same results ---------------

def prepared(op_type: str, args: tuple, opset: int = 21, **attrs):
    """``(reference result, prepared result)``; the first argument is the runtime input."""
    jit = default_registry.lookup("", op_type, opset, backends=("jit",))
    kernel = jit.prepare((RUNTIME,) + tuple(args[1:]), **attrs)
    assert kernel is not None, f"{op_type} not prepared"
    reference = default_registry.lookup("", op_type, opset, backends=("reference",))(*args, **attrs)
    return reference, kernel(*args)


def random_weights(rng, dtype, shape, edge: bool):
    """Edge weights, or weights spread like trained ones (most small, a few large)."""
    if edge or dtype != np.int8:
        return draw(rng, dtype, shape, edge)
    return np.clip(np.rint(rng.laplace(0, 25, shape)), -128, 127).astype(np.int8)


@pytest.mark.parametrize("accumulation", ACCUMULATIONS)
@pytest.mark.parametrize("seed", range(24))
def test_prepared_qlinear_conv(seed, accumulation):
    """1-D and 2-D convolutions: groups, depthwise, strides, dilations, pads, batches, per-channel and
    per-tensor zero points, edge values that saturate AVX2 pairs."""
    rng = np.random.default_rng(500 + seed)
    xt, wt = TYPE_PAIRS[seed % 2 * 2 if seed % 4 else 1]  # mostly u8 x s8 (the saturating pair), some s8 x s8, u8 x u8
    x_shape, w_shape, attrs = random_conv(rng)
    if len(x_shape) > 4:  # 3-D convolutions are not prepared
        x_shape, w_shape = x_shape[:4], w_shape[:4]
        attrs = {k: v[:2] if k in ("strides", "dilations") else v[:2] + v[3:5] if k == "pads" else v
                 for k, v in attrs.items()}
    if seed % 3 == 0:  # depthwise
        channels = int(rng.integers(1, 6))
        x_shape, w_shape = (x_shape[0], channels) + x_shape[2:], (channels, 1) + w_shape[2:]
        attrs["group"] = channels
    edge = seed % 2 == 0
    x, w = draw(rng, xt, x_shape, edge), random_weights(rng, wt, w_shape, edge)
    m = w_shape[0]
    wz = np.zeros(m, wt) if seed % 5 == 0 else zero_point(rng, wt, (m,)) if seed % 3 or seed % 2 else zero_point(rng, wt)
    w_scale = rng.uniform(1e-3, 0.02, m).astype(np.float32) if np.ndim(wz) else np.float32(0.01)
    bias = rng.integers(-2**20, 2**20, m).astype(np.int32) if seed % 2 else None
    assert_agree(prepared("QLinearConv", (x, np.float32(0.02), zero_point(rng, xt), w, w_scale, wz, np.float32(0.5),
                                          zero_point(rng, xt), bias), accumulation=accumulation, **attrs))


@pytest.mark.parametrize("accumulation", ACCUMULATIONS)
@pytest.mark.parametrize("channels", [600, 7])
def test_prepared_conv_float64_and_pair_corrections(channels, accumulation):
    """A K whose sums leave float32's exact range (float64 GEMM), and one that stays in it; weights that
    make many AVX2 pairs saturate."""
    rng = np.random.default_rng(channels)
    x = rng.choice(np.array([0, 1, 254, 255], np.uint8), (1, channels, 5, 6))
    w = rng.choice(np.array([-128, -127, -1, 0, 126, 127], np.int8), (4, channels, 3, 3))
    args = (x, np.float32(0.02), np.uint8(3), w, np.float32(1e-4), np.int8(0), np.float32(0.5), np.uint8(128), None)
    assert_agree(prepared("QLinearConv", args, pads=[1, 1, 1, 1], accumulation=accumulation))
    if accumulation != "exact":
        exact = default_registry.lookup("", "QLinearConv", 21, ("reference",))(*args, pads=[1, 1, 1, 1])
        assert not np.array_equal(exact, prepared("QLinearConv", args, pads=[1, 1, 1, 1],
                                                  accumulation=accumulation)[1])  # the pairs did saturate


@pytest.mark.parametrize("accumulation", ACCUMULATIONS)
@pytest.mark.parametrize("seed", range(12))
def test_prepared_qlinear_matmul(seed, accumulation):
    rng = np.random.default_rng(700 + seed)
    at, bt = TYPE_PAIRS[seed % 2 * 2 if seed % 4 else 1]
    m, k, n = (int(v) for v in rng.integers(1, 40, 3))
    a_shape = ((k,), (m, k), (2, m, k))[seed % 3]
    edge = seed % 2 == 0
    a, b = draw(rng, at, a_shape, edge), random_weights(rng, bt, (k, n), edge)
    zb = zero_point(rng, bt, (n,)) if seed % 4 else zero_point(rng, bt)
    b_scale = rng.uniform(1e-3, 0.05, n).astype(np.float32) if np.ndim(zb) else np.float32(0.01)
    assert_agree(prepared("QLinearMatMul", (a, np.float32(0.03), zero_point(rng, at), b, b_scale, zb,
                                            np.float32(0.2), zero_point(rng, at)), accumulation=accumulation))


@pytest.mark.parametrize("seed", range(8))
def test_prepared_qlinear_matmul_of_two_runtime_operands(seed):
    """Attention's products: both operands computed at run time, batches broadcast, K past float32's exact range."""
    rng = np.random.default_rng(800 + seed)
    at, bt = TYPE_PAIRS[seed % len(TYPE_PAIRS)]
    m, n = (int(v) for v in rng.integers(1, 20, 2))
    k = 300 if seed == 0 else int(rng.integers(1, 40))
    batch = ((), (3,), (2, 3))[seed % 3]
    a, b = draw(rng, at, batch + (m, k), seed % 2 == 0), draw(rng, bt, batch[1:] + (k, n), seed % 2 == 0)
    args = (a, np.float32(0.03), zero_point(rng, at), b, np.float32(0.02), zero_point(rng, bt), np.float32(0.2),
            zero_point(rng, at))
    jit = default_registry.lookup("", "QLinearMatMul", 21, backends=("jit",))
    kernel = jit.prepare((RUNTIME, *args[1:3], RUNTIME, *args[4:]))
    assert_agree((default_registry.lookup("", "QLinearMatMul", 21, backends=("reference",))(*args), kernel(*args)))


@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.uint16, np.int16], ids=lambda t: np.dtype(t).name)
@pytest.mark.parametrize("granularity", ["tensor", "axis"])
def test_prepared_quantize_and_dequantize(granularity, dtype):
    rng = np.random.default_rng(9)
    x = np.concatenate([FLOAT_EDGES, rng.normal(0, 100, 4 * 7 * 3 - FLOAT_EDGES.size)]).astype(np.float32)
    x = x.reshape(4, 7, 3)
    shape, attrs = {"tensor": ((), {}), "axis": ((7,), dict(axis=-2))}[granularity]
    scale = rng.choice(np.array([0.5, 1.0, 0.37, 2.0], np.float32), shape)
    lo, hi = integer_range(dtype)
    zp = rng.integers(lo, hi + 1, shape).astype(dtype)
    reference, quantized = prepared("QuantizeLinear", (x, scale, zp), **attrs)
    assert_agree((reference, quantized))
    assert_agree(prepared("QuantizeLinear", (x.astype(np.float64), scale, zp), **attrs))  # falls back
    assert_agree(prepared("DequantizeLinear", (quantized, scale, zp), **attrs))
    assert_agree(prepared("DequantizeLinear", (quantized.astype(np.int32), scale, None), **attrs))  # falls back


def test_hard_sigmoid():
    x = np.concatenate([FLOAT_EDGES, np.linspace(-5, 5, 101, dtype=np.float32)])
    for array in (x, x.astype(np.float64)):
        assert_agree(both("HardSigmoid", array, alpha=0.1666667, beta=0.5))
