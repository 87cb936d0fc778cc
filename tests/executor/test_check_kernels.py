"""check-kernels: simulation vs the target's integer kernels; the saturation trap found and avoided."""

from __future__ import annotations

import numpy as np

import qcompiler
from qcompiler import passes as lib
from qcompiler.executor import Interpreter
from qcompiler.instruments import CheckIdempotent, CheckModifiedFlag
from qcompiler.pass_manager import PassManager
from qcompiler.targets import TARGETS

from .conftest import cnn_model, feeds

SATURATING = [{"x": 4 * f["x"]} for f in feeds(30, 2)]  # large activations: u8 x s8 pairs overflow int16


def test_the_int8_pipeline_runs_the_check_and_reports_it():
    model = qcompiler.compile(cnn_model(), None, calib=feeds(1), target="x86-avx2", objective="size")
    report = model.plan.reports["check_kernels"]
    assert report["target"] == "x86-avx2" and report["samples"] == 2 and not report["diverges"]
    assert "requantized_7bit" not in report


def test_exact_accumulation_targets_skip_the_check():
    model = qcompiler.compile(cnn_model(), None, calib=feeds(1), target="x86-vnni", objective="size")
    assert model.plan.reports["check_kernels"] == {"target": "x86-vnni", "skipped": "exact int32 accumulation, no saturation"}


def test_avx2_saturation_is_found_and_weights_are_requantized_to_7_bits(cnn_qdq_copy):
    model = cnn_qdq_copy
    before = {n.name: n.inputs[0].const for n in model.graph if n.op_type == "DequantizeLinear"
              and n.inputs[0].const is not None and n.inputs[0].const.dtype == np.int8}
    assert max(np.abs(w.astype(int)).max() for w in before.values()) == 127
    check = lib.CheckKernels(data=SATURATING, deploy="x86-avx2")
    PassManager([check], instruments=[CheckModifiedFlag(), CheckIdempotent()])(model)
    report = model.plan.reports["check_kernels"]
    assert report["diverges"] and report["target_sqnr_db"] < float(report["exact_sqnr_db"]) - 3
    assert report["requantized_7bit"] and not report["after"]["diverges"]
    weights = [n.inputs[0].const for n in model.graph if n.op_type == "DequantizeLinear"
               and n.inputs[0].const is not None and n.inputs[0].const.dtype == np.int8]
    depthwise = [w for w in weights if w.shape[1] == 1 and w.ndim == 4]
    assert all(np.abs(w.astype(int)).max() <= 64 for w in weights if not any(w is d for d in depthwise))
    for feed in SATURATING:  # the deployed AVX2 kernels now compute what the exact ones do
        np.testing.assert_array_equal(Interpreter(model, profile="x86-avx2").run(feed)["y"],
                                      Interpreter(model, profile="exact").run(feed)["y"])


def test_requantized_model_keeps_its_accuracy_against_float(cnn_qdq_copy):
    model = cnn_qdq_copy
    PassManager([lib.CheckKernels(data=SATURATING, deploy="x86-avx2")])(model)
    reference = Interpreter(cnn_model())
    for feed in feeds(31, 2):
        want = reference.run(feed)["y"]
        got = Interpreter(model, profile="x86-avx2").run(feed)["y"]
        assert np.sum((got - want) ** 2) < 0.05 * np.sum(want ** 2)


def test_without_fix_the_model_is_left_alone(cnn_qdq_copy):
    model = cnn_qdq_copy
    result = PassManager([lib.CheckKernels(data=SATURATING, deploy="x86-avx2", fix=False)])(model)
    assert model.plan.reports["check_kernels"]["diverges"] and not result.records[-1].modified


def test_plan_and_qdq_are_required_as_a_user_error():
    import pytest

    from qcompiler.errors import PipelineOrderError

    with pytest.raises(PipelineOrderError, match="check-kernels needs a quantization plan .* run .*assign-precision"):
        PassManager([lib.CheckKernels(data=feeds(1))])(cnn_model())
    assert TARGETS["x86-avx2"].weight_reduce_range


def test_a_model_whose_simulation_would_not_fit_the_budget_is_not_checked(cnn_qdq_copy):
    model = cnn_qdq_copy
    weights = sum(4 * n.inputs[0].const.size for n in model.graph
                  if n.op_type == "DequantizeLinear" and n.inputs[0].const is not None)
    PassManager([lib.CheckKernels(data=SATURATING, deploy="x86-avx2", max_float_weight_bytes=weights - 1)])(model)
    report = model.plan.reports["check_kernels"]
    assert report["target"] == "x86-avx2" and "GiB of dequantized weights" in report["skipped"]
    PassManager([lib.CheckKernels(data=SATURATING, deploy="x86-avx2", max_float_weight_bytes=weights)])(model)
    assert "skipped" not in model.plan.reports["check_kernels"]
