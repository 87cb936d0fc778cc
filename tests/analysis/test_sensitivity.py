"""Error measures and per-layer sensitivity on real onnxruntime runs of a calibrated CNN."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
from .conftest import cnn, cnn_feeds

from qcompiler import PassManager
from qcompiler.passes import AssignPrecision, Calibrate
from qcompiler.passes.insert_qdq import InsertQDQ
from qcompiler.pipelines import canonicalize
from qcompiler.sensitivity import Evaluator, error_measures, layer_sensitivity, name_nodes
from qcompiler.summary import precision
from qcompiler.targets import TARGETS

TARGET = TARGETS["x86-vnni"]


def test_error_measures_definitions():
    rng = np.random.default_rng(0)
    y, z = rng.standard_normal((2, 5)), rng.standard_normal(7)
    noise = rng.standard_normal((2, 5)) * 0.1
    same = error_measures([[y, z]], [[y, z]])
    assert same == {"nsr": 0.0, "sqnr_db": math.inf, "cosine": pytest.approx(1.0)}
    errors = error_measures([[y, z]], [[y + noise, z]], metric=lambda ref, out: float(np.abs(out[0][0] - ref[0][0]).max()))
    expected = (np.square(noise).sum() / np.square(y).sum() + 0.0) / 2  # mean over the two outputs
    assert errors["nsr"] == pytest.approx(expected, rel=1e-12)
    assert errors["sqnr_db"] == pytest.approx(-10 * math.log10(expected))
    cosine = float(y.ravel() @ (y + noise).ravel() / np.linalg.norm(y) / np.linalg.norm(y + noise))
    assert errors["cosine"] == pytest.approx((cosine + 1.0) / 2)
    assert errors["metric"] == pytest.approx(np.abs(noise).max())


def test_error_measures_pool_feeds():
    a, b = np.array([1.0, 0.0]), np.array([0.0, 3.0])
    errors = error_measures([[a], [b]], [[a + [0.5, 0.0]], [b]])
    assert errors["nsr"] == pytest.approx(0.25 / 10.0)  # pooled: noise 0.25 over energy 1 + 9


@pytest.fixture(scope="module")
def evaluator():
    model = cnn()
    feeds = cnn_feeds()
    PassManager(canonicalize() + [AssignPrecision(target=TARGET.name),
                                  Calibrate(data=feeds, method="minmax")])(model)
    name_nodes(model)
    return Evaluator.from_calibrated(model, feeds[:3], assign_options={"target": TARGET, "per_channel": True})


def test_configurations_quantize_exactly_the_layers_not_kept_float(evaluator):
    layers = _layers(evaluator)
    assert [n.split("_")[0] for n in layers] == ["Conv", "Conv", "GlobalAveragePool", "Gemm"]
    first = layers[0]
    model = evaluator.build({first})
    InsertQDQ()(model)
    precisions = {n.name: precision(n) for n in model.graph if n.name in layers}
    assert precisions == {first: "float", **{name: "int8" for name in layers[1:]}}
    # a float layer starts no float island: the pool after an excluded conv is float too
    model = evaluator.build({layers[1]})
    assert not any(model.plan.is_quantized(n) for n in model.graph if n.name in (layers[1], layers[2]))


def _layers(evaluator):
    model = evaluator.build(())
    return [n.name for n in model.graph if model.plan.is_quantized(n) and n.op_type in TARGET.int8_ops]


def test_all_float_matches_reference_and_all_int8_does_not(evaluator):
    layers = _layers(evaluator)
    everything_float = evaluator.evaluate(layers)
    assert everything_float.quantized_nodes == frozenset()
    assert everything_float.errors["nsr"] < 1e-10  # only BatchNormalization folding rounds differently
    everything = evaluator.evaluate(())
    assert set(layers) <= everything.quantized_nodes
    assert 1e-6 < everything.errors["nsr"] < 1e-2


def test_sensitivity_finds_the_layer_with_the_spiky_input_and_caches(evaluator):
    layers = _layers(evaluator)
    sensitivity = layer_sensitivity(evaluator, layers)
    alone = {n: sensitivity[n]["quantized_alone"]["nsr"] for n in layers}
    assert max(alone, key=alone.get) == layers[0]
    assert alone[layers[2]] < 1e-10  # a pool alone has no quantized neighbour: nothing is quantized
    kept_float = {n: sensitivity[n]["float_alone"]["nsr"] for n in layers}
    assert min(kept_float, key=kept_float.get) == layers[0]  # keeping it float helps most
    assert kept_float[layers[0]] < evaluator.evaluate(()).errors["nsr"]
    count = evaluator.evaluations
    layer_sensitivity(evaluator, layers)
    assert evaluator.evaluations == count  # every configuration was cached


def test_configurations_on_threads_give_the_sequential_results(evaluator):
    """The local path measures configurations on threads of this process (one onnxruntime thread per
    session): the cache, the evaluation count and every number are those of the one-by-one loop."""
    layers = _layers(evaluator)
    configurations = [frozenset(layers) - {name} for name in layers] + [frozenset({name}) for name in layers]
    results = {}
    for workers in (1, 2):
        fresh = dataclasses.replace(evaluator, cache={}, keys={}, evaluations=0, remote=None, workers=workers)
        results[workers] = ([(e.quantized_nodes, e.errors, e.size) for e in fresh.evaluate_all(configurations)],
                            fresh.evaluations)
    assert results[2] == results[1]
    assert results[1][1] == len({q for q, _, _ in results[1][0]})  # one session per distinct configuration
