"""Range search: MSE weight clipping against brute force, and the held-out choice of activation ranges."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from qcompiler import PassManager, ir
from qcompiler.calibration import MSEObserver, PercentileObserver, StreamingHistogram
from qcompiler.errors import UserError
from qcompiler.ir import QuantSpec, fake_quantize
from qcompiler.ir.testing import run_onnxruntime
from qcompiler.passes import AssignPrecision, Calibrate, CalibrateSearch, InferShapes, InsertQDQ, SearchWeightRanges
from qcompiler.options import CompileOptions
from qcompiler.passes.range_search import candidate_range, clipped_weight_spec
from qcompiler.pipelines import load_pipeline
from qcompiler.targets import TARGETS

RNG = np.random.default_rng(0)


def mlp(seed: int = 0) -> ir.Model:
    rng = np.random.default_rng(seed)
    proto = onnx.parser.parse_model("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[8,2048] x) => (float[8,4] y) {
      h = MatMul(x, w1)
      r = Relu(h)
      y = MatMul(r, w2)
    }""")
    w1 = rng.laplace(size=(2048, 12)).astype(np.float32) * 0.02  # long rows: MSE clipping pays
    proto.graph.initializer.extend([onnx.numpy_helper.from_array(w1, "w1"), onnx.numpy_helper.from_array(
        rng.standard_normal((12, 4)).astype(np.float32), "w2")])
    model = ir.from_proto(proto)
    PassManager([InferShapes()])(model)
    return model


def feeds(count: int, seed: int = 1, outliers: bool = True) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    data = []
    for i in range(count):
        x = rng.standard_normal((8, 2048)).astype(np.float32)
        if outliers and i % 3 == 0:
            x[0, 0] = 40.0  # rare spikes: min/max ranges waste their levels on them
        data.append({"x": x})
    return data


def test_fake_quantize_is_quantize_then_dequantize():
    spec = QuantSpec.from_range(np.array([-1.0, -2.0]), np.array([1.0, 2.0]), onnx.TensorProto.INT8,
                                symmetric=True, axis=1)
    x = np.array([[0.5, 3.0], [-0.004, -1.0]], np.float32)
    expected = np.clip(np.rint(x / spec.scale), -127, 127) * spec.scale
    np.testing.assert_allclose(fake_quantize(x, spec), expected, rtol=1e-6)


@pytest.mark.parametrize("target", ["x86-vnni", "x86-avx2"])
def test_weight_clipping_matches_brute_force_per_channel(target):
    target = TARGETS[target]
    weight = RNG.laplace(size=(4096, 6)).astype(np.float32)  # long input rows: clipping the tails pays
    weight[:, 0] *= 10.0
    spec = QuantSpec.from_range(weight.min(0), weight.max(0), target.weight_dtype, symmetric=True, axis=1,
                                reduce_range=target.weight_reduce_range)
    ratios = tuple(np.round(np.linspace(1.0, 0.3, 71), 3))
    chosen, ratio, clipped = clipped_weight_spec(weight, spec, target.weight_reduce_range, ratios)
    peak = np.abs(weight).max(axis=0)
    qmax = 63 if target.weight_reduce_range else 127
    for c in range(weight.shape[1]):
        error = {r: np.square(np.clip(np.rint(weight[:, c] / (r * peak[c] / qmax)), -qmax, qmax) * (r * peak[c] / qmax)
                              - weight[:, c]).sum() for r in ratios}
        assert error[ratio[c]] == pytest.approx(min(error.values()), rel=1e-5)  # float32 vs float64 ties
        assert chosen.scale[c] == pytest.approx(ratio[c] * peak[c] / qmax, rel=1e-6)
    assert (ratio < 1.0).sum() >= 4 and (np.abs(clipped) <= ratio * peak + 1e-6).all()


def test_search_weight_ranges_pass_lowers_weight_error_and_needs_a_target():
    with pytest.raises(UserError, match="run assign-dynamic or assign-precision( or [a-z-]+)* before it"):
        SearchWeightRanges()(mlp())
    model = mlp()
    PassManager([AssignPrecision(target="x86-vnni")])(model)
    before = {n: (v.quant, v.const.copy()) for n, v in model.graph.initializers.items()}
    result = PassManager([SearchWeightRanges()])(model)
    assert result.records[-1].modified
    for name in ("w1", "w2"):
        (old, w), new = before[name], model.graph.initializers[name].quant
        stored = model.graph.initializers[name].const
        assert new.axis == old.axis == 1
        old_error = np.square(fake_quantize(w, old) - w).sum(axis=0)
        assert (np.square(fake_quantize(stored, new) - w).sum(axis=0) <= old_error * (1 + 1e-6)).all()
    assert model.plan.reports["search_weight_ranges"]["channels"] == 12 + 4
    assert model.plan.reports["search_weight_ranges"]["clipped_channels"] >= 6


