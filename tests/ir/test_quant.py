"""The quantization-scheme module: one integer range table, one int4 storage, every granularity."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import onnx
import pytest
from onnx import TensorProto

from qcompiler import PassManager, ir
from qcompiler.errors import UnsupportedModelError
from qcompiler.ir import QuantSpec, Scheme, dequantize, fake_quantize, quantize
from qcompiler.ir.quant import integer_range, min_opset, quantize_bias, storage_dtype, tensor_range
from qcompiler.ir.testing import run_onnxruntime
from qcompiler.kernels.reference import quantize as kernels
from qcompiler.passes import FoldQuantizedWeights, InsertQDQ, UpgradeOpset
from qcompiler.targets import TARGETS

RNG = np.random.default_rng(3)


def test_one_range_table_for_onnx_and_numpy_types_and_int4_stored_as_onnx_does():
    assert integer_range(TensorProto.INT4) == integer_range(ml_dtypes.int4) == (-8, 7)
    assert integer_range(np.uint16) == (0, 65535)
    assert storage_dtype(TensorProto.INT4) == np.dtype(ml_dtypes.int4)
    assert onnx.numpy_helper.from_array(np.zeros(2, storage_dtype(TensorProto.UINT4)), "z").data_type == TensorProto.UINT4
    with pytest.raises(ValueError, match="not a quantized integer type: FLOAT"):
        integer_range(TensorProto.FLOAT)
    with pytest.raises(NotImplementedError):  # the kernels' refusal of float8 is the same error
        integer_range(TensorProto.FLOAT8E4M3FN)


@pytest.mark.parametrize("granularity, axis, block", [("tensor", None, None), ("axis", 1, None), ("block", 0, 16)])
def test_spec_for_each_granularity_matches_the_reference_kernels(granularity, axis, block):
    w = RNG.standard_normal((40, 6)).astype(np.float32)
    spec = Scheme(TensorProto.INT8, symmetric=True, granularity=granularity, block_size=block).spec_for(w, axis=axis)
    assert spec.granularity == granularity
    q = quantize(w, spec)
    attrs = {"axis": axis if axis is not None else 1, "block_size": block or 0}
    np.testing.assert_array_equal(q, kernels.QuantizeLinear(w, spec.scale, spec.zero_point, **attrs))
    np.testing.assert_array_equal(dequantize(q, spec), kernels.DequantizeLinear(q, spec.scale, spec.zero_point, **attrs))
    assert np.abs(q.astype(np.int32)).max() == 127  # symmetric: every group reaches the restricted range's end
    assert np.abs(fake_quantize(w, spec) - w).max() <= np.max(spec.scale) / 2 + 1e-6


def test_blocked_ranges_cover_a_partial_last_block():
    x = np.arange(10, dtype=np.float32).reshape(10, 1)
    lo, hi = tensor_range(x, axis=0, block_size=4)
    assert lo.ravel().tolist() == [0, 4, 8] and hi.ravel().tolist() == [3, 7, 9]


def test_bias_is_rounded_half_to_even_in_units_of_the_product_scale():
    x_spec = QuantSpec.from_range(0.0, 2.55, TensorProto.UINT8, symmetric=False)
    w_spec = QuantSpec.from_range(np.array([-1.27, -2.54]), np.array([1.27, 2.54]), TensorProto.INT8, symmetric=True,
                                  axis=0)
    integers, scale = quantize_bias(np.array([0.0025, 0.0015], np.float32), x_spec, w_spec)
    np.testing.assert_allclose(scale, [0.01 * 0.01, 0.01 * 0.02], rtol=1e-6)
    assert integers.dtype == np.int32 and integers.tolist() == [25, 8]  # 0.0015 / 0.0002 = 7.5 -> 8


def test_minimum_opsets():
    spec = QuantSpec.from_range(-1.0, 1.0, TensorProto.INT8, symmetric=True)
    assert min_opset(spec) == 10
    assert min_opset(QuantSpec.from_range(np.ones(3) * -1, np.ones(3), TensorProto.INT8, symmetric=True, axis=0)) == 13
    assert min_opset(QuantSpec.from_range(-1.0, 1.0, TensorProto.INT4, symmetric=True)) == 21
    assert min_opset(QuantSpec.from_range(-1.0, 1.0, TensorProto.UINT16, symmetric=False)) == 21


def _matmul(opset: int) -> ir.Model:
    proto = onnx.parser.parse_model(f"""
    <ir_version: 10, opset_import: ["" : {opset}]>
    g (float[2,32] x) => (float[2,8] y) {{
      y = MatMul(x, w)
    }}""")
    proto.graph.initializer.append(onnx.numpy_helper.from_array(RNG.standard_normal((32, 8)).astype(np.float32), "w"))
    return ir.from_proto(proto)


def _weight_only(model: ir.Model, scheme: Scheme, axis: int) -> None:
    model.plan.start(TARGETS["x86-vnni"])
    weight = model.graph.initializers["w"]
    weight.quant = scheme.spec_for(weight.const, axis=axis)
    model.plan.quantize_node(model.graph.nodes[0])


def test_per_channel_int4_weights_lower_to_opset_21_and_run():
    model = _matmul(21)
    x = RNG.standard_normal((2, 32)).astype(np.float32)
    reference = run_onnxruntime(model, {"x": x})[0]
    _weight_only(model, Scheme(TensorProto.INT4, symmetric=True, granularity="axis"), axis=1)
    PassManager([InsertQDQ(), FoldQuantizedWeights()])(model)
    proto = ir.to_proto(model)
    int4 = sorted(list(t.dims) for t in proto.graph.initializer if t.data_type == TensorProto.INT4)
    assert int4 == [[8], [32, 8]]  # the zero points and the weight
    got = run_onnxruntime(proto, {"x": x})[0]
    assert 0 < np.sum((got - reference) ** 2) < 0.05 * np.sum(reference ** 2)


def test_a_spec_the_opset_cannot_express_names_the_fix():
    model = _matmul(13)
    _weight_only(model, Scheme(TensorProto.INT8, symmetric=True, granularity="block", block_size=16), axis=0)
    with pytest.raises(UnsupportedModelError, match="needs opset 21 .* run upgrade-opset with target = 21"):
        PassManager([InsertQDQ()])(model)
    PassManager([UpgradeOpset(target=21), InsertQDQ(), FoldQuantizedWeights()])(model)
    assert any(n.attrs.get("block_size") == 16 for n in model.graph if n.op_type == "DequantizeLinear")


@pytest.mark.parametrize("dtype, axis, block_size", [
    (TensorProto.UINT8, None, None), (TensorProto.INT8, 0, None), (TensorProto.INT8, 1, None),
    (TensorProto.INT4, 0, 32), (TensorProto.UINT4, 1, 16)])
def test_quantize_in_slices_is_quantize_at_once(monkeypatch, dtype, axis, block_size):
    """A large tensor is quantized a slice of rows at a time (whole blocks when they run along the rows, the
    last one partial here): the same integers as at once, for every granularity."""
    from qcompiler.ir import quant

    x = np.random.default_rng(0).standard_normal((1000, 300)).astype(np.float32)
    lo, hi = quant.tensor_range(x, axis, block_size)
    spec = QuantSpec.from_range(lo, hi, dtype, symmetric=dtype == TensorProto.INT8, axis=axis, block_size=block_size)
    whole = quant.quantize(x, spec)
    monkeypatch.setattr(quant, "QUANTIZE_ELEMENTS", 3000)
    np.testing.assert_array_equal(quant.quantize(x, spec), whole)
