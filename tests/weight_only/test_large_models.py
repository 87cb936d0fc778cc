"""Quantization of a model past memory, on the small transformer: its activations observed stage by stage
(never one session over the whole model) and the weights weight-only methods rewrite spilled to a scratch
file. Each gives what the in-memory path gives, for weight-only and static int8 compiles."""

from __future__ import annotations

import gc
import os

import numpy as np
import pytest

import qcompiler
from qcompiler import ir
from qcompiler.calibration import collect, make_observer_factory
from qcompiler.calibration import staged
from qcompiler.ir import external_data
from qcompiler.ir.external_data import mapped_source, spill

STAGES = staged.stages


def float_activations(model):
    return [v.name for node in model.graph for v in node.outputs if v is not None and v.dtype == 1]


def test_stages_cut_at_the_weight_budget(tiny_transformer):
    model = ir.load(tiny_transformer[0])
    cut = staged.stages(model, stage_bytes=40_000)
    assert [n for stage in cut for n in stage] == list(model.graph)
    assert len(cut) >= 4
    for stage in cut:
        weights = {v for n in stage for v in n.inputs if v is not None and v.name in model.graph.initializers}
        assert len(stage) == 1 or sum(v.const.nbytes for v in weights) <= 40_000


def test_staged_collection_observes_what_one_session_does(tiny_transformer):
    path, calib, _ = tiny_transformer
    model = ir.load(path)
    names = float_activations(model) + ["ids"]
    factory = make_observer_factory("minmax")
    whole = collect(ir.to_proto(model), names, calib, factory)
    stages = staged.collect_in_stages(model, names, calib, factory, stage_bytes=40_000)
    assert list(stages) == names
    for name in float_activations(model):
        np.testing.assert_allclose(stages[name].compute_range(),
                                   whole[name].compute_range(), rtol=1e-5, err_msg=name)


def test_spilled_array_is_a_mapped_copy(monkeypatch):
    monkeypatch.setattr(external_data, "MAP_BYTES", 0)
    array = np.random.default_rng(0).standard_normal((300, 7)).astype(np.float32)
    spilled = spill(array)
    assert spilled is not array and mapped_source(spilled) is not None
    assert not spilled.flags.writeable
    np.testing.assert_array_equal(spilled, array)
    assert spill(np.arange(3)) is not None  # an int64 array too


def test_the_scratch_file_is_emptied_once_no_spilled_array_is_left(monkeypatch):
    monkeypatch.setattr(external_data, "MAP_BYTES", 0)
    rng = np.random.default_rng(0)
    first, second = (spill(rng.standard_normal((256, 16)).astype(np.float32)) for _ in range(2))
    view = second[::2]  # a view keeps its array, and the array's place in the file, alive
    scratch = external_data._spill_file.fileno()
    assert os.fstat(scratch).st_size >= first.nbytes + second.nbytes
    del first, second
    gc.collect()
    assert os.fstat(scratch).st_size > 0
    expected = view.copy()
    np.testing.assert_array_equal(view, expected)
    del view
    gc.collect()
    assert os.fstat(scratch).st_size == 0
    again = rng.standard_normal((64, 16)).astype(np.float32)
    np.testing.assert_array_equal(spill(again), again)


@pytest.mark.parametrize("method", ["gptq", "awq"])
def test_staged_and_spilled_compile_writes_the_same_model(tiny_transformer, tmp_path, monkeypatch, method):
    """The model saved with external data and every tensor mapped (so the rewritten weights are spilled),
    observed in stages of a few layers: the written model is the in-memory compile's, byte for byte."""
    path, calib, _ = tiny_transformer
    qcompiler.compile(path, tmp_path / "memory.onnx", pipeline="weight-only", weight_method=method, calib=calib,
                      block_size=32)
    external = tmp_path / "external" / "model.onnx"
    external.parent.mkdir()
    ir.save(ir.load(path), external, external_data=True)
    monkeypatch.setattr(external_data, "MAP_BYTES", 0)
    monkeypatch.setattr(staged, "STAGED_ABOVE", 0)
    monkeypatch.setattr(staged, "STAGE_BYTES", 40_000)
    spilled = []
    monkeypatch.setattr("qcompiler.weight_only.layers.spill", lambda a: spilled.append(a.shape) or spill(a))
    qcompiler.compile(external, tmp_path / "staged.onnx", pipeline="weight-only", weight_method=method,
                      calib=calib, block_size=32)
    assert spilled
    assert (tmp_path / "staged.onnx").read_bytes() == (tmp_path / "memory.onnx").read_bytes()


