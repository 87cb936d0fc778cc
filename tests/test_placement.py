"""Latency-aware placement: the partition into regions, the subgraphs cut out of the float and int8
models, the paired test, the choice from a fixed table, and the cache that makes compiles reproducible."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import qcompiler
from qcompiler import PassManager
from qcompiler.assignment import assign
from qcompiler.errors import UserError
from qcompiler.ir import to_proto
from qcompiler.ir.testing import parse, tensor_text
from qcompiler.lowering import lower
from qcompiler.passes import InferShapes
from qcompiler import placement
from qcompiler.placement import (EARLY_ROUNDS, T_EARLY, T_SEPARATED, Comparison, Indexed, LatencyCache, Region, choose,
                                 compare_all, decide, machine_key, partition, predicted_ms, region_subgraphs,
                                 settled, subgraph_key, touching, units)
from qcompiler.sensitivity import name_nodes
from qcompiler.targets import get_target


def _two_regions():
    """Conv -> Relu -> MaxPool -> Conv, a float Sigmoid, then Conv -> Relu: two int8 regions."""
    rng = np.random.default_rng(0)
    weights = ", ".join(tensor_text(k, rng.normal(0, 0.3, s).astype(np.float32)) for k, s in
                        {"w1": (8, 3, 3, 3), "w2": (8, 8, 1, 1), "w3": (4, 8, 3, 3)}.items())
    return parse(f"""<ir_version: 8, opset_import: ["" : 13]>
    g (float[2,3,16,16] x) => (float[2,4,8,8] y) <{weights}> {{
      c1 = Conv <pads = [1,1,1,1]> (x, w1)
      r1 = Relu(c1)
      p1 = MaxPool <kernel_shape = [2,2], strides = [2,2]> (r1)
      c2 = Conv(p1, w2)
      s = Sigmoid(c2)
      c3 = Conv <pads = [1,1,1,1]> (s, w3)
      y = Relu(c3)
    }}""")


def _calibrated(model):
    model = PassManager([InferShapes()])(model).model
    name_nodes(model)
    assign(model, get_target("x86-vnni"), exclude=[], per_channel=True)
    model.plan.set_ranges({v: (-20.0, 20.0) for v in model.plan.pending})  # past every value here
    return model


def test_partition_joins_nodes_through_quantized_tensors_and_stops_at_float_ops():
    model = _calibrated(_two_regions())
    ops = {n.name: n.op_type for n in model.graph}
    regions = partition(model)
    assert [[ops[n] for n in r.nodes] for r in regions] == [["Conv", "Relu", "MaxPool", "Conv"], ["Conv", "Relu"]]
    assert all(set(r.layers) <= set(r.nodes) and r.layers for r in regions)
    assert "Sigmoid" not in {ops[n] for r in regions for n in r.nodes}


def test_units_are_the_weighted_layers_of_multi_layer_regions_and_touch_through_a_shared_tensor():
    model = _calibrated(_two_regions())
    ops = {n.name: n.op_type for n in model.graph}
    candidates = units(model, partition(model), 2)
    assert [([ops[n] for n in u.nodes], u.parent, u.index) for u in candidates] == [
        (["Conv", "Relu"], 0, 2), (["Conv"], 0, 3)]  # the larger weight first; region 1 has one layer
    assert touching(model, candidates) == {2: set(), 3: set()}  # the MaxPool between them stays float
    rng = np.random.default_rng(0)
    weights = ", ".join(tensor_text(k, rng.normal(0, 0.3, s).astype(np.float32)) for k, s in
                        {"w1": (4, 3, 1, 1), "w2": (4, 3, 1, 1)}.items())
    fork = _calibrated(parse(f"""<ir_version: 8, opset_import: ["" : 13]>
    g (float[1,3,8,8] x) => (float[1,4,8,8] a, float[1,4,8,8] b) <{weights}> {{
      c1 = Conv(x, w1)
      a = Sigmoid(c1)
      c2 = Conv(x, w2)
      b = Sigmoid(c2)
    }}"""))
    (region,) = partition(fork)
    both = units(fork, [region], 1)
    assert touching(fork, both) == {1: {2}, 2: {1}}  # one QuantizeLinear of x feeds both


def test_region_subgraphs_carry_the_transitions_and_compute_the_region():
    model = _calibrated(_two_regions())
    regions = partition(model)
    float_model = model.clone()
    for value in float_model.graph.values():
        value.quant = None
    float_model.plan.start(float_model.plan.target)
    int8_model = lower(model.clone())
    types = {v.name: v.dtype for m in (float_model, int8_model) for v in m.graph.values() if v.dtype}
    x = np.random.default_rng(1).normal(size=(2, 3, 16, 16)).astype(np.float32)
    floating, quantized = region_subgraphs(regions[0], Indexed(to_proto(float_model)), Indexed(to_proto(int8_model)),
                                           types, {"x": x.shape})
    assert floating.inputs == quantized.inputs == ("x",)
    assert [n.op_type for n in floating.proto.graph.node] == ["Conv", "Relu", "MaxPool", "Conv"]
    int8_ops = [n.op_type for n in quantized.proto.graph.node]
    assert int8_ops.count("QuantizeLinear") == 4 and "Relu" not in int8_ops  # x, the Relu, the pool, the output
    outputs = [ort.InferenceSession(s.proto.SerializeToString(), providers=["CPUExecutionProvider"])
               .run(None, {"x": x})[0] for s in (floating, quantized)]
    assert outputs[0].shape == outputs[1].shape == (2, 8, 8, 8)
    error = np.sum((outputs[0] - outputs[1]) ** 2) / np.sum(outputs[0] ** 2)
    assert 0 < error < 0.02  # the quantized region computes the float one, with rounding


def test_decide_separates_a_clear_difference_and_not_noise():
    rng = np.random.default_rng(0)
    noise = list(1.0 + 0.05 * rng.standard_normal(12))
    mean, t, separated = decide(noise, list(1.0 + 0.05 * rng.standard_normal(12)))
    assert not separated and abs(t) < 4
    mean, t, separated = decide([2.0 + 0.05 * e for e in noise], noise)
    assert separated and t > 4 and mean == pytest.approx(np.log(2), abs=0.05)


def test_decide_separates_a_steady_gain_through_rounds_in_which_the_machine_stalled():
    """Fourteen rounds with int8 20 % faster, one round with the float model's runs stalled and one with the
    int8 model's: the trimmed t separates it, the plain mean and variance would not (t about 2)."""
    rng = np.random.default_rng(0)
    float_ms = list(1.2 * (1.0 + 0.01 * rng.standard_normal(16)))
    int8_ms = list(1.0 + 0.01 * rng.standard_normal(16))
    float_ms[3] *= 3.0
    int8_ms[9] *= 3.0
    ratios = np.log(np.asarray(float_ms) / np.asarray(int8_ms))
    assert ratios.mean() / (ratios.std(ddof=1) / 4) < T_SEPARATED
    mean, t, separated = decide(float_ms, int8_ms)
    assert separated and t > 10 and mean == pytest.approx(np.log(1.2), abs=0.02)


