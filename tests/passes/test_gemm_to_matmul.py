"""``gemm-to-matmul``: Gemm with a constant weight as MatMul + Add, checked numerically (CheckNumerics)."""

from __future__ import annotations

import numpy as np
import pytest

from qcompiler.ir.testing import parse, tensor_text
from qcompiler.passes import GemmToMatMul

RNG = np.random.default_rng(9)


def gemm(attrs: str, bias: bool = True, bias_shape: tuple = (6,)) -> str:
    inits = [tensor_text("w", RNG.normal(0, 1, (6, 4) if "transB = 1" in attrs else (4, 6)).astype(np.float32))]
    if bias:
        inits.append(tensor_text("b", RNG.normal(0, 1, bias_shape).astype(np.float32)))
    shape = "[4,3]" if "transA = 1" in attrs else "[3,4]"
    return f"""<ir_version: 8, opset_import: ["" : 13]>
    g (float{shape} x) => (float[3,6] y) <{", ".join(inits)}> {{
        y = Gemm {attrs} (x, w{", b" if bias else ""})
    }}"""


@pytest.mark.parametrize("attrs, bias", [
    ("", True), ("<transB = 1>", True), ("<alpha = 0.5, beta = 2.0, transB = 1>", True),
    ("<alpha = 3.0>", False)])
def test_gemm_becomes_matmul_and_add_with_the_same_outputs(run_checked, attrs, bias):
    result = run_checked(parse(gemm(attrs, bias)), GemmToMatMul(), rtol=1e-5)
    ops = [n.op_type for n in result.model.graph]
    assert ops == (["MatMul", "Add"] if bias else ["MatMul"])
    assert [v.name for v in result.model.graph.outputs] == ["y"]


def test_gemm_with_transposed_input_stays():
    model = parse(gemm("<transA = 1>"))
    assert not GemmToMatMul()(model).modified
    assert [n.op_type for n in model.graph] == ["Gemm"]
