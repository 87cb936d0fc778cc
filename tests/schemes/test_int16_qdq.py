"""int16/uint16 activations through insert-qdq: ONNX Q/DQ from opset 21, com.microsoft's below it; the round
trip in onnxruntime equals ``fake_quantize`` and the executor's, bit for bit."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto

from qcompiler import PassManager, ir
from qcompiler.executor import Interpreter
from qcompiler.executor.agreement import run_onnxruntime
from qcompiler.ir import Scheme
from qcompiler.ir.quant import fake_quantize
from qcompiler.passes import InsertQDQ
from qcompiler.targets import TARGETS

RNG = np.random.default_rng(16)


def quantized_relu(opset: int, dtype: int) -> tuple[ir.Model, object]:
    """``y = Relu(x)`` with ``x`` quantized to ``dtype`` (asymmetric, range [-3, 5])."""
    model = ir.from_proto(onnx.parser.parse_model(f"""
    <ir_version: 10, opset_import: ["" : {opset}]>
    g (float[4,50] x) => (float[4,50] y) {{ y = Relu(x) }}"""))
    model.plan.start(TARGETS["x86-vnni"])
    x = model.graph.inputs[0]
    x.quant = Scheme(dtype, symmetric=False).spec_from_range(-3.0, 5.0)
    return model, x.quant


@pytest.mark.parametrize("dtype", [TensorProto.INT16, TensorProto.UINT16])
@pytest.mark.parametrize("opset, domain", [(13, "com.microsoft"), (21, "")])
def test_sixteen_bit_round_trip(opset, domain, dtype):
    model, spec = quantized_relu(opset, dtype)
    PassManager([InsertQDQ()])(model)
    qdq = [n for n in model.graph if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    assert len(qdq) == 2 and {n.domain for n in qdq} == {domain}
    onnx.checker.check_model(ir.to_proto(model))
    x = (RNG.standard_normal((4, 50)) * 3).astype(np.float32)
    x[0, :3] = [-10.0, 10.0, 2.5e-4]  # saturation at both ends, a value between two steps
    want = np.maximum(fake_quantize(x, spec), 0)
    for optimize in (False, True):
        np.testing.assert_array_equal(run_onnxruntime(model, {"x": x}, optimize=optimize)["y"], want)
    np.testing.assert_array_equal(Interpreter(model).run({"x": x})["y"], want)
    assert np.abs(want - np.maximum(np.clip(x, -3, 5), 0)).max() <= spec.scale / 2 * 1.0001  # 16-bit steps
