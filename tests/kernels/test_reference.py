"""Reference kernel semantics: rounding, saturation, granularities, types, shapes; conv geometry against
``onnx.reference``; int32 wrap-around."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper
from onnx.helper import tensor_dtype_to_np_dtype
from onnx.reference import ReferenceEvaluator

from qcompiler.kernels.reference import conv, matmul, quantize

INT4, UINT4, INT2 = (tensor_dtype_to_np_dtype(t) for t in (TensorProto.INT4, TensorProto.UINT4, TensorProto.INT2))
HALVES = np.array([0.5, 1.5, 2.5, -0.5, -1.5, -2.5], np.float32)


def test_quantize_rounds_half_to_even_and_saturates():
    np.testing.assert_array_equal(quantize.QuantizeLinear(HALVES, np.float32(1), np.int8(0)), [0, 2, 2, 0, -2, -2])
    x = np.array([300, -300, np.inf, -np.inf, np.nan, 127.5], np.float32)
    np.testing.assert_array_equal(quantize.QuantizeLinear(x, np.float32(1), np.int8(-1)),
                                  [127, -128, 127, -128, -128, 127])
    np.testing.assert_array_equal(quantize.QuantizeLinear(x, np.float32(1), np.uint8(128)), [255, 0, 255, 0, 0, 255])


@pytest.mark.parametrize(
    "zero_point, output_dtype, dtype, lo, hi",
    [
        (None, 0, np.uint8, 0, 255),
        (None, TensorProto.INT8, np.int8, -128, 127),
        (np.uint16(0), 0, np.uint16, 0, 65535),
        (np.int16(0), TensorProto.INT16, np.int16, -32768, 32767),
        (None, TensorProto.INT4, INT4, -8, 7),
        (np.zeros((), UINT4), 0, UINT4, 0, 15),
        (None, TensorProto.INT2, INT2, -2, 1),
    ],
)
def test_quantize_output_types(zero_point, output_dtype, dtype, lo, hi):
    x = np.array([-1e6, -3, 3, 1e6], np.float32)
    y = quantize.QuantizeLinear(x, np.float32(1), zero_point, output_dtype=output_dtype)
    assert y.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(y.astype(np.int64), [lo, max(lo, -3), min(hi, 3), hi])


def test_quantize_refuses_float8_and_mismatched_output_dtype():
    with pytest.raises(NotImplementedError):
        quantize.QuantizeLinear(HALVES, np.float32(1), output_dtype=TensorProto.FLOAT8E4M3FN)
    with pytest.raises(ValueError, match="disagrees"):
        quantize.QuantizeLinear(HALVES, np.float32(1), np.uint8(0), output_dtype=TensorProto.INT8)


def test_granularities_broadcast_like_the_spec():
    x = np.arange(2 * 5, dtype=np.float32).reshape(2, 5)
    per_axis = quantize.QuantizeLinear(x, np.array([1, 2], np.float32), np.array([0, 10], np.uint8), axis=0)
    np.testing.assert_array_equal(per_axis, [[0, 1, 2, 3, 4], [12, 13, 14, 14, 14]])  # 2.5->2, 3.5->4, 4.5->4
    scale = np.array([[1, 2, 4], [1, 1, 1]], np.float32)  # blocks of 2 along axis 1; the last one partial
    blocked = quantize.QuantizeLinear(x, scale, axis=-1, block_size=2)
    np.testing.assert_array_equal(blocked, [[0, 1, 1, 2, 1], [5, 6, 7, 8, 9]])
    back = quantize.DequantizeLinear(blocked, scale, axis=1, block_size=2)
    np.testing.assert_array_equal(back, [[0, 1, 2, 4, 4], [5, 6, 7, 8, 9]])
    with pytest.raises(ValueError, match="blocked parameter"):
        quantize.QuantizeLinear(x, scale[:, :2], axis=1, block_size=2)
    with pytest.raises(ValueError, match="per-axis parameter"):
        quantize.QuantizeLinear(x, np.ones(3, np.float32), axis=0)


def test_quantize_precision_and_dequantize_output_dtype_match_onnx_reference():
    x = np.array([1000.3, -7.77, 0.1, 9000.0, 0.15], np.float32)
    scale = np.float32(0.3)
    node = helper.make_node("QuantizeLinear", ["x", "s", "z"], ["y"], precision=TensorProto.FLOAT16)
    model = helper.make_model(helper.make_graph(
        [node], "g", [helper.make_tensor_value_info(n, t, None) for n, t in
                      [("x", TensorProto.FLOAT), ("s", TensorProto.FLOAT), ("z", TensorProto.INT16)]],
        [helper.make_tensor_value_info("y", TensorProto.INT16, None)]), opset_imports=[helper.make_opsetid("", 23)])
    expected = ReferenceEvaluator(model).run(None, {"x": x, "s": scale, "z": np.int16(3)})[0]
    np.testing.assert_array_equal(
        quantize.QuantizeLinear(x, scale, np.int16(3), precision=TensorProto.FLOAT16), expected)
    y = quantize.DequantizeLinear(np.array([0, 255], np.uint8), scale, np.uint8(1), output_dtype=TensorProto.FLOAT16)
    assert y.dtype == np.float16
    np.testing.assert_array_equal(y, np.array([-1, 254], np.float16) * np.float16(scale))


def test_requantize_is_float32_round_half_even_then_saturate():
    acc = np.array([1, 3, 5, -1, -3, 10**6, -10**6, 2**24 + 1], np.int32)
    y = quantize.requantize(acc, np.float32(0.5), 10, np.int16)
    np.testing.assert_array_equal(y, [10, 12, 12, 10, 8, 32767, -32768, 32767])
    # float32(2**24 + 1) == 2**24: the multiply sees the float32 accumulator, as MLAS does
    np.testing.assert_array_equal(quantize.requantize(acc[-1:], np.float32(2**-10), 0, np.int16), [16384])


def _onnx_reference_conv_integer(x, w, **attrs):
    node = helper.make_node("ConvInteger", ["x", "w", "xz"], ["y"], **attrs)
    inputs = [helper.make_tensor_value_info(n, TensorProto.UINT8, None) for n in ("x", "w", "xz")]
    graph = helper.make_graph([node], "g", inputs, [helper.make_tensor_value_info("y", TensorProto.INT32, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 10)])
    return ReferenceEvaluator(model).run(None, {"x": x, "w": w, "xz": np.uint8(3)})[0]


CONV_GEOMETRIES = {
    "pads_asym_stride": ((1, 2, 7, 6), (3, 2, 3, 2), dict(pads=[1, 0, 2, 1], strides=[2, 3])),
    "dilation_same_upper": ((1, 2, 9, 9), (2, 2, 3, 3), dict(dilations=[2, 2], auto_pad="SAME_UPPER")),
    "same_lower_stride": ((2, 3, 6, 7), (4, 3, 2, 3), dict(auto_pad="SAME_LOWER", strides=[2, 2])),
    "valid": ((1, 1, 5, 5), (1, 1, 2, 2), dict(auto_pad="VALID")),
    "groups3": ((1, 6, 5, 5), (6, 2, 3, 3), dict(group=3, pads=[1, 1, 1, 1])),
    "conv1d": ((2, 2, 11), (3, 2, 4), dict(strides=[3], pads=[2, 2])),
    "conv3d": ((1, 2, 4, 5, 3), (2, 2, 2, 3, 2), dict(pads=[0, 1, 1, 1, 0, 0], dilations=[2, 1, 1])),
}


@pytest.mark.parametrize("name", list(CONV_GEOMETRIES))
def test_conv_geometry_matches_onnx_reference(name):
    x_shape, w_shape, attrs = CONV_GEOMETRIES[name]
    rng = np.random.default_rng(len(name))
    x, w = rng.integers(0, 256, x_shape).astype(np.uint8), rng.integers(0, 256, w_shape).astype(np.uint8)
    expected = _onnx_reference_conv_integer(x, w, **attrs)
    np.testing.assert_array_equal(conv.ConvInteger(x, w, np.uint8(3), **attrs), expected)


def test_conv_rejects_bad_channels_and_per_channel_input_zero_point():
    x, w = np.zeros((1, 4, 3, 3), np.uint8), np.zeros((2, 3, 1, 1), np.uint8)
    with pytest.raises(ValueError, match="channels"):
        conv.ConvInteger(x, w)
    with pytest.raises(ValueError, match="x_zero_point"):
        conv.ConvInteger(x, np.zeros((2, 4, 1, 1), np.uint8), np.zeros(4, np.uint8))


@pytest.mark.parametrize(
    "a_shape, b_shape",
    [((3,), (3, 4)), ((5, 3), (3,)), ((3,), (3,)), ((2, 1, 4, 3), (5, 3, 2)), ((4, 3), (2, 3, 6))],
)
def test_matmul_shapes_follow_numpy(a_shape, b_shape):
    rng = np.random.default_rng(0)
    a, b = rng.integers(0, 256, a_shape).astype(np.uint8), rng.integers(-128, 128, b_shape).astype(np.int8)
    expected = np.matmul(a.astype(np.int64) - 7, b.astype(np.int64) + 2)
    np.testing.assert_array_equal(matmul.MatMulInteger(a, b, np.uint8(7), np.int8(-2)), expected)


def test_matmul_per_row_and_per_column_zero_points_and_scales():
    rng = np.random.default_rng(1)
    a, b = rng.integers(0, 256, (2, 3, 4)).astype(np.uint8), rng.integers(0, 256, (4, 5)).astype(np.uint8)
    za, zb = np.array([1, 2, 3], np.uint8), np.arange(5).astype(np.uint8)
    expected = (a.astype(np.int64) - za.reshape(3, 1)) @ (b.astype(np.int64) - zb)
    np.testing.assert_array_equal(matmul.MatMulInteger(a, b, za, zb), expected)
    a_scale, b_scale = np.array([1, 2, 4], np.float32).reshape(3, 1), np.full(5, 0.5, np.float32)
    y = matmul.QLinearMatMul(a, a_scale, za.reshape(3, 1), b, b_scale, zb, np.float32(64), np.int16(0))
    multiplier = (a_scale * b_scale / np.float32(64)).astype(np.float32)
    np.testing.assert_array_equal(y, np.rint(expected.astype(np.float32) * multiplier).astype(np.int16))


def test_accumulation_wraps_modulo_2_to_the_32():
    k = 70_000  # 70000 * 255 * 255 > 2**31
    a, b = np.full((1, k), 255, np.uint8), np.full((k, 1), 255, np.uint8)
    exact = k * 255 * 255
    wrapped = (exact + 2**31) % 2**32 - 2**31
    assert matmul.MatMulInteger(a, b).item() == wrapped
    assert matmul.MatMulInteger(a, b, accumulation="avx2_pair_saturate").item() == wrapped  # u8 x u8: exact path
