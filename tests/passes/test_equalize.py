"""Cross-layer equalization, high-bias absorption, ReLU6 replacement: small real graphs run in onnxruntime."""

from __future__ import annotations

import numpy as np
import onnx
import onnx.parser
import pytest

from qcompiler import PassManager, ir
from qcompiler.ir.testing import random_feeds, run_onnxruntime
from qcompiler.passes import (CrossLayerEqualization, FoldBatchNorm, HighBiasAbsorption, InferShapes,
                              KeepBatchNormStats, ReplaceReLU6)
from qcompiler.layers import input_ranges, output_ranges
from qcompiler.passes.equalize import find_cle_chains


def build(text: str, weights: dict[str, np.ndarray]) -> ir.Model:
    proto = onnx.parser.parse_model(text)
    proto.graph.initializer.extend(onnx.numpy_helper.from_array(a.astype(np.float32), n) for n, a in weights.items())
    onnx.checker.check_model(proto)
    model = ir.from_proto(proto)
    PassManager([InferShapes()])(model)
    return model


def spread(rng: np.random.Generator, shape: tuple[int, ...], axis: int) -> np.ndarray:
    """Random weights whose channels along ``axis`` differ in range by up to 100x."""
    w = rng.standard_normal(shape)
    factors = np.geomspace(0.05, 5.0, shape[axis])
    return w * factors.reshape([-1 if i == axis else 1 for i in range(len(shape))])


HEADER = '<ir_version: 8, opset_import: ["" : 13]>'


def conv_chain(relay: str = "Relu", seed: int = 0) -> ir.Model:
    rng = np.random.default_rng(seed)
    return build(f"""{HEADER}
    g (float[2,3,8,8] x) => (float[2,6,8,8] y) {{
      a = Conv <pads = [1,1,1,1]> (x, w1, b1)
      r = {relay}(a)
      y = Conv <pads = [1,1,1,1]> (r, w2, b2)
    }}""", {"w1": spread(rng, (8, 3, 3, 3), 0), "b1": rng.standard_normal(8), "w2": rng.standard_normal((6, 8, 3, 3)),
            "b2": rng.standard_normal(6)})


def layer(model: ir.Model, index: int):
    return [n for n in model.graph if n.op_type in ("Conv", "Gemm", "MatMul")][index]


def test_conv_relu_conv_ranges_become_equal(run_checked):
    model = conv_chain()
    before = output_ranges(layer(model, 0)).max() / output_ranges(layer(model, 0)).min()
    result = run_checked(model, CrossLayerEqualization(tolerance=1e-5))
    assert result.modified
    first, second = layer(model, 0), layer(model, 1)
    np.testing.assert_allclose(output_ranges(first), input_ranges(second), rtol=1e-4)
    assert output_ranges(first).max() / output_ranges(first).min() < before / 5
    assert model.plan.reports["equalize"]["pairs"] == [(first.name, second.name)]


@pytest.mark.parametrize("relay", ["LeakyRelu", "PRelu", "MaxPool", "Identity"])
def test_positively_homogeneous_relays(run_checked, relay):
    op = {"MaxPool": "MaxPool <kernel_shape = [1,1]>", "PRelu": "PRelu", "LeakyRelu": "LeakyRelu <alpha = 0.2>",
          "Identity": "Relu"}[relay]
    if relay != "PRelu":
        model = conv_chain(op)
    else:  # PRelu needs a slope input: one per channel
        model = build(f"""{HEADER}
        g (float[2,3,8,8] x) => (float[2,6,8,8] y) {{
          a = Conv <pads = [1,1,1,1]> (x, w1, b1)
          r = PRelu(a, slope)
          y = Conv <pads = [1,1,1,1]> (r, w2, b2)
        }}""", {"w1": spread(np.random.default_rng(1), (8, 3, 3, 3), 0), "b1": np.ones(8),
                "w2": np.random.default_rng(2).standard_normal((6, 8, 3, 3)), "b2": np.zeros(6),
                "slope": np.linspace(0.1, 0.3, 8).reshape(8, 1, 1)})
    assert run_checked(model, CrossLayerEqualization()).modified


