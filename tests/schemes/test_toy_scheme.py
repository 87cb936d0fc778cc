"""A new quantization scheme added entirely in this file, without editing the library.

The scheme: weight-only int8 in blocks of 32 along the input dimension of every MatMul weight (the
layout of LLM weight-only quantization). It needs a pass that starts the plan and gives weights their
specs; the library's insert-qdq, fold-quantized-weights and upgrade-opset do the rest, and onnxruntime
runs the result (a blocked DequantizeLinear of int8 initializers, opset 21).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto

from qcompiler import PassManager, Pass, PassResult, ir
from qcompiler.ir import Scheme
from qcompiler.ir.testing import run_onnxruntime
from qcompiler.pass_manager import default_registry
from qcompiler.pipelines import canonicalize
from qcompiler.targets import TARGETS

BLOCK = 32
RNG = np.random.default_rng(11)


class BlockedMatMulWeights(Pass):
    """Weight-only int8, blocks of 32 along K, for every MatMul with a constant [K, N] weight."""

    provides = ("plan", "ranges")  # weight-only: no activation waits for a range

    def call(self, model: ir.Model) -> PassResult:
        scheme = Scheme(TensorProto.INT8, symmetric=True, granularity="block", block_size=BLOCK)
        model.plan.start(TARGETS["x86-vnni"])
        for node in model.graph:
            weight = node.inputs[1] if node.op_type == "MatMul" else None
            if weight is not None and weight.const is not None and weight.const.ndim == 2:
                weight.quant = scheme.spec_for(weight.const, axis=0)
                model.plan.quantize_node(node)
        return PassResult(model, bool(model.plan.layers))


def mlp() -> ir.Model:
    text = """
    <ir_version: 10, opset_import: ["" : 13]>
    g (float[4,96] x) => (float[4,16] y) {
      h = MatMul(x, w1)
      r = Relu(h)
      y = MatMul(r, w2)
    }"""
    proto = onnx.parser.parse_model(text)
    proto.graph.initializer.extend([
        onnx.numpy_helper.from_array(RNG.standard_normal((96, 64)).astype(np.float32), "w1"),
        onnx.numpy_helper.from_array(RNG.standard_normal((64, 16)).astype(np.float32), "w2")])
    return ir.from_proto(proto)


def test_a_scheme_defined_outside_the_library_compiles_and_runs_in_onnxruntime():
    model = mlp()
    x = RNG.standard_normal((4, 96)).astype(np.float32)
    reference = run_onnxruntime(model, {"x": x})[0]
    lib = {name: default_registry.get(name) for name in ("upgrade-opset", "insert-qdq", "fold-quantized-weights")}
    PassManager(canonicalize() + [lib["upgrade-opset"](target=21), BlockedMatMulWeights(), lib["insert-qdq"](),
                                  lib["fold-quantized-weights"]()])(model)
    proto = ir.to_proto(model)
    onnx.checker.check_model(proto)
    dequantize = [n for n in proto.graph.node if n.op_type == "DequantizeLinear"]
    assert len(dequantize) == 2 and all({a.name: a.i for a in n.attribute}["block_size"] == BLOCK for n in dequantize)
    weights = {t.name: onnx.numpy_helper.to_array(t) for t in proto.graph.initializer}
    layouts = sorted((weights[n.input[0]].dtype, weights[n.input[0]].shape, weights[n.input[1]].shape)
                     for n in dequantize)
    assert layouts == [(np.int8, (64, 16), (2, 16)), (np.int8, (96, 64), (3, 64))]  # one scale per 32 rows
    got = run_onnxruntime(proto, {"x": x})[0]
    error = np.sum((got - reference) ** 2) / np.sum(reference ** 2)
    assert 0 < error < 1e-3  # quantized (not the float model), and close to it