def _chain(count: int) -> bytes:
    """``count`` Sigmoids in a chain: a model whose latency grows with ``count``."""
    body = "\n".join(f"s{i + 1} = Sigmoid(s{i})" for i in range(count))
    return onnx.parser.parse_model(f"""<ir_version: 8, opset_import: ["" : 13]>
    g (float[1,16,32,32] s0) => (float[1,16,32,32] s{count}) {{ {body} }}""").SerializeToString()


CHAIN_FEED = {"s0": np.random.default_rng(0).standard_normal((1, 16, 32, 32)).astype(np.float32)}


def test_a_clear_cut_comparison_stops_after_four_rounds():
    """One Sigmoid against forty in a chain: separated far past ``T_EARLY`` long before six rounds."""
    comparison = compare_all((_chain(1), _chain(40)), CHAIN_FEED, threads=1)[0, 1]
    assert comparison.rounds == EARLY_ROUNDS and comparison.t <= -T_EARLY and not comparison.int8


def test_three_models_in_one_rotation_and_a_model_in_no_open_pair_is_not_run(monkeypatch):
    """Chains of 1, 20 and 60 Sigmoids, each pair with the longer chain as "float": every pair separates
    within ``min_rounds``, the shorter chain wins each; with one pair, the third model runs only its first
    timing."""
    models = (_chain(1), _chain(20), _chain(60))
    found = compare_all(models, CHAIN_FEED, threads=1, pairs=((1, 0), (2, 0), (2, 1)))
    assert set(found) == {(1, 0), (2, 0), (2, 1)}
    assert all(c.rounds <= 6 and c.int8 and c.float_ms > c.int8_ms for c in found.values())
    if found[1, 0].rounds == found[2, 0].rounds:
        assert found[1, 0].int8_ms == found[2, 0].int8_ms  # one series of rounds of the shared model

    calls: list[int] = []
    timed = placement._timed
    monkeypatch.setattr(placement, "_timed", lambda session, feed, runs: calls.append(id(session)) or timed(
        session, feed, runs))
    compare_all(models, CHAIN_FEED, threads=1, pairs=((2, 0),))
    sessions = list(dict.fromkeys(calls))  # in order of the warm-up timings: models 0, 1, 2
    assert calls.count(sessions[1]) == 1 and calls.count(sessions[0]) == calls.count(sessions[2]) == 1 + EARLY_ROUNDS


