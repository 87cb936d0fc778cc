"""Fixtures for the executor tests: small QDQ models compiled by qcompiler from ONNX text."""

from __future__ import annotations

import numpy as np
import pytest

import qcompiler
from qcompiler import ir
from qcompiler.ir.testing import parse, tensor_text

CNN = """
<ir_version: 8, opset_import: ["" : 13]>
cnn (float[2,3,8,8] x) => (float[2,5] y) <{inits}> {{
    c1 = Conv <pads = [1, 1, 1, 1]> (x, w1, b1)
    r1 = Relu (c1)
    d1 = Conv <group = 8, pads = [1, 1, 1, 1]> (r1, wd, bd)
    r2 = Relu (d1)
    s = Add (r1, r2)
    p = MaxPool <kernel_shape = [2, 2], strides = [2, 2]> (s)
    g = GlobalAveragePool (p)
    f = Flatten (g)
    y = Gemm <transB = 1> (f, wf, bf)
}}
"""


def cnn_model(seed: int = 0) -> ir.Model:
    """A small CNN (conv, depthwise conv, residual Add, pooling, Gemm) with random weights."""
    rng = np.random.default_rng(seed)
    weights = {"w1": rng.normal(0, 0.4, (8, 3, 3, 3)), "b1": rng.normal(0, 0.1, 8),
               "wd": rng.normal(0, 0.4, (8, 1, 3, 3)), "bd": rng.normal(0, 0.1, 8),
               "wf": rng.normal(0, 0.4, (5, 8)), "bf": rng.normal(0, 0.1, 5)}
    inits = ", ".join(tensor_text(k, v.astype(np.float32)) for k, v in weights.items())
    return parse(CNN.format(inits=inits))


def feeds(seed: int, count: int = 4) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [{"x": rng.normal(0, 1, (2, 3, 8, 8)).astype(np.float32)} for _ in range(count)]


@pytest.fixture(scope="session")
def cnn_qdq() -> ir.Model:
    """The CNN compiled to per-channel U8S8 QDQ with full-range weights (``x86-vnni``), as a fresh copy."""
    model = qcompiler.compile(cnn_model(), None, calib=feeds(1), target="x86-vnni", objective="size")
    return model


@pytest.fixture
def cnn_qdq_copy(cnn_qdq) -> ir.Model:
    return cnn_qdq.clone()
