"""Bias correction (empirical and analytic) on small real graphs, quantized and run in onnxruntime."""

from __future__ import annotations

import numpy as np
import pytest

from qcompiler import PassManager, ir
from qcompiler.errors import PipelineOrderError, UserError
from qcompiler.ir.testing import run_onnxruntime
from qcompiler.passes import (AssignPrecision, BiasCorrection, Calibrate, FoldBatchNorm, InsertQDQ,
                              KeepBatchNormStats)
from qcompiler.passes.bias_correction import clipped_normal_mean, expected_input

from .test_equalize import HEADER, build


@pytest.mark.parametrize("lo, hi", [(0.0, np.inf), (0.0, 6.0), (-np.inf, np.inf), (-1.0, 2.0)])
def test_clipped_normal_mean_matches_sampling(lo, hi):
    rng = np.random.default_rng(0)
    mean, std = np.array([-1.0, 0.5, 3.0, 7.0]), np.array([0.5, 2.0, 1.0, 3.0])
    samples = np.clip(rng.normal(mean, std, size=(400_000, 4)), lo, hi)
    np.testing.assert_allclose(clipped_normal_mean(mean, std, lo, hi), samples.mean(axis=0), atol=0.01)


def skewed_conv(seed: int = 0) -> ir.Model:
    """Conv -> Relu -> Conv whose first layer's channels differ in range by 100x (per-tensor weights lose
    the small channels, a biased error)."""
    rng = np.random.default_rng(seed)
    w1 = rng.standard_normal((8, 3, 3, 3)) * np.geomspace(0.02, 2.0, 8)[:, None, None, None] + 0.01
    return build(f"""{HEADER}
    g (float[4,3,8,8] x) => (float[4,6,8,8] y) {{
      a = Conv <pads = [1,1,1,1]> (x, w1, b1)
      r = Relu(a)
      y = Conv <pads = [1,1,1,1]> (r, w2, b2)
    }}""", {"w1": w1, "b1": rng.standard_normal(8) * 0.1, "w2": rng.standard_normal((6, 8, 3, 3)),
            "b2": np.zeros(6)})


def feeds(count: int, seed: int) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [{"x": (rng.random((4, 3, 8, 8)) + 0.5).astype(np.float32)} for _ in range(count)]


def mean_shift(model: ir.Model, quantized: ir.Model, data) -> float:
    """max over channels of |mean(quantized output) - mean(float output)| on ``data``."""
    ref = np.concatenate([run_onnxruntime(model, f)[0] for f in data])
    got = np.concatenate([run_onnxruntime(quantized, f)[0] for f in data])
    return float(np.abs((got - ref).mean(axis=(0, 2, 3))).max())


def quantize(model: ir.Model, data, correction: str | None) -> ir.Model:
    copy = model.clone()
    passes = [AssignPrecision(target="x86-vnni", per_channel=False), Calibrate(data=data, method="minmax")]
    passes += [BiasCorrection(data=data, method=correction)] if correction else []
    PassManager(passes + [InsertQDQ()])(copy)
    return copy


def test_empirical_correction_removes_the_mean_shift_on_held_out_data():
    model, calib, test = skewed_conv(), feeds(8, 1), feeds(4, 2)
    plain = quantize(model, calib, None)
    corrected = quantize(model, calib, "empirical")
    assert set(corrected.plan.reports["bias_correction"]) == {n.name for n in model.graph if n.op_type == "Conv"}
    before, after = mean_shift(model, plain, test), mean_shift(model, corrected, test)
    assert after < 0.5 * before


def test_empirical_correction_needs_data_and_activation_ranges():
    data = [{"x": np.ones((4, 3, 8, 8), np.float32)}]
    with pytest.raises(UserError, match="calibration data"):
        PassManager([AssignPrecision(target="x86-vnni"), Calibrate(data=data), BiasCorrection()])(skewed_conv())
    with pytest.raises(PipelineOrderError, match="bias-correction needs .* run .*calibrate or calibrate-search"):
        PassManager([AssignPrecision(target="x86-vnni"), BiasCorrection(data=data)])(skewed_conv())
    PassManager([AssignPrecision(target="x86-vnni"), BiasCorrection(method="analytic")])  # needs no ranges


def bn_relu_conv() -> ir.Model:
    rng = np.random.default_rng(3)
    return build(f"""{HEADER}
    g (float[4,3,8,8] x) => (float[4,6,8,8] y) {{
      a = Conv <pads = [1,1,1,1]> (x, w1)
      n = BatchNormalization(a, gamma, beta, mean, var)
      r = Clip(n, lo, hi)
      y = Conv (r, w2)
    }}""", {"w1": rng.standard_normal((8, 3, 3, 3)), "gamma": np.linspace(0.5, 2.0, 8), "beta": np.linspace(-1, 5, 8),
            "mean": np.zeros(8), "var": np.ones(8), "lo": np.array(0.0), "hi": np.array(6.0),
            "w2": rng.standard_normal((6, 8, 1, 1)) * np.geomspace(0.01, 1.0, 8)[None, :, None, None]})


def test_analytic_correction_subtracts_eps_times_the_expected_input():
    model = bn_relu_conv()
    PassManager([KeepBatchNormStats(), FoldBatchNorm(), AssignPrecision(target="x86-vnni", per_channel=False)])(model)
    second = [n for n in model.graph if n.op_type == "Conv"][1]
    expected_x = expected_input(model, second)
    np.testing.assert_allclose(expected_x, clipped_normal_mean(np.linspace(-1, 5, 8), np.linspace(0.5, 2.0, 8), 0, 6))
    weight = second.inputs[1]
    scale = float(weight.quant.scale)
    error = (np.clip(np.rint(weight.const / scale), -127, 127) * scale - weight.const)[:, :, 0, 0]
    result = PassManager([BiasCorrection(method="analytic")])(model)
    assert result.modified and list(model.plan.reports["bias_correction"]) == [second.name]  # the first conv reads no BN
    np.testing.assert_allclose(second.inputs[2].const, -(error @ expected_x), rtol=1e-4, atol=1e-9)