def test_a_comparison_stops_when_separated_or_futile_and_runs_on_when_in_between():
    assert settled(T_EARLY, EARLY_ROUNDS, 6, 10) and not settled(T_EARLY - 1, EARLY_ROUNDS, 6, 10)
    assert settled(T_SEPARATED, 6, 6, 10) and settled(-T_SEPARATED, 6, 6, 10)
    assert settled(0.5, 6, 6, 10)  # futile: 0.5 * sqrt(10 / 6) cannot reach T_SEPARATED in four rounds
    assert not settled(2.5, 6, 6, 10) and not settled(0.5, 5, 6, 10)  # in between; before min_rounds
    assert settled(2.5, 10, 6, 10)  # max_rounds
    assert not settled(1.5, 6, 6, 16) and settled(1.5, 6, 6, 10)  # more rounds left: not futile yet


def test_choose_keeps_exactly_the_regions_measured_faster_in_int8():
    regions = [Region(i, (f"l{i}",), (f"l{i}",)) for i in range(4)]
    table = {0: Comparison(1.0, 0.5, 0.69, 9.0, 6, True), 1: Comparison(1.0, 2.0, -0.69, -9.0, 6, False),
             2: Comparison(1.0, 0.98, 0.02, 1.1, 24, False), 3: None}
    chosen = choose(regions, table)
    assert [r.index for r in chosen] == [0, 3]  # 2 is in doubt: float; 3 could not be measured: int8 kept
    assert predicted_ms(10.0, chosen, table) == pytest.approx(9.5)


def test_layers_alone_are_chosen_only_in_float_regions_and_never_touching():
    regions = [Region(0, ("a", "b", "c"), ("a", "b", "c")), Region(1, ("d", "e"), ("d", "e"))]
    alone = [Region(2, ("a",), ("a",), 0), Region(3, ("b",), ("b",), 0), Region(4, ("c",), ("c",), 0),
             Region(5, ("d",), ("d",), 1)]
    table = {0: Comparison(3.0, 4.0, -0.3, -9.0, 6, False), 1: Comparison(2.0, 1.0, 0.69, 9.0, 6, True),
             2: Comparison(1.0, 0.8, 0.2, 8.0, 6, True), 3: Comparison(1.0, 0.5, 0.69, 8.0, 6, True),
             4: Comparison(1.0, 0.9, 0.1, 5.0, 6, True), 5: Comparison(1.0, 0.5, 0.69, 9.0, 6, True)}
    touches = {2: {3}, 3: {2, 4}, 4: {3}, 5: set()}
    chosen = choose(regions, table, alone, touches)
    assert [r.index for r in chosen] == [1, 3]  # 5's region is int8 whole; 3 gains most and touches 2 and 4
    assert predicted_ms(10.0, chosen, table) == pytest.approx(8.5)
    assert [r.index for r in choose(regions, table, alone, {2: set(), 3: set(), 4: set(), 5: set()})] == [1, 3, 2, 4]


