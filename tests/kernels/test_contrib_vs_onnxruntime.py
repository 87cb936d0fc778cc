"""The ``com.microsoft`` kernels onnxruntime's QDQ fusions create (QGemm, MatMulIntegerToFloat,
QLinearAdd, QLinearGlobalAveragePool, QLinearSoftmax): ours against onnxruntime's own, bit for bit.

The int8 weights are drawn from [-64, 63] so that no u8 x s8 pair can saturate: the cases are exact on
every x86 CPU, whatever its VNNI support (the saturating profile is tested in test_avx2_profile.py).
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from qcompiler.kernels import default_registry

MS = "com.microsoft"


def run_contrib(op_type: str, inputs: dict, out_type: int, **attrs) -> np.ndarray:
    """onnxruntime's ``com.microsoft::op_type``; the first input is fed, the rest are initializers."""
    names = list(inputs)
    first = inputs[names[0]]
    node = helper.make_node(op_type, [n if inputs[n] is not None else "" for n in names], ["y"], domain=MS, **attrs)
    graph = helper.make_graph(
        [node], op_type, [helper.make_tensor_value_info(names[0], helper.np_dtype_to_tensor_dtype(first.dtype),
                                                        first.shape)],
        [helper.make_tensor_value_info("y", out_type, None)],
        [numpy_helper.from_array(np.asarray(v), n) for n, v in list(inputs.items())[1:] if v is not None])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13), helper.make_opsetid(MS, 1)])
    model.ir_version = 10
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(None, {names[0]: first})[0]


def ours(op_type: str, backend: str, inputs: dict, **attrs) -> np.ndarray:
    kernel = default_registry.lookup(MS, op_type, 1, backends=(backend, "reference"))
    return kernel(*inputs.values(), **attrs)


def u8(rng, *shape):
    return rng.integers(0, 256, shape).astype(np.uint8)


@pytest.mark.parametrize("backend", ["reference", "jit"])
@pytest.mark.parametrize("trans_b, per_column, bias, quantized", [
    (0, True, True, True), (1, True, True, True), (1, False, False, True), (0, True, True, False), (1, True, False, False)])
def test_qgemm(backend, trans_b, per_column, bias, quantized):
    rng = np.random.default_rng([7, trans_b, per_column, bias, quantized])
    m, k, n = 5, 37, 11
    b = rng.integers(-64, 64, (n, k) if trans_b else (k, n)).astype(np.int8)
    inputs = {"A": u8(rng, m, k), "a_scale": np.float32(0.02), "a_zero_point": np.uint8(131), "B": b,
              "b_scale": rng.uniform(0.001, 0.01, n).astype(np.float32) if per_column else np.float32(0.004),
              "b_zero_point": np.zeros(n if per_column else (), np.int8),
              "C": rng.integers(-3000, 3000, n).astype(np.int32) if bias else None,
              "y_scale": np.float32(0.05) if quantized else None,
              "y_zero_point": np.uint8(120) if quantized else None}
    expected = run_contrib("QGemm", inputs, TensorProto.UINT8 if quantized else TensorProto.FLOAT, transB=trans_b)
    np.testing.assert_array_equal(ours("QGemm", backend, inputs, transB=trans_b), expected)


@pytest.mark.parametrize("backend", ["reference", "jit"])
def test_matmul_integer_to_float(backend):
    rng = np.random.default_rng(11)
    inputs = {"A": u8(rng, 2, 3, 24), "B": rng.integers(-64, 64, (24, 7)).astype(np.int8),
              "a_scale": np.float32(0.03), "b_scale": rng.uniform(0.001, 0.01, 7).astype(np.float32),
              "a_zero_point": np.uint8(140), "b_zero_point": np.zeros(7, np.int8),
              "bias": rng.normal(0, 1, 7).astype(np.float32)}
    expected = run_contrib("MatMulIntegerToFloat", inputs, TensorProto.FLOAT)
    np.testing.assert_allclose(ours("MatMulIntegerToFloat", backend, inputs), expected, rtol=1e-6, atol=1e-6)


