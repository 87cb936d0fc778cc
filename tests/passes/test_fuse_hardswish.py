"""FuseHardSwish: a decomposed hardswish becomes x * HardSigmoid(x) below opset 14 and HardSwish from 14 on;
with ``upgrade`` a model that has one is raised to opset 14. Every case runs through ``run_checked``
(onnxruntime outputs unchanged, honest ``modified``, idempotent)."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort

from qcompiler import ir
from qcompiler.ir.testing import parse, random_feeds
from qcompiler.kernels.reference.elementwise import HardSwish
from qcompiler.passes import FuseHardSwish

DECOMPOSED = """
    a = Add (x, three)
    c = Clip (a, zero, six)
    m = Mul (x, c)
    h = Div (m, six)
    y = Relu (h)"""


def model(opset: int, body: str = DECOMPOSED):
    return parse(f"""
    <ir_version: 8, opset_import: ["" : {opset}]>
    g (float[2,8,5,5] x) => (float[2,8,5,5] y)
      <float three = {{3.0}}, float zero = {{0.0}}, float six = {{6.0}}> {{
      {body}
    }}""")


def ops(m) -> list[str]:
    return [node.op_type for node in m.graph]


def test_below_opset_14_the_hardswish_is_x_times_hardsigmoid(run_checked):
    m = model(13)
    run_checked(m, FuseHardSwish())
    assert ops(m) == ["HardSigmoid", "Mul", "Relu"] and m.opset == 13


def test_from_opset_14_it_is_one_hardswish(run_checked):
    m = model(14)
    run_checked(m, FuseHardSwish())
    assert ops(m) == ["HardSwish", "Relu"]


def test_upgrade_raises_a_model_with_a_hardswish_to_opset_14_and_rewrites_the_gated_form(run_checked):
    m = model(13)
    run_checked(m, FuseHardSwish())  # as canonicalize leaves it
    run_checked(m, FuseHardSwish(upgrade=True))
    assert ops(m) == ["HardSwish", "Relu"] and m.opset == 14
    plain = model(13, "y = Relu (x)")
    assert not run_checked(plain, FuseHardSwish(upgrade=True)).modified and plain.opset == 13


def test_a_gate_read_elsewhere_is_left_alone(run_checked):
    m = model(14, """
    g = HardSigmoid <alpha = 0.16666667, beta = 0.5> (x)
    m = Mul (x, g)
    y = Add (m, g)""")
    assert not run_checked(m, FuseHardSwish()).modified
    other = model(14, """
    g = HardSigmoid <alpha = 0.2, beta = 0.5> (x)
    y = Mul (x, g)""")
    assert not run_checked(other, FuseHardSwish()).modified


def test_the_reference_hardswish_equals_onnxruntimes_bit_for_bit():
    m = model(14, "y = HardSwish (x)")
    feeds = random_feeds(m, seed=3)
    feeds["x"] = feeds["x"] * 8  # across both corners, -3 and 3
    expected = ort.InferenceSession(ir.to_proto(m).SerializeToString(),
                                    providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    np.testing.assert_array_equal(HardSwish(feeds["x"]), expected)
