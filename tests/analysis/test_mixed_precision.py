"""The mixed-precision pass through ``qcompiler.compile``: exactness at 0, monotone sizes, the kept layers."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

import qcompiler
from qcompiler import ir
from qcompiler.errors import UserError
from qcompiler.ir.testing import run_onnxruntime
from qcompiler.sensitivity import error_measures, run_session
from qcompiler.summary import summarize

from .conftest import cnn, cnn_feeds


def compile_at(threshold, **options) -> ir.Model:
    return qcompiler.compile(cnn(), None, calib=cnn_feeds(), calibration="minmax", objective="size",
                             sensitivity_threshold=threshold, **options)


def test_threshold_zero_gives_back_the_input_model_bit_identical():
    model = compile_at(0.0)
    assert [n.op_type for n in model.graph] == [n.op_type for n in cnn().graph]  # BatchNormalization not folded
    feeds = cnn_feeds(count=3, seed=7)
    for feed in feeds:
        for a, b in zip(run_onnxruntime(cnn(), feed, optimize=True), run_onnxruntime(model, feed, optimize=True)):
            assert np.array_equal(a, b)
    assert all(r["precision"] == "float" for r in model.plan.reports["mixed_precision"]["layers"].values())


# At 1e-4 the Gemm fits the budget with 8-bit weights but not with x86-avx2's 7-bit ones (its error
# quantized alone: 6.5e-5 with 8 bits, 2.0e-4 with 7).
GEMM_AT_1E_4 = {"x86-vnni": "int8", "x86-avx2": "float"}


@pytest.mark.parametrize("target", sorted(GEMM_AT_1E_4))
def test_sizes_are_monotone_and_the_sensitive_layer_stays_float(target):
    thresholds = [0.0, 1e-5, 1e-4, 1e-3, 1.0]
    models = [compile_at(t, target=target) for t in thresholds]
    sizes = [ir.to_proto(m).ByteSize() for m in models]
    assert sizes == sorted(sizes, reverse=True) and sizes[0] > sizes[-1]
    feed = cnn_feeds(count=1)[0]
    precisions = [[(r["op"], r["precision"]) for r in summarize(m, feed)["layers"]] for m in models]
    # 1e-3: the first convolution, whose input has the spikes, is the one kept float
    assert precisions[3] == [("Conv", "float"), ("Conv", "int8"), ("GlobalAveragePool", "int8"), ("Gemm", "int8")]
    assert precisions[2] == [("Conv", "float"), ("Conv", "float"), ("GlobalAveragePool", "float"),
                             ("Gemm", GEMM_AT_1E_4[target])]
    assert all(p == "int8" for _, p in precisions[-1])
    plain = qcompiler.compile(cnn(), None, calib=cnn_feeds(), calibration="minmax", objective="size", target=target)
    assert [n.op_type for n in models[-1].graph] == [n.op_type for n in plain.graph]


def test_predicted_error_is_the_error_of_the_written_model():
    model = compile_at(1e-3)
    mixed = model.plan.reports["mixed_precision"]
    assert 1e-4 < mixed["predicted"]["nsr"] <= 1e-3
    feeds = cnn_feeds()[:mixed["samples"]]
    measured = error_measures(run_session(ir.to_proto(cnn()), feeds), run_session(ir.to_proto(model), feeds))
    assert measured["nsr"] == pytest.approx(mixed["predicted"]["nsr"], rel=1e-6)
    # the path runs from all float to all int8, one layer more at each step
    assert [step["int8"] for step in mixed["path"]][0] == "none" and len(mixed["path"]) == len(mixed["layers"]) + 1


def test_a_metric_callback_replaces_the_error_measure():
    seen = []

    def argmax_disagreement(reference, outputs):
        seen.append(len(reference))
        return float(np.mean([np.mean(r[0].argmax(1) != o[0].argmax(1)) for r, o in zip(reference, outputs)]))

    model = compile_at(0.0, metric=argmax_disagreement)
    mixed = model.plan.reports["mixed_precision"]
    assert seen and mixed["measure"] == "metric"
    if mixed["predicted"]["metric"] == 0.0:  # same classes as float: every layer may be int8
        assert any(r["precision"] == "int8" for r in mixed["layers"].values())
    assert mixed["predicted"]["metric"] == 0.0


def test_negative_threshold_is_a_user_error():
    with pytest.raises(UserError, match="threshold must be a number >= 0"):
        compile_at(-0.1)


def test_int16_activations_rescue_the_layer_int8_keeps_float():
    """At 1e-4 int8 keeps the first convolution (its input has the spikes) and the one after it float; with
    16-bit activations allowed the first reads its input in 16 bits over the observed extremes instead, so
    fewer weights stay float, the output error stays within the threshold, and onnxruntime runs the result
    with the error the search predicted."""
    plain, wide = compile_at(1e-4, target="x86-vnni"), compile_at(1e-4, target="x86-vnni", int16=True)
    feed = cnn_feeds(count=1)[0]
    precisions = {name: [r["precision"] for r in summarize(m, feed)["layers"]] for name, m in
                  (("plain", plain), ("wide", wide))}
    assert precisions["plain"][:2] == ["float", "float"]
    assert precisions["wide"][0] == "int16" and "float" not in precisions["wide"][1:]
    mixed = wide.plan.reports["mixed_precision"]
    assert [r["precision"] for r in mixed["layers"].values()] == [p for p in precisions["wide"]]
    assert mixed["predicted"]["nsr"] <= 1e-4
    feeds = cnn_feeds()[:mixed["samples"]]
    measured = error_measures(run_session(ir.to_proto(cnn()), feeds), run_session(ir.to_proto(wide), feeds))
    assert measured["nsr"] == pytest.approx(mixed["predicted"]["nsr"], rel=1e-6)
    first = next(n for n in wide.graph if n.op_type == "Conv")
    source = first.inputs[0].producer().inputs[0]  # the Conv reads DequantizeLinear(uint16)
    assert source.dtype == onnx.TensorProto.UINT16 and first.inputs[2].const is not None  # a float bias
    for a, b in zip(run_onnxruntime(wide, feed, optimize=True), run_onnxruntime(wide, feed, optimize=False)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_int16_without_a_threshold_is_a_user_error():
    with pytest.raises(UserError, match="int16 .* needs a sensitivity threshold"):
        qcompiler.compile(cnn(), None, calib=cnn_feeds(), int16=True)


def test_a_16_bit_layer_gets_8_bit_weights_where_int8_layers_get_7():
    """On x86-avx2 int8 layers keep 7-bit weights (u8·s8 pairs saturate an int16), which cost the Gemm its
    place at 1e-4; a layer reading 16-bit activations has no such kernel, so its weights take all 8 bits."""
    wide = compile_at(1e-4, target="x86-avx2", int16=True)
    plain = compile_at(1e-4, target="x86-avx2")
    layers = {r["op"]: r["precision"] for r in summarize(wide, cnn_feeds(count=1)[0])["layers"]}
    assert layers["Gemm"] == "int16" and "Gemm" not in {
        r["op"] for r in summarize(plain, cnn_feeds(count=1)[0])["layers"] if r["precision"] != "float"}
    weight = next(n for n in wide.graph if n.op_type == "Gemm").inputs[1].producer().inputs[0]
    assert weight.const.dtype == np.int8 and np.abs(weight.const.astype(int)).max() == 127


def test_a_target_that_runs_16_bits_fast_gets_them_without_asking(monkeypatch):
    """A target is data: one whose runtime has 16-bit kernels (an NPU's A16W8) says so, and the threshold
    search offers 16 bits by default there; ``int16=False`` still turns it off."""
    from qcompiler.executor.profiles import PROFILES, Profile
    from qcompiler.targets import TARGETS

    npu = TARGETS["x86-vnni"].with_options(name="npu-a16w8", wide_activations="fast")
    monkeypatch.setitem(TARGETS, npu.name, npu)
    monkeypatch.setitem(PROFILES, npu.name, Profile.of(npu))
    default, off = ([r["precision"] for r in compile_at(1e-4, target=npu.name, **int16).plan.reports[
        "mixed_precision"]["layers"].values()] for int16 in ({}, {"int16": False}))
    assert "int16" in default and "int16" not in off