def test_depthwise_triplet_converges_to_the_geometric_mean(run_checked):
    rng = np.random.default_rng(3)
    model = build(f"""{HEADER}
    g (float[2,4,8,8] x) => (float[2,5,8,8] y) {{
      a = Conv (x, w1, b1)
      r = Relu(a)
      d = Conv <group = 8, pads = [1,1,1,1]> (r, wd, bd)
      s = Relu(d)
      y = Conv (s, w3, b3)
    }}""", {"w1": spread(rng, (8, 4, 1, 1), 0), "b1": rng.standard_normal(8), "wd": spread(rng, (8, 1, 3, 3), 0)[::-1],
            "bd": rng.standard_normal(8), "w3": spread(rng, (5, 8, 1, 1), 1), "b3": rng.standard_normal(5)})
    r1, r2, r3 = output_ranges(layer(model, 0)), output_ranges(layer(model, 1)), input_ranges(layer(model, 2))
    expected = np.cbrt(r1 * r2 * r3)
    run_checked(model, CrossLayerEqualization(tolerance=1e-5))
    for ranges in (output_ranges(layer(model, 0)), input_ranges(layer(model, 1)), output_ranges(layer(model, 1)),
                   input_ranges(layer(model, 2))):
        np.testing.assert_allclose(ranges, expected, rtol=1e-3)


def test_gemm_and_matmul_chains(run_checked):
    rng = np.random.default_rng(4)
    model = build(f"""{HEADER}
    g (float[4,16] x) => (float[4,6] y) {{
      h = Gemm <transB = 1> (x, w1, b1)
      r = Relu(h)
      m = MatMul(r, w2)
      c = Add(m, b2)
      s = Relu(c)
      y = MatMul(s, w3)
    }}""", {"w1": spread(rng, (12, 16), 0), "b1": rng.standard_normal(12), "w2": spread(rng, (12, 10), 1),
            "b2": rng.standard_normal(10), "w3": rng.standard_normal((10, 6))})
    assert len(find_cle_chains(model.graph)[0]) == 2
    run_checked(model, CrossLayerEqualization(tolerance=1e-5))
    np.testing.assert_allclose(output_ranges(layer(model, 1)), input_ranges(layer(model, 2)), rtol=1e-4)


def test_flatten_repeats_the_scale_over_positions(run_checked):
    rng = np.random.default_rng(5)
    model = build(f"""{HEADER}
    g (float[2,3,4,4] x) => (float[2,7] y) {{
      a = Conv <pads = [1,1,1,1]> (x, w1, b1)
      r = Relu(a)
      f = Flatten(r)
      y = Gemm <transB = 1> (f, w2, b2)
    }}""", {"w1": spread(rng, (5, 3, 3, 3), 0), "b1": rng.standard_normal(5), "w2": rng.standard_normal((7, 80)),
            "b2": rng.standard_normal(7)})
    pair = find_cle_chains(model.graph)[0][0]
    assert pair.repeat == 16
    assert run_checked(model, CrossLayerEqualization()).modified


def test_relu6_ends_the_chain_until_replaced(run_checked):
    model = build(f"""{HEADER}
    g (float[2,3,8,8] x) => (float[2,6,8,8] y) {{
      a = Conv <pads = [1,1,1,1]> (x, w1, b1)
      r = Clip(a, lo, hi)
      y = Conv <pads = [1,1,1,1]> (r, w2, b2)
    }}""", {"w1": spread(np.random.default_rng(6), (8, 3, 3, 3), 0), "b1": np.zeros(8),
            "w2": np.random.default_rng(7).standard_normal((6, 8, 3, 3)), "b2": np.zeros(6),
            "lo": np.array(0.0), "hi": np.array(6.0)})
    assert not run_checked(model, CrossLayerEqualization()).modified
    assert "not positively homogeneous" in model.plan.reports["equalize"]["skipped"][0][1]  # the first layer's reason
    feeds = {"x": np.random.default_rng(8).standard_normal((2, 3, 8, 8)).astype(np.float32) * 0.01}
    expected = run_onnxruntime(model, feeds)[0]  # small inputs: the float model never reaches 6
    PassManager([ReplaceReLU6()])(model)
    assert [n.op_type for n in model.graph] == ["Conv", "Relu", "Conv"] and "lo" not in model.graph.initializers
    assert run_checked(model, CrossLayerEqualization(), feeds=feeds).modified
    np.testing.assert_allclose(run_onnxruntime(model, feeds)[0], expected, rtol=1e-4, atol=1e-4)


def test_non_matches_are_reported():
    model = build(f"""{HEADER}
    g (float[2,3,8,8] x) => (float[2,6,8,8] y, float[2,8,8,8] a) {{
      a = Conv <pads = [1,1,1,1]> (x, w1, b1)
      s = Sigmoid(a)
      y = Conv <pads = [1,1,1,1]> (s, w2, b2)
    }}""", {"w1": np.ones((8, 3, 3, 3)), "b1": np.zeros(8), "w2": np.ones((6, 8, 3, 3)), "b2": np.zeros(6)})
    pairs, skipped = find_cle_chains(model.graph)
    assert not pairs and "graph output" in skipped[0][1]  # skipped[i]: (layer name, reason), in graph order
    model.graph.outputs.pop()
    assert "Sigmoid" in find_cle_chains(model.graph)[1][0][1]


