"""The mixed-precision pass through ``qcompiler.compile``: exactness at 0, monotone sizes, the kept layers."""

from __future__ import annotations

import numpy as np
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