def test_the_key_is_the_structure_not_names_or_weights():
    model = _calibrated(_two_regions())
    proto = to_proto(model)
    renamed = to_proto(model)
    for node in renamed.graph.node:
        node.name += "_other"
    for tensor in renamed.graph.initializer:
        tensor.CopyFrom(onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(tensor) * 2 + 1, tensor.name))
    feed = {"x": np.zeros((2, 3, 16, 16), np.float32)}
    assert subgraph_key([proto], feed) == subgraph_key([renamed], feed)
    assert subgraph_key([proto], feed) != subgraph_key([proto], {"x": np.zeros((4, 3, 16, 16), np.float32)})
    conv = next(n for n in renamed.graph.node if n.op_type == "Conv")
    conv.attribute.append(onnx.helper.make_attribute("group", 1))
    assert subgraph_key([proto], feed) != subgraph_key([renamed], feed)


def test_cache_key_and_file_round_trip(tmp_path):
    key = machine_key(2)
    assert f"onnxruntime {ort.__version__}" in key and key.endswith("threads 2") and key != machine_key(1)
    path = tmp_path / "cache.json"
    cache = LatencyCache(path, key)
    cache.put_comparison("abc", Comparison(1.0, 0.5, 0.69, 9.0, 6, True))
    cache.save()
    assert LatencyCache(path, key).comparison("abc") == Comparison(1.0, 0.5, 0.69, 9.0, 6, True)
    assert LatencyCache(path, machine_key(1)).comparison("abc") is None  # another thread count: not reused
    path.write_text("{}")
    with pytest.raises(UserError, match="not a latency cache"):
        LatencyCache(path, key)


@pytest.fixture
def cnn(tmp_path):
    from .test_compile import TEXT

    rng = np.random.default_rng(0)
    proto = onnx.parser.parse_model(TEXT)
    shapes = {"w1": (32, 3, 3, 3), "b1": (32,), "w2": (64, 32, 3, 3), "b2": (64,), "w3": (10, 64), "b3": (10,)}
    proto.graph.initializer.extend(onnx.numpy_helper.from_array((rng.standard_normal(s) * 0.2).astype(np.float32), n)
                                   for n, s in shapes.items())
    path = tmp_path / "cnn.onnx"
    onnx.save(proto, str(path))
    calib = tmp_path / "calib"
    calib.mkdir()
    for i in range(2):
        np.savez(calib / f"batch_{i}.npz", image=rng.standard_normal((4, 3, 16, 16)).astype(np.float32))
    return path, calib


def mark_cached_decisions(cache, int8: bool, but: dict[str, bool] | None = None) -> None:
    """Rewrite every comparison in the latency cache file ``cache`` (regions, and placed models against float)
    as faster (or slower) in int8, those keyed in ``but`` as it says."""
    document = json.loads(cache.read_text())
    for entries in document["machines"].values():
        for key, entry in entries.items():
            if "int8" in entry:
                entry["int8"] = (but or {}).get(key, int8)
    cache.write_text(json.dumps(document))


def whole_model_key(cache, report: dict) -> str:
    """The key in the latency cache file ``cache`` of the comparison of the placed model against float, whole,
    that the compile which wrote ``report`` made (or read)."""
    entries = {k: e for m in json.loads(cache.read_text())["machines"].values() for k, e in m.items()}
    return next(k for k, e in entries.items() if "int8" in e and
                {f: e[f] for f in ("float_ms", "int8_ms", "t")} ==
                {f: report["whole_model"][f] for f in ("float_ms", "int8_ms", "t")})