ADD_SHAPES = {  # a shape, b shape (a is fed, b is an initializer)
    "same": ((2, 8, 5, 7), (2, 8, 5, 7)),
    "scalar_b": ((3, 40), ()),
    "per_channel_b": ((1, 16, 6, 6), (1, 16, 1, 1)),
    "row_b": ((4, 6, 33), (33,)),
    "tail": ((77,), (77,)),
}


@pytest.mark.parametrize("name", list(ADD_SHAPES))
def test_qlinear_add(name):
    rng = np.random.default_rng([13, len(name)])
    a_shape, b_shape = ADD_SHAPES[name]
    for trial in range(4):  # scales with many ties after rounding, and random ones
        scales = (np.float32([0.5, 0.25, 1.0]) if trial == 0 else rng.uniform(0.005, 0.1, 3).astype(np.float32))
        inputs = {"A": u8(rng, *a_shape), "A_scale": scales[0], "A_zero_point": np.uint8(rng.integers(0, 256)),
                  "B": np.asarray(u8(rng, *b_shape)), "B_scale": scales[1],
                  "B_zero_point": np.uint8(rng.integers(0, 256)), "C_scale": scales[2],
                  "C_zero_point": np.uint8(rng.integers(0, 256))}
        np.testing.assert_array_equal(ours("QLinearAdd", "reference", inputs),
                                      run_contrib("QLinearAdd", inputs, TensorProto.UINT8), err_msg=f"trial {trial}")


def test_qlinear_add_contracts_its_fixed_part_into_an_fma():
    """An element of PP-OCR's classifier where only ``zc - fma(ra, za, rb * zb)`` gives onnxruntime's
    answer (186): the separately rounded ``ra * za + rb * zb`` lands on 185.49998, which rounds to 185."""
    inputs = {"A": np.full(40, 166, np.uint8), "A_scale": np.float32(0.039047181606292725),
              "A_zero_point": np.uint8(131), "B": np.full(40, 167, np.uint8), "B_scale": np.float32(0.04944853112101555),
              "B_zero_point": np.uint8(132), "C_scale": np.float32(0.05683210864663124), "C_zero_point": np.uint8(131)}
    expected = run_contrib("QLinearAdd", inputs, TensorProto.UINT8)
    assert expected[0] == 186
    np.testing.assert_array_equal(ours("QLinearAdd", "reference", inputs), expected)


@pytest.mark.parametrize("shape", [(1, 16, 7, 7), (2, 40, 3, 5), (1, 8, 1, 1), (1, 3, 33)])
def test_qlinear_global_average_pool(shape):
    rng = np.random.default_rng(list(shape))
    inputs = {"X": u8(rng, *shape), "x_scale": np.float32(0.037), "x_zero_point": np.uint8(17),
              "y_scale": np.float32(0.011), "y_zero_point": np.uint8(3)}
    np.testing.assert_array_equal(ours("QLinearGlobalAveragePool", "reference", inputs, channels_last=0),
                                  run_contrib("QLinearGlobalAveragePool", inputs, TensorProto.UINT8, channels_last=0))


@pytest.mark.parametrize("dtype", [np.uint8, np.int8])
@pytest.mark.parametrize("shape, axis, opset", [((3, 25), -1, 13), ((2, 4, 9), 1, 13), ((2, 3, 4), 1, 12)])
def test_qlinear_softmax(dtype, shape, axis, opset):
    rng = np.random.default_rng([17, len(shape), axis % 3, opset])
    info = np.iinfo(dtype)
    x = rng.integers(info.min, info.max + 1, shape).astype(dtype)
    inputs = {"X": x, "X_scale": np.float32(0.07), "x_zero_point": np.asarray(3, dtype),
              "y_scale": np.float32(1 / 256), "y_zero_point": np.asarray(0 if dtype == np.uint8 else -128, dtype)}
    expected = run_contrib("QLinearSoftmax", inputs, helper.np_dtype_to_tensor_dtype(np.dtype(dtype)),
                           axis=axis, opset=opset)
    got = ours("QLinearSoftmax", "reference", inputs, axis=axis, opset=opset)
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("dtype, x_scale, row", [
    (np.uint8, 0.088, [244, 252, 251, 228, 252, 254, 249, 223, 244, 233, 232, 250, 252, 248, 238, 247, 255, 254, 255,
                       234, 250, 246, 242, 239, 242, 237, 199, 246, 241, 255, 254, 248, 236, 253]),
    (np.int8, 0.049, [109, 104, 118, 117, 85, 121, 117, 127, 82, 124, 124, 122, 112, 91, 126, 118, 118, 121, 99, 117,
                      126, 119, 120, 113])])