@pytest.mark.parametrize("candidate, observer", [
    ("minmax", StreamingHistogram()), ("mse", MSEObserver()), ("percentile:99.9", PercentileObserver(99.9))])
def test_candidate_range_reads_the_same_histogram_as_the_observer(candidate, observer):
    data = np.concatenate([RNG.standard_normal(20000), [35.0, -8.0]]).astype(np.float32)
    histogram = StreamingHistogram()
    histogram.update(data)
    observer.update(data)
    assert candidate_range(histogram, candidate) == observer.compute_range()


@pytest.mark.parametrize("method, candidate", [("minmax", "minmax"), ("mse", "mse"),
                                               ("percentile", "percentile:99.9")])
def test_single_candidate_search_equals_calibrate_on_all_feeds(method, candidate):
    data = feeds(8)
    searched, calibrated = mlp(), mlp()
    PassManager([AssignPrecision(target="x86-vnni"), CalibrateSearch(data=data, candidates=[candidate])])(searched)
    PassManager([AssignPrecision(target="x86-vnni"), Calibrate(data=data, method=method, percentile=99.9)])(calibrated)
    specs = {v.name: v.quant for v in calibrated.graph.values() if v.quant is not None}
    assert specs and {v.name: v.quant for v in searched.graph.values() if v.quant is not None} == specs
    assert not searched.plan.pending


def test_search_picks_the_candidate_with_the_smallest_held_out_error():
    model = mlp()
    PassManager([AssignPrecision(target="x86-vnni"),
                 CalibrateSearch(data=feeds(12), candidates=["minmax", "percentile:99", "mse"])])(model)
    report = model.plan.reports["calibrate_search"]
    assert report["best"] == min(report["errors"], key=report["errors"].get)
    assert report["errors"]["minmax"] > report["errors"][report["best"]]  # the spikes cost min/max its levels


@pytest.mark.parametrize("options, message", [({"holdout": 1}, "holdout"), ({"candidates": ["percentile:20"]}, "unknown"),
                                              ({"candidates": ["kl"]}, "unknown"), ({"data": None}, "no calibration")])
def test_bad_options_are_user_errors(options, message):
    with pytest.raises(UserError, match=message):
        CalibrateSearch(**{"data": feeds(8), **options}).requires(mlp())


def test_too_few_feeds_to_hold_any_out():
    model = mlp()
    PassManager([AssignPrecision(target="x86-vnni")])(model)
    with pytest.raises(UserError, match="leave none held out"):
        CalibrateSearch(data=feeds(3), holdout=4)(model)


def test_passes_run_from_a_toml_pipeline(tmp_path):
    path = tmp_path / "pipeline.toml"
    path.write_text("""
[pipeline]
[[pipeline.passes]]
name = "infer-shapes"
[[pipeline.passes]]
name = "smoothquant"
data = "@calibration"
target = "x86-vnni"
alphas = [0.25, 0.5, 0.75]
explicit = true
[[pipeline.passes]]
name = "assign-precision"
target = "x86-vnni"
float_linear_outputs = true
[[pipeline.passes]]
name = "search-weight-ranges"
[[pipeline.passes]]
name = "calibrate-search"
data = "@calibration"
candidates = ["mse", "percentile:99.99"]
holdout = 3
[[pipeline.passes]]
name = "insert-qdq"
""")
    pipeline = load_pipeline(path, CompileOptions(calib=feeds(9)))
    assert [p.name for p in pipeline.passes][1:] == ["smoothquant", "assign-precision", "search-weight-ranges",
                                                     "calibrate-search", "insert-qdq"]
    model = mlp()
    PassManager(pipeline.passes)(model)
    ir.verify(model)
    assert model.plan.reports["calibrate_search"]["best"] in ("mse", "percentile:99.99")
    assert sum(n.op_type == "QuantizeLinear" for n in model.graph) >= 4


def test_search_ignores_graph_outputs_that_are_not_float():
    """A model that also returns an int64 Shape (as torch and optimum exports often do): the held-out error
    is measured on the float outputs, and the extra output is unchanged (issue 17's MiniLM case)."""
    model = mlp()
    x = model.graph.inputs[0]
    shape = ir.Value("x_shape", onnx.TensorProto.INT64, (2,))
    model.graph.append(ir.Node("Shape", [x], [shape], name="shape_of_x"))
    model.graph.outputs.append(shape)
    PassManager([AssignPrecision(target="x86-vnni"), CalibrateSearch(data=feeds(8), candidates=["minmax", "mse"]),
                 InsertQDQ()])(model)
    assert model.plan.reports["calibrate_search"]["best"] in ("minmax", "mse")
    outputs = run_onnxruntime(model, feeds(1)[0])
    assert outputs[1].tolist() == [8, 2048]