def _digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_the_same_cache_gives_the_same_file_and_the_decisions_follow_it(cnn, tmp_path):
    path, calib = cnn
    cache = tmp_path / "latency.json"
    outputs = [tmp_path / f"out{i}.onnx" for i in range(3)]
    first = qcompiler.compile(path, outputs[0], calib=calib, threads=1, latency_cache=str(cache))
    report = first.plan.reports["latency_placement"]
    assert report["measured"] >= 1 and all(r["source"] in ("measured", "repeat") for r in report["regions"])
    second = qcompiler.compile(path, outputs[1], calib=calib, threads=1, latency_cache=str(cache))
    assert second.plan.reports["latency_placement"]["measured"] == 0  # every region from the cache
    assert _digest(outputs[0]) == _digest(outputs[1])
    # the decision is the cache's: mark every region faster in int8 (the compile then measures the all-int8
    # model against float, whole), and mark that faster too: the output is the all-int8 model
    # (where int8 was faster already, as on a CPU with VNNI, the first compile compared the whole model)
    mark_cached_decisions(cache, int8=True)
    third = qcompiler.compile(path, outputs[2], calib=calib, threads=1, latency_cache=str(cache))
    assert third.plan.reports["latency_placement"]["whole_model"] is not None
    mark_cached_decisions(cache, int8=True)
    placed = qcompiler.compile(path, outputs[2], calib=calib, threads=1, latency_cache=str(cache))
    report = placed.plan.reports["latency_placement"]
    assert report["all_int8"]
    # the predicted latency is the placed model's, measured whole beside float; the regions' sum is reported too
    assert (report["float_ms"], report["predicted_ms"]) == (report["whole_model"]["float_ms"],
                                                            report["whole_model"]["int8_ms"])
    gains = sum(r["float_ms"] - r["int8_ms"] for r in report["regions"] if r["choice"] == "int8")
    assert report["additive_ms"] == pytest.approx(report["float_ms"] - gains)
    everything = tmp_path / "size.onnx"
    qcompiler.compile(path, everything, calib=calib, objective="size")
    assert _structure(outputs[2]) == _structure(everything)  # (node names differ: placement names every node)


def _structure(path):

    proto = onnx.load(str(path))
    return [n.op_type for n in proto.graph.node], sorted(t.raw_data for t in proto.graph.initializer)


def test_the_all_int8_model_is_the_result_when_it_is_faster_whole_though_no_region_is_alone(cnn, tmp_path):
    """A model of small layers gains in int8 only as a whole (a region cut out alone pays its own Q/DQ
    transitions): the all-int8 model is measured against float whole, whatever the regions say."""
    path, calib = cnn
    cache, output = tmp_path / "latency.json", tmp_path / "out.onnx"
    qcompiler.compile(path, output, calib=calib, threads=1, latency_cache=str(cache))
    mark_cached_decisions(cache, int8=True)
    every_region = qcompiler.compile(path, output, calib=calib, threads=1, latency_cache=str(cache))
    assert every_region.plan.reports["latency_placement"]["result"] == "int8"
    whole = whole_model_key(cache, every_region.plan.reports["latency_placement"])  # all-int8 against float
    mark_cached_decisions(cache, int8=False, but={whole: True})
    model = qcompiler.compile(path, output, calib=calib, threads=1, latency_cache=str(cache))
    report = model.plan.reports["latency_placement"]
    assert report["result"] == "int8" and report["all_int8"]
    assert all(not row["int8"] and row["choice"] == "int8" for row in report["regions"] if row["parent"] is None)
    assert report["predicted_ms"] == report["whole_model"]["int8_ms"]
    assert any(n.op_type == "QuantizeLinear" for n in model.graph)


def test_regions_faster_alone_stay_float_when_the_placed_model_is_not_faster_whole(cnn, tmp_path):
    """Regions measured alone can each gain and together not: the chosen set is measured as a whole model
    against float, and kept only when that is faster too (the cache decides here, as in the test above)."""
    path, calib = cnn
    cache, output = tmp_path / "latency.json", tmp_path / "out.onnx"
    qcompiler.compile(path, output, calib=calib, threads=1, latency_cache=str(cache))
    mark_cached_decisions(cache, int8=True)
    every_region = qcompiler.compile(path, output, calib=calib, threads=1, latency_cache=str(cache))
    whole = whole_model_key(cache, every_region.plan.reports["latency_placement"])
    mark_cached_decisions(cache, int8=True, but={whole: False})
    model = qcompiler.compile(path, output, calib=calib, threads=1, latency_cache=str(cache))
    report = model.plan.reports["latency_placement"]
    assert report["whole_model"]["int8"] is False and report["int8_regions"] == 0
    assert report["predicted_ms"] == report["float_ms"] == report["whole_model"]["float_ms"]
    assert all(row["choice"] == "float" for row in report["regions"])
    assert not any(n.op_type == "QuantizeLinear" for n in model.graph)
