"""The onnx wheel's backend node tests for our quantization ops, run directly through our kernels
(the reference, and the jit kernel where there is one).

The onnx wheel ships the generators (``onnx.backend.test.case.node``) rather than the
``data/node/*/test_data_set_0/*.pb`` files, so the cases are generated in memory: the same models,
inputs and expected outputs. Each case's single node is decoded (attributes from the model) and its
kernel called with the inputs in spec order. Integer outputs must match exactly, float outputs too
(our DequantizeLinear computes the same float32 product as the generator).
"""

from __future__ import annotations

import warnings

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from qcompiler.kernels import default_registry

OPS = {"QuantizeLinear", "DequantizeLinear", "QLinearConv", "QLinearMatMul", "ConvInteger", "MatMulInteger"}

_FLOAT_QUANT = "float8/float4 quantized types are refused: qcompiler quantizes to integer types only"
EXCLUDED = {
    "test_quantizelinear_e4m3fn": _FLOAT_QUANT,
    "test_quantizelinear_e5m2": _FLOAT_QUANT,
    "test_quantizelinear_float4e2m1": _FLOAT_QUANT,
    "test_dequantizelinear_e4m3fn": _FLOAT_QUANT,
    "test_dequantizelinear_e4m3fn_float16": _FLOAT_QUANT,
    "test_dequantizelinear_e4m3fn_zero_point": _FLOAT_QUANT,
    "test_dequantizelinear_e5m2": _FLOAT_QUANT,
    "test_dequantizelinear_float4e2m1": _FLOAT_QUANT,
}


def _node_cases(ops=OPS):
    """The generated single-node cases of ``ops``."""
    from onnx.backend.test.case import node

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cases = node.collect_testcases(None)
    return [c for c in cases if c.model is not None and len(c.model.graph.node) == 1
            and c.model.graph.node[0].op_type in ops]


CASES = _node_cases()


def _array(value) -> np.ndarray:
    return numpy_helper.to_array(value) if isinstance(value, onnx.TensorProto) else np.asarray(value)


def _attribute(attr: onnx.AttributeProto):
    value = helper.get_attribute_value(attr)
    return value.decode() if isinstance(value, bytes) else value


def run_case(case, backend: str) -> list[np.ndarray]:
    """Decode the case's node, call its kernel (``backend`` first, else the reference), return the
    outputs as a list."""
    node = case.model.graph.node[0]
    opset = next(o.version for o in case.model.opset_import if o.domain in ("", "ai.onnx"))
    kernel = default_registry.lookup(node.domain, node.op_type, opset, backends=(backend, "reference"))
    present = iter(case.data_sets[0][0])
    args = [None if name == "" else _array(next(present)) for name in node.input]
    result = kernel(*args, **{a.name: _attribute(a) for a in node.attribute})
    return list(result) if isinstance(result, tuple) else [result]


@pytest.mark.parametrize("backend", ["reference", "jit"])
@pytest.mark.parametrize(
    "case",
    [pytest.param(c, id=c.name, marks=pytest.mark.skip(reason=EXCLUDED[c.name]) if c.name in EXCLUDED else ())
     for c in CASES],
)
def test_node_case(case, backend):
    expected = [_array(v) for v in case.data_sets[0][1]]
    actual = run_case(case, backend)
    assert len(actual) == len(expected)
    for got, want in zip(actual, expected, strict=True):
        assert got.dtype == want.dtype and got.shape == want.shape, (got.dtype, got.shape, want.dtype, want.shape)
        np.testing.assert_array_equal(got.astype(np.float64), want.astype(np.float64))


def test_every_op_has_cases_and_exclusions_exist():
    names = {c.name for c in CASES}
    assert set(EXCLUDED) <= names
    assert {c.model.graph.node[0].op_type for c in CASES} == OPS