def test_a_shared_weight_is_copied_not_scaled_behind_the_other_readers_back(run_checked):
    rng = np.random.default_rng(9)
    model = build(f"""{HEADER}
    g (float[2,8,8,8] x) => (float[2,8,8,8] y, float[2,8,8,8] z) {{
      a = Conv <pads = [1,1,1,1]> (x, w, b)
      r = Relu(a)
      y = Conv <pads = [1,1,1,1]> (r, w2, b)
      z = Conv <pads = [1,1,1,1]> (x, w, b)
    }}""", {"w": spread(rng, (8, 8, 3, 3), 0), "b": rng.standard_normal(8), "w2": rng.standard_normal((8, 8, 3, 3))})
    original = model.graph.initializers["w"].const.copy()
    run_checked(model, CrossLayerEqualization())
    third = layer(model, 2)
    assert third.inputs[1].name == "w" and np.array_equal(third.inputs[1].const, original)
    assert layer(model, 0).inputs[1] is not third.inputs[1]


def bn_chain() -> ir.Model:
    rng = np.random.default_rng(10)
    return build(f"""{HEADER}
    g (float[8,3,8,8] x) => (float[8,6,8,8] y) {{
      a = Conv <pads = [1,1,1,1]> (x, w1)
      n = BatchNormalization(a, gamma, beta, mean, var)
      r = Relu(n)
      y = Conv (r, w2, b2)
    }}""", {"w1": rng.standard_normal((8, 3, 3, 3)), "gamma": np.linspace(0.2, 1.0, 8),
            "beta": np.linspace(-1.0, 4.0, 8), "mean": rng.standard_normal(8) * 0.1, "var": np.linspace(0.5, 2, 8) ** 2,
            "w2": rng.standard_normal((6, 8, 1, 1)), "b2": rng.standard_normal(6)})


def test_batchnorm_stats_survive_folding_and_follow_equalization():
    model = bn_chain()
    conv = layer(model, 0)
    PassManager([KeepBatchNormStats(), FoldBatchNorm()])(model)
    mean, std = model.plan.batchnorm_stats[conv.outputs[0].name]
    np.testing.assert_allclose(mean, np.linspace(-1.0, 4.0, 8))
    np.testing.assert_allclose(std, np.linspace(0.2, 1.0, 8))
    before = output_ranges(conv).copy()
    PassManager([CrossLayerEqualization()])(model)
    scale = before / output_ranges(conv)
    new_mean, new_std = model.plan.batchnorm_stats[conv.outputs[0].name]
    np.testing.assert_allclose(new_mean, mean / scale, rtol=1e-5)
    np.testing.assert_allclose(new_std, std / scale, rtol=1e-5)


def test_high_bias_absorption_moves_what_relu_never_clips():
    model = bn_chain()
    PassManager([KeepBatchNormStats(), FoldBatchNorm(), CrossLayerEqualization()])(model)
    conv, second = layer(model, 0), layer(model, 1)
    mean, std = model.plan.batchnorm_stats[conv.outputs[0].name]
    bias_before = conv.inputs[2].const.copy()
    feeds = random_feeds(model, seed=1)
    expected = run_onnxruntime(model, feeds)[0]
    result = PassManager([HighBiasAbsorption()])(model)
    assert result.modified and model.plan.reports["absorb_high_bias"] == [conv.name]
    c = np.maximum(0.0, mean - 3 * std)
    assert np.any(c > 0)
    np.testing.assert_allclose(conv.inputs[2].const, bias_before - c, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(model.plan.batchnorm_stats[conv.outputs[0].name][0], mean - c, rtol=1e-6)
    difference = np.abs(run_onnxruntime(model, feeds)[0] - expected)
    assert np.median(difference) < 1e-5 * np.abs(expected).max()  # exact where no pre-activation is below c
    assert difference.max() > 1e-3  # and only there: these random inputs are not N(beta, gamma^2)
    assert second.inputs[2].const.shape == (6,)
    assert not PassManager([HighBiasAbsorption()])(model).modified  # c is now 0 everywhere


def test_passes_are_registered_for_toml_pipelines(tmp_path):
    from qcompiler.pipelines import load_pipeline

    path = tmp_path / "dfq.toml"
    path.write_text('[pipeline]\n[[pipeline.passes]]\nname = "replace-relu6"\n[[pipeline.passes]]\nname = "equalize"\n'
                    'tolerance = 0.01\n[[pipeline.passes]]\nname = "absorb-high-bias"\n')
    passes = load_pipeline(path).passes
    assert [type(p).__name__ for p in passes] == ["ReplaceReLU6", "CrossLayerEqualization", "HighBiasAbsorption"]
    assert passes[1].tolerance == 0.01