def test_qlinear_softmax_near_ties_follow_the_float_logarithm(dtype, x_scale, row):
    """Rows with an element a hair from a half step (found by a search against onnxruntime): a table whose
    shift starts from the double logarithm instead of the kernel's float32 ``logf`` rounds it the other way
    (the uint8 row's 252s read 11, not 12)."""
    inputs = {"X": np.asarray([row], dtype), "X_scale": np.float32(x_scale), "x_zero_point": np.asarray(0, dtype),
              "y_scale": np.float32(1 / 256), "y_zero_point": np.asarray(0 if dtype == np.uint8 else -128, dtype)}
    expected = run_contrib("QLinearSoftmax", inputs, helper.np_dtype_to_tensor_dtype(np.dtype(dtype)), axis=-1, opset=13)
    np.testing.assert_array_equal(ours("QLinearSoftmax", "reference", inputs, axis=-1, opset=13), expected)


def test_qlinear_softmax_quotient_is_not_rounded_to_float32():
    """A row (found by a search against onnxruntime) whose 203 gives ``e * floor(1 / y_scale) / sum`` = 46.5
    exactly in float32, which rounds to 46; onnxruntime's quotient is a hair above (47)."""
    row = [139, 148, 44, 179, 206, 72, 203, 186, 163, 186, 50, 169, 67, 128, 65, 228, 112, 175, 126, 139, 102, 128,
           195, 103, 55]
    inputs = {"X": np.asarray([row], np.uint8), "X_scale": np.float32(0.036), "x_zero_point": np.uint8(0),
              "y_scale": np.float32(0.00256), "y_zero_point": np.uint8(0)}
    expected = run_contrib("QLinearSoftmax", inputs, TensorProto.UINT8, axis=-1, opset=13)
    assert expected[0, 6] == 47
    np.testing.assert_array_equal(ours("QLinearSoftmax", "reference", inputs, axis=-1, opset=13), expected)


@pytest.mark.parametrize("dtype", [np.uint8, np.int8])
@pytest.mark.parametrize("y_scale", [1 / 255, 1 / 100, 1 / 1000])
def test_qlinear_softmax_over_one_element(dtype, y_scale):
    """A softmax over an axis of length 1 (found by the graph campaign: Conv -> Softmax(axis=-1) on
    ``[N, C, 1]``): the row's exponential is FLT_MAX / e^5 and its product with floor(1 / y_scale)
    overflows float32; onnxruntime gives floor(1 / y_scale) + y_zero_point, saturated."""
    rng = np.random.default_rng(3)
    info = np.iinfo(dtype)
    inputs = {"X": rng.integers(info.min, info.max + 1, (2, 6, 1)).astype(dtype), "X_scale": np.float32(0.0096),
              "x_zero_point": np.asarray(3, dtype), "y_scale": np.float32(y_scale),
              "y_zero_point": np.asarray(0 if dtype == np.uint8 else -128, dtype)}
    expected = run_contrib("QLinearSoftmax", inputs, helper.np_dtype_to_tensor_dtype(np.dtype(dtype)), axis=-1, opset=13)
    got = ours("QLinearSoftmax", "reference", inputs, axis=-1, opset=13)
    np.testing.assert_array_equal(got, expected)
