"""Numerics profiles by name and target; RangeObserver and CompareInterpreter."""

from __future__ import annotations

import math
import platform

import numpy as np
import pytest

from qcompiler.ir.testing import x86_cpu_flags

from qcompiler.errors import UserError
from qcompiler.executor import PROFILES, CompareInterpreter, Interpreter, RangeObserver, get_profile
from qcompiler.targets import TARGETS, detect_target, runtime_saturates_u8s8

from .conftest import cnn_model, feeds


def test_every_target_is_a_profile_with_its_accumulation_and_float_kernels():
    for name, target in TARGETS.items():
        profile = get_profile(name)
        assert profile.fuse and (profile.accumulation, profile.isa) == (target.accumulation, target.isa)
    assert get_profile("auto") == get_profile(detect_target().name)
    assert list(PROFILES) == ["simulate", "exact", "x86-avx2", "x86-vnni", "arm64"]
    assert not PROFILES["simulate"].fuse and PROFILES["x86-avx2"].accumulation == "avx2_pair_saturate"
    assert (PROFILES["x86-avx2"].isa, PROFILES["x86-vnni"].isa, PROFILES["arm64"].isa) == ("fma3", "avx512f", None)


def test_auto_follows_the_probe_and_a_cpu_without_vnni_saturates():
    """``auto`` is what onnxruntime computes here (the probe), not what the CPU flags suggest; the one
    thing the flags do settle is that an x86 CPU with AVX2 and no VNNI at all has only MLAS's
    ``vpmaddubsw`` kernels, which saturate (the AVX2-only AMD EPYC CI machines; the AVX512-VNNI ones
    answered exact)."""
    saturates = runtime_saturates_u8s8()
    if platform.machine().lower() in ("x86_64", "amd64"):
        assert detect_target().name == ("x86-avx2" if saturates else "x86-vnni")
    flags = x86_cpu_flags()
    if "avx2" in flags and not flags & {"avx512_vnni", "avx_vnni"}:
        assert saturates and get_profile("auto").accumulation == "avx2_pair_saturate"


def test_unknown_profile_is_a_user_error():
    with pytest.raises(UserError, match="unknown numerics profile 'riscv'"):
        get_profile("riscv")


def test_range_observer_records_min_and_max_of_every_float_value_over_runs():
    model = cnn_model()
    observer = RangeObserver(model, free_dead_values=False)
    runs = feeds(20, 2)
    values = []
    for feed in runs:
        observer.run(feed)
        values.append(dict(observer.values))
    for name in ("c1", "r1", "s", "y"):
        lo = min(float(v[name].min()) for v in values)
        hi = max(float(v[name].max()) for v in values)
        assert observer.ranges[name] == (lo, hi)
    assert observer.ranges["r1"][0] == 0.0  # after Relu


def test_compare_interpreter_reports_each_quantized_node_against_the_float_model(cnn_qdq):
    compare = CompareInterpreter(cnn_qdq, cnn_model(), profile="exact")
    for feed in feeds(21, 2):
        out = compare.run(feed)
    assert "y" in out
    errors = compare.errors
    assert {"c1", "s", "y"} <= set(errors)  # the first conv's output, the residual add, the logits
    for error in errors.values():
        assert 5 < error.sqnr_db < 80, (error.name, error.sqnr_db)
    same = CompareInterpreter(cnn_model(), cnn_model())
    same.run(feeds(22, 1)[0])
    assert same.errors and all(math.isinf(e.sqnr_db) for e in same.errors.values())


def test_compare_sees_the_saturation_of_the_avx2_profile(cnn_qdq):
    feed = {"x": 4 * feeds(23, 1)[0]["x"]}
    exact, avx2 = (CompareInterpreter(cnn_qdq, cnn_model(), profile=p) for p in ("exact", "x86-avx2"))
    exact.run(feed)
    avx2.run(feed)
    assert avx2.errors["y"].noise > exact.errors["y"].noise
    np.testing.assert_array_equal(Interpreter(cnn_qdq, profile="exact").run(feed)["y"],
                                  exact.run(feed)["y"])  # comparing changes no output
