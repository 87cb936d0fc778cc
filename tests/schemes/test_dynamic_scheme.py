"""Dynamic activations as a property of the scheme: no range, no calibration, a scale computed at run time."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto

from qcompiler import PassManager, ir
from qcompiler.ir import Scheme
from qcompiler.ir.testing import run_onnxruntime
from qcompiler.passes import FoldQuantizedWeights, InsertQDQ
from qcompiler.targets import TARGETS

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
