"""LayerNormalization against onnxruntime: bit for bit where MLAS's AVX2 kernel runs (x86 with AVX2
and FMA, rows a multiple of 8 long), to float32 rounding elsewhere."""

from __future__ import annotations

import platform
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from qcompiler.kernels import default_registry
from qcompiler.kernels.reference.layer_norm import fma_f32


def _has_avx2_fma() -> bool:
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return False
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return " avx2" in flags and " fma" in flags


AVX2 = _has_avx2_fma()


def run_ort(x, scale, bias, axis, epsilon):
    outputs = ["y", "mean", "inv_std"]
    inputs = ["x", "scale"] + (["bias"] if bias is not None else [])
    inits = [numpy_helper.from_array(scale, "scale")]
    if bias is not None:
        inits.append(numpy_helper.from_array(bias, "bias"))
    graph = helper.make_graph([helper.make_node("LayerNormalization", inputs, outputs, axis=axis, epsilon=epsilon)],
                              "ln", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x.shape)],
                              [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outputs], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"]).run(
        None, {"x": x})


@pytest.mark.parametrize("shape,axis,with_bias", [((300, 8), -1, True), ((7, 52, 384), -1, True),
                                                   ((40, 1536), 1, False), ((5, 4, 4), 1, True)])
def test_layer_norm_matches_onnxruntime(shape, axis, with_bias):
    rng = np.random.default_rng(sum(shape))
    x = (rng.normal(0.3, 2.0, shape) * rng.uniform(0.1, 3, shape[:1] + (1,) * (len(shape) - 1))).astype(np.float32)
    norm = shape[axis % len(shape):]
    scale = rng.normal(1, 0.3, norm).astype(np.float32)
    bias = rng.normal(0, 0.3, norm).astype(np.float32) if with_bias else None
    kernel = default_registry.lookup("", "LayerNormalization", 17)
    ours = kernel(x, scale, bias, axis=axis, epsilon=1e-12)
    theirs = run_ort(x, scale, bias, axis, 1e-12)
    for a, b in zip(ours, theirs, strict=True):
        assert a.shape == b.shape and a.dtype == b.dtype
        if AVX2 and int(np.prod(norm)) % 8 == 0:
            np.testing.assert_array_equal(a, b)  # MLAS's AVX2 kernel, bit for bit
        else:
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_fma_f32_rounds_once():
    rng = np.random.default_rng(0)
    a, b, c = (rng.normal(0, 1, 100_000).astype(np.float32) for _ in range(3))
    got = fma_f32(a, b, c)
    exact = [np.float32(float(np.longdouble(x) * np.longdouble(y) + np.longdouble(z))) for x, y, z in
             zip(a[:2000], b[:2000], c[:2000], strict=True)]
    np.testing.assert_array_equal(got[:2000], np.array(exact, np.float32))
    # a tie broken by the low part: 1 + 2^-24 is halfway between float32 1 and its successor
    one, tiny = np.float32(1), np.float32(2.0 ** -24)
    assert fma_f32(np.float32(1 + 2.0 ** -23), tiny, one) == np.nextafter(one, np.float32(2))
    assert fma_f32(np.float32(1 - 2.0 ** -24), tiny, one) == one