def test_a_tensor_comes_once_its_readers_have_run(tiny_transformer):
    """``observe_in_stages`` gives a tensor's observer only after the last stage that reads it: the caller may
    then rewrite those readers' weights without changing any activation observed later."""
    path, calib, _ = tiny_transformer
    model = ir.load(path)
    cut = staged.stages(model, stage_bytes=40_000)
    position = {node: i for i, stage in enumerate(cut) for node in stage}
    names = float_activations(model)
    values = {v.name: v for v in model.graph.values()}
    given = []
    for stage, completed in enumerate(staged.observe_in_stages(model, names, calib, make_observer_factory("minmax"),
                                                               stage_bytes=40_000), start=-1):
        for name in completed:
            readers = [position[n] for n in values[name].consumers()]
            assert max([position[values[name].producer()], *readers]) == stage, name
            given.append(name)
    assert sorted(given) == sorted(names)


@pytest.mark.parametrize("pipeline", ["int8", "int8-transformer", "w4a8"])  # + SmoothQuant, range search; AdaRound
def test_static_int8_calibrated_in_stages_writes_the_same_model(tiny_transformer, tmp_path, monkeypatch, pipeline):
    path, calib, _ = tiny_transformer
    options = {"pipeline": pipeline, "calib": calib, "objective": "size"}
    qcompiler.compile(path, tmp_path / "whole.onnx", **options)
    monkeypatch.setattr(staged, "STAGED_ABOVE", 0)
    monkeypatch.setattr(staged, "STAGE_BYTES", 40_000)
    observed = []
    monkeypatch.setattr(staged, "stages", lambda *a, **k: observed.append(1) or STAGES(*a, **k))
    qcompiler.compile(path, tmp_path / "staged.onnx", **options)
    assert observed
    assert (tmp_path / "staged.onnx").read_bytes() == (tmp_path / "whole.onnx").read_bytes()


def test_stages_nothing_later_needs_are_not_run(tiny_transformer):
    """Asked only for an early tensor, the stages after it compute nothing anyone reads (an LLM's logits):
    they are skipped, not run with no output (onnxruntime refuses that)."""
    path, calib, _ = tiny_transformer
    model = ir.load(path)
    factory = make_observer_factory("minmax")
    whole = collect(ir.to_proto(model), ["h"], calib, factory)
    stages = staged.collect_in_stages(model, ["h"], calib, factory, stage_bytes=40_000)
    np.testing.assert_allclose(stages["h"].compute_range(), whole["h"].compute_range(), rtol=1e-5)


def test_lowering_releases_every_weight_it_packs(tiny_transformer, tmp_path, monkeypatch):
    """MatMulNBits lowering reads each float weight once (spilled or mapped from the file) and releases its
    pages after packing: a 7 GB model's weights are not all resident at the end of the compile."""
    path, _, _ = tiny_transformer
    external = tmp_path / "external" / "model.onnx"
    external.parent.mkdir()
    ir.save(ir.load(path), external, external_data=True)
    monkeypatch.setattr(external_data, "MAP_BYTES", 0)
    released = []
    monkeypatch.setattr("qcompiler.weight_only.matmulnbits.release_pages",
                        lambda array: released.append(mapped_source(array) is not None))
    qcompiler.compile(external, tmp_path / "out.onnx", pipeline="weight-only", block_size=32)
    assert len(released) == 6 and all(released)  # the table (Gather + tied Gemm), wq, wk, w1, w2 and head
