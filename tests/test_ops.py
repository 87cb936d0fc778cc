"""The per-op descriptors: their onnxruntime facts checked against the onnxruntime installed, the views
targets derive from them, and the weight layout facts.

Every pass-through op must be one whose equal Q/DQ pair onnxruntime drops (it then runs on integers),
and ``ort_propagates`` must say exactly whether onnxruntime's QDQ propagation crosses it: seen through
``Softmax -> op -> QuantizeLinear``, which becomes QLinearSoftmax only when the Q is copied back across
the op. Flatten and Slice are where the two facts differ. onnxruntime drops the pair around Slice too, but
Slice is not quantized yet (see ``qcompiler/ops.py``): ``CALLS`` lists it for the onnxruntime facts.
"""

from __future__ import annotations

import collections

import numpy as np
import pytest

from qcompiler import ir
from qcompiler.executor.fusion import find_fusions
from qcompiler.executor.propagation import propagate_qdq
from qcompiler.ir.testing import parse
from qcompiler.ops import OPS, OpQuant, lookup, ops_with, weight_axis
from qcompiler.targets import TARGETS

from .passes.test_quantize import fused_ops

CALLS = {"MaxPool": "MaxPool <kernel_shape = [2, 2]> (x)", "Reshape": "Reshape (x, shape)",
         "Transpose": "Transpose <perm = [0, 2, 3, 1]> (x)", "Squeeze": "Squeeze (x, axis0)",
         "Unsqueeze": "Unsqueeze (x, axis0)", "Slice": "Slice (x, starts, ends)", "Flatten": "Flatten (x)"}


def unit(op: str, before: str = "") -> ir.Model:
    """``DequantizeLinear -> [before ->] op -> QuantizeLinear`` with equal Q/DQ parameters."""
    call = CALLS[op].replace("(x", "(b" if before else "(x")
    return parse(f"""<ir_version: 8, opset_import: ["" : 13]>
    g (uint8[1,4,4,4] xq) => (uint8 yq) <float s = {{0.05}}, uint8 z = {{128}}, int64[2] shape = {{1, 64}},
        int64[1] axis0 = {{0}}, int64[4] starts = {{0, 0, 0, 0}}, int64[4] ends = {{1, 4, 2, 4}}> {{
      x = DequantizeLinear (xq, s, z)
      {f"b = {before} (x)" if before else ""}
      y = {call}
      yq = QuantizeLinear (y, s, z)
    }}""")


def test_every_pass_through_op_is_checked():
    assert ops_with("pass_through") == set(CALLS) - {"Slice"}


@pytest.mark.parametrize("op", sorted(CALLS))
def test_onnxruntime_drops_the_qdq_pair_around_a_pass_through_op(op):
    assert fused_ops(unit(op)) == [op]


@pytest.mark.parametrize("op", sorted(CALLS))
def test_qdq_propagation_crosses_exactly_the_ops_that_say_so(op):
    model = unit(op, before="Softmax")
    ours = collections.Counter(f.kernel[1] for f in find_fusions(propagate_qdq(model)))
    theirs = collections.Counter(o for o in fused_ops(model) if o == "QLinearSoftmax")
    assert ours == theirs == collections.Counter({"QLinearSoftmax": 1} if OPS[op].ort_propagates else {})


def test_flatten_is_pass_through_but_does_not_propagate_and_slice_propagates():
    assert OPS["Flatten"].role == "pass_through" and OPS["Slice"].role is None
    assert not OPS["Flatten"].ort_propagates and OPS["Slice"].ort_propagates


def test_targets_read_the_roles():
    for target in TARGETS.values():
        assert target.int8_ops == {"Conv", "MatMul", "Gemm", "Add", "Concat", "GlobalAveragePool", "AveragePool"}
        assert target.pass_through_ops == set(CALLS) - {"Slice"}
        assert target.absorbed_activations == {"Relu", "Clip"}


def test_lookup_is_blank_for_unknown_ops_and_other_domains():
    assert lookup(ir.Node("Conv", [])) is OPS["Conv"]
    assert lookup(ir.Node("Conv", [], domain="com.microsoft")) == OpQuant("Conv")
    assert lookup(ir.Node("Erf", [])) == OpQuant("Erf")


@pytest.mark.parametrize("op, attrs, shape, axis", [
    ("Conv", {}, (8, 4, 3, 3), 0),
    ("Gemm", {"transB": 1}, (16, 32), 0),
    ("Gemm", {}, (32, 16), 1),
    ("MatMul", {}, (32, 16), 1),
])
def test_weight_axis_is_the_output_channel(op, attrs, shape, axis):
    node = ir.Node(op, [ir.Value("x"), ir.Value("w", const=np.zeros(shape, np.float32))], attrs=attrs)
    assert weight_axis(node, node.inputs[1].const) == axis
