"""MatMulNBits and blocked DequantizeLinear: our reference kernels against onnxruntime 1.32, on random
weights, for every bit width MatMulNBits runs (2, 4, 8) and block sizes 16-256.

Blocked DequantizeLinear is bit-exact. MatMulNBits matches to float32 summation order: onnxruntime's
kernels add the K products in another order (blocked, vectorized) than numpy, so outputs differ by a few
ulps of the largest partial sums: the bound asserted is 64 ulps of ``sum_k |a_k w_k|``, a float32
dot product's error bound for K up to 256 terms. With ``accuracy_level=4`` (int8 activations per block,
modelled) the same bound holds where onnxruntime takes its int8 path, while plain float dequantization
differs from it by up to 1 % — the test shows the model is needed.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from qcompiler.ir.quant import pack_bits
from qcompiler.kernels import default_registry

MS = "com.microsoft"


def run_onnxruntime(node, inputs: dict, opset: int = 21) -> np.ndarray:
    names = list(inputs)
    first = inputs[names[0]]
    graph = helper.make_graph(
        [node], "g", [helper.make_tensor_value_info(names[0], helper.np_dtype_to_tensor_dtype(first.dtype), first.shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(np.asarray(v), n) for n, v in list(inputs.items())[1:] if v is not None])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset), helper.make_opsetid(MS, 1)])
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(None, {names[0]: first})[0]


def nbits_case(rng, bits, K, N, block_size, asymmetric, M=5):
    blocks = -(-K // block_size)
    q = rng.integers(0, 1 << bits, (N, blocks * block_size)).astype(np.uint8)
    q[:, K:] = 0
    inputs = {"A": rng.standard_normal((2, M, K)).astype(np.float32),
              "B": pack_bits(q.reshape(N, blocks, block_size), bits),
              "scales": (rng.random(N * blocks) * 0.05 + 0.01).astype(np.float32),
              "zero_points": pack_bits(rng.integers(0, 1 << bits, (N, blocks)), bits).reshape(-1) if asymmetric else None}
    return inputs


def check_close(ours, theirs, A, bound_weights):
    magnitude = np.abs(A) @ np.abs(bound_weights).T  # sum_k |a_k w_k|
    ulps = np.abs(ours - theirs) / (magnitude * np.finfo(np.float32).eps)
    assert ulps.max() <= 64, f"{ulps.max():.1f} ulps of sum |a w|"


@pytest.mark.parametrize("bits", [2, 4, 8])
@pytest.mark.parametrize("block_size", [16, 32, 64, 128, 256])
@pytest.mark.parametrize("asymmetric", [False, True])
def test_matmul_nbits_float(bits, block_size, asymmetric):
    rng = np.random.default_rng(bits * 1000 + block_size + asymmetric)
    K, N = 200, 24  # K not a multiple of the block: the last block is partial
    inputs = nbits_case(rng, bits, K, N, block_size, asymmetric)
    attrs = {"K": K, "N": N, "bits": bits, "block_size": block_size}
    node = helper.make_node("MatMulNBits", [n if v is not None else "" for n, v in inputs.items()], ["y"], domain=MS,
                            **attrs)
    theirs = run_onnxruntime(node, inputs)
    kernel = default_registry.lookup(MS, "MatMulNBits", 1, backends=("reference",))
    ours = kernel(*inputs.values(), **attrs)
    assert ours.shape == theirs.shape == (2, 5, N)
    w = _dequantized(inputs, **attrs)
    check_close(ours, theirs, inputs["A"], w)


def _dequantized(inputs, *, K, N, bits, block_size):
    from qcompiler.kernels.reference.matmul_nbits import nbits_weight

    q, scale, zero = nbits_weight(inputs["B"], inputs["scales"], inputs["zero_points"], K=K, N=N, bits=bits,
                                  block_size=block_size)
    return ((q - zero) * scale).reshape(N, -1)[:, :K]


@pytest.mark.parametrize("bits, block_size", [(4, 16), (4, 32), (4, 128), (4, 256), (8, 32), (8, 128), (2, 32),
                                              (2, 128)])
@pytest.mark.parametrize("asymmetric", [False, True])
def test_matmul_nbits_int8_activations(bits, block_size, asymmetric):
    """accuracy_level 4: the modelled int8 activations agree with onnxruntime; float dequantization does not."""
    rng = np.random.default_rng(bits * 7 + block_size + asymmetric)
    K, N = 256, 24
    inputs = nbits_case(rng, bits, K, N, block_size, asymmetric)
    attrs = {"K": K, "N": N, "bits": bits, "block_size": block_size, "accuracy_level": 4}
    node = helper.make_node("MatMulNBits", [n if v is not None else "" for n, v in inputs.items()], ["y"], domain=MS,
                            **attrs)
    theirs = run_onnxruntime(node, inputs)
    kernel = default_registry.lookup(MS, "MatMulNBits", 1, backends=("reference",))
    ours = kernel(*inputs.values(), **attrs)
    float_path = kernel(*inputs.values(), **{**attrs, "accuracy_level": 0})
    w = _dequantized(inputs, K=K, N=N, bits=bits, block_size=block_size)
    check_close(ours, theirs, inputs["A"], w)
    relative = np.abs(float_path - theirs).max() / np.abs(theirs).max()
    assert relative > 1e-4  # onnxruntime did quantize the activations


@pytest.mark.parametrize("dtype", [TensorProto.INT4, TensorProto.UINT4, TensorProto.INT8, TensorProto.UINT8,
                                   TensorProto.INT2, TensorProto.UINT2])
@pytest.mark.parametrize("block_size", [16, 32, 128, 256])
def test_blocked_dequantize_linear_bit_exact(dtype, block_size):
    from qcompiler.ir.quant import integer_range, storage_dtype

    rng = np.random.default_rng(dtype * 31 + block_size)
    lo, hi = integer_range(dtype)
    K, N = 300, 12
    blocks = -(-K // block_size)
    q = rng.integers(lo, hi + 1, (K, N)).astype(storage_dtype(dtype))
    scale = (rng.random((blocks, N)) * 0.1 + 1e-3).astype(np.float32)
    zero = rng.integers(lo, hi + 1, (blocks, N)).astype(storage_dtype(dtype))
    opset = 25 if dtype in (TensorProto.INT2, TensorProto.UINT2) else 21
    # onnxruntime takes the integer input as an initializer: feed a dummy float through an Add
    node = helper.make_node("DequantizeLinear", ["q", "scale", "zero"], ["d"], axis=0, block_size=block_size)
    add = helper.make_node("Add", ["d", "x"], ["y"])
    graph = helper.make_graph([node, add], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [K, N])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(q, "q"), numpy_helper.from_array(scale, "scale"),
                               numpy_helper.from_array(zero, "zero")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    theirs = session.run(None, {"x": np.zeros((K, N), np.float32)})[0]
    kernel = default_registry.lookup("", "DequantizeLinear", opset, backends=("reference",))
    ours = kernel(q, scale, zero, axis=0, block_size=block_size)
    np.testing.assert_array_equal(ours, theirs)


@pytest.mark.parametrize("bits", [2, 4, 8])
@pytest.mark.parametrize("block_size, depth", [(16, 64), (32, 48), (128, 96), (64, 64)])
@pytest.mark.parametrize("asymmetric", [False, True])
def test_gather_block_quantized(bits, block_size, depth, asymmetric):
    """Rows of a packed table (partial last block included), dequantized: bit-exact with onnxruntime."""
    rng = np.random.default_rng(bits * 1000 + block_size + depth + asymmetric)
    rows, blocks = 11, -(-depth // block_size)
    indices = np.array([[3, 0], [10, -1], [7, 7]], np.int64)
    inputs = {"indices": indices,
              "data": pack_bits(rng.integers(0, 1 << bits, (rows, depth)), bits),
              "scales": (rng.random((rows, blocks)) * 0.05 + 0.01).astype(np.float32),
              "zero_points": pack_bits(rng.integers(0, 1 << bits, (rows, blocks)), bits) if asymmetric else None}
    attrs = {"gather_axis": 0, "quantize_axis": 1, "block_size": block_size, "bits": bits}
    node = helper.make_node("GatherBlockQuantized", ["data", "indices", "scales"]
                            + (["zero_points"] if asymmetric else []), ["y"], domain=MS, **attrs)
    theirs = run_onnxruntime(node, inputs)
    kernel = default_registry.lookup(MS, "GatherBlockQuantized", 1, backends=("reference",))
    ours = kernel(inputs["data"], indices, inputs["scales"], inputs["zero_points"], **attrs)
    assert ours.shape == theirs.shape == (3, 2, depth)
    np.testing.assert_array_equal(ours, theirs)
