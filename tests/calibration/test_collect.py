"""collect(): ranges gathered through onnxruntime match a run that exposes every tensor, whatever the
model form, output budget or model size, and peak memory does not grow with the number of samples."""

from __future__ import annotations

import gc
import importlib
import json
import subprocess
import sys
import textwrap
import weakref
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from qcompiler.calibration import (CalibrationDataError, InputSpec, MinMaxObserver, collect, input_specs,
                                   make_observer_factory, open_calibration)

collect_module = importlib.import_module("qcompiler.calibration.collect")

TEXT = """
<ir_version: 8, opset_import: ["" : 13]>
g (float[N,4,8,8] x) => (float[N,16] y) {
  c = Conv <pads = [1,1,1,1]> (x, w)
  r = Relu(c)
  f = Flatten(r)
  y = MatMul(f, m)
  s = Shape(r)
}
"""
NAMES = ["x", "w", "c", "r", "f", "y", "s"]
REALMODELS = Path("/root/realmodels")


def model_proto() -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    proto = onnx.parser.parse_model(TEXT)
    proto.graph.initializer.extend([
        onnx.numpy_helper.from_array(rng.standard_normal((8, 4, 3, 3)).astype(np.float32), "w"),
        onnx.numpy_helper.from_array(rng.standard_normal((512, 16)).astype(np.float32), "m")])
    return proto


def feeds(count: int = 5, seed: int = 1) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [{"x": rng.standard_normal((2, 4, 8, 8)).astype(np.float32)} for _ in range(count)]


def reference_values(proto: onnx.ModelProto, data: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Every tensor of every feed, from one run that exposes them all."""
    exposed = onnx.ModelProto()
    exposed.CopyFrom(proto)
    exposed.graph.output.extend(onnx.helper.make_empty_tensor_value_info(n) for n in ("c", "r", "f"))
    options = ort.SessionOptions()
    session = ort.InferenceSession(exposed.SerializeToString(), options, providers=["CPUExecutionProvider"])
    outputs = [session.run(["c", "r", "f", "y"], feed) for feed in data]
    values = {name: np.concatenate([o[i].ravel() for o in outputs]) for i, name in enumerate(["c", "r", "f", "y"])}
    values["x"] = np.concatenate([feed["x"].ravel() for feed in data])
    values["w"] = onnx.numpy_helper.to_array(proto.graph.initializer[0]).ravel()
    return values


def minmax(observers) -> dict[str, tuple[float, float]]:
    return {name: observer.compute_range() for name, observer in observers.items()}


def test_collected_minmax_matches_a_run_exposing_every_tensor(tmp_path):
    proto = model_proto()
    data = feeds()
    expected = {name: (float(v.min()), float(v.max())) for name, v in reference_values(proto, data).items()}
    path = tmp_path / "model.onnx"
    onnx.save(proto, str(path))
    calibration = open_calibration(data, input_specs(proto))
    for form in (proto, proto.SerializeToString(), path, str(path)):
        observers = collect(form, NAMES, calibration, lambda name: MinMaxObserver())
        assert list(observers) == NAMES
        ranges = minmax(observers)
        assert ranges.pop("s") == (0.0, 0.0) and observers["s"].count == 0  # int64: not observed
        assert ranges == expected
    assert len(proto.graph.output) == 1  # the caller's model is not modified


def test_histogram_observers_see_exactly_the_tensor_values():
    proto = model_proto()
    data = feeds()
    values = reference_values(proto, data)
    for method in ("percentile", "entropy", "mse"):
        make = make_observer_factory(method)
        observers = collect(proto, ["c", "r", "y"], data, make)  # a plain list: checked against the model inputs
        for name in ("c", "r", "y"):
            direct = make(name)
            direct.update(values[name])
            np.testing.assert_array_equal(observers[name].counts, direct.counts)
            assert observers[name].compute_range() == direct.compute_range()


def test_output_budget_splits_passes_with_the_same_result():
    proto = model_proto()
    data = open_calibration(feeds(), input_specs(proto))
    whole = minmax(collect(proto, NAMES, data, lambda name: MinMaxObserver(), max_outputs_bytes=None))
    calls = []
    split = collect(proto, NAMES, data, lambda name: MinMaxObserver(), max_outputs_bytes=5000,
                    progress=lambda done, total: calls.append((done, total)))
    assert minmax(split) == whole
    # c, r, f are 4 KiB each per feed, y 128 B, s 32 B: three passes under 5000 bytes
    assert calls == [(i, 15) for i in range(1, 16)]
    plan = collect_module._plan(["c", "r", "f", "y"], {"c": 4096.0, "r": 4096.0, "f": None, "y": 128.0},
                                data.items().__next__()[1], 9000)
    assert plan == [["c", "r"], ["f", "y"]]  # unknown sizes count as the largest known, groups balanced


def test_large_model_goes_through_external_data(monkeypatch):
    proto = model_proto()
    data = feeds()
    expected = minmax(collect(proto, NAMES, data, lambda name: MinMaxObserver()))
    monkeypatch.setattr(collect_module, "_SIZE_LIMIT", 0)  # every model counts as over 2 GB
    written = []
    original = collect_module._ModelWriter._external_initializers
    monkeypatch.setattr(collect_module._ModelWriter, "_external_initializers",
                        lambda self: written.append(self.directory) or original(self))
    assert minmax(collect(proto, NAMES, data, lambda name: MinMaxObserver(), max_outputs_bytes=5000)) == expected
    assert written and not written[0].exists()  # the temporary directory is gone
    assert all(t.data_location != onnx.TensorProto.EXTERNAL for t in proto.graph.initializer)


def test_types_come_from_value_info_or_shape_inference():
    proto = model_proto()
    proto.graph.value_info.append(onnx.helper.make_tensor_value_info("c", onnx.TensorProto.FLOAT, ["N", 8, 8, 8]))
    infos, sizes = collect_module._inspect(proto, ["c", "r", "s"], feeds(1)[0])
    assert infos["c"] is proto.graph.value_info[0] or infos["c"] == proto.graph.value_info[0]
    assert infos["r"].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert not infos["r"].type.tensor_type.HasField("shape")  # the first feed's shape would be wrong later
    assert infos["s"].type.tensor_type.elem_type == onnx.TensorProto.INT64
    assert sizes == {"c": 2 * 8 * 8 * 8 * 4, "r": 2 * 8 * 8 * 8 * 4, "s": 4 * 8}


def test_errors_name_the_tensor_or_the_feed():
    proto = model_proto()
    with pytest.raises(ValueError, match=r"no tensor named 'nope'"):
        collect(proto, ["c", "nope"], feeds(), lambda name: MinMaxObserver())
    loose = open_calibration(feeds(2) + [{"x": np.zeros((2, 4, 8, 9), np.float32)}],
                             [InputSpec("x", np.dtype(np.float32), None)])  # accepts any shape
    with pytest.raises(CalibrationDataError, match=r"^feed #2: onnxruntime failed on this feed: "):
        collect(proto, ["y"], loose, lambda name: MinMaxObserver())
    with pytest.raises(CalibrationDataError, match=r"input 'x' has dtype float64"):
        collect(proto, ["y"], [{"x": np.zeros((2, 4, 8, 8))}], lambda name: MinMaxObserver())


def test_one_feed_in_memory_at_a_time():
    """When the source makes feed i + 1, nothing holds feed i any more (in any pass)."""
    proto = model_proto()
    alive_when_reading = []

    def source():
        previous = None
        rng = np.random.default_rng(1)
        for _ in range(6):
            feed = {"x": rng.standard_normal((2, 4, 8, 8)).astype(np.float32)}
            if previous is not None:
                gc.collect()
                alive_when_reading.append(previous() is not None)
            previous = weakref.ref(feed["x"])
            yield feed

    data = open_calibration(source, input_specs(proto))
    collect(proto, ["x", "c", "r", "y"], data, make_observer_factory("mse"), max_outputs_bytes=5000)
    assert len(alive_when_reading) == 5 * 2 and not any(alive_when_reading)  # two passes


@pytest.mark.skipif(not (REALMODELS / "ocr_cls_ppocr_mobile_v2.onnx").exists(), reason="realmodels not present")
def test_real_paddle_model_with_dynamic_dims():
    proto = onnx.load(str(REALMODELS / "ocr_cls_ppocr_mobile_v2.onnx"))
    names = [node.output[0] for node in proto.graph.node if node.op_type in ("Conv", "Relu", "HardSwish")][:40]
    data = open_calibration(REALMODELS / "data/calib_npz/ocr_cls_ppocr_mobile_v2", input_specs(proto))
    observers = collect(proto, names, data, make_observer_factory("entropy"), max_outputs_bytes=16 << 20)
    for observer in observers.values():
        lo, hi = observer.compute_range()
        assert observer.count > 0 and observer.lo <= lo <= hi <= observer.hi


MEASURE = textwrap.dedent("""
    import json, resource, sys, numpy as np, onnx
    from qcompiler.calibration import InputSpec, collect, open_calibration, make_observer_factory
    proto, samples, method = onnx.load(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    def feeds():
        rng = np.random.default_rng(0)
        return ({"x": rng.standard_normal((1, 4, 128, 128)).astype(np.float32)} for _ in range(samples))
    data = open_calibration(feeds, [InputSpec("x", np.dtype(np.float32), ("N", 4, 128, 128))])
    observers = collect(proto, ["x", "c", "r", "y"], data, make_observer_factory(method))
    assert observers["y"].count == samples * 8 * 128 * 128
    print(json.dumps({"peak_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))
""")


def peak_kb(path: Path, samples: int, method: str) -> int:
    done = subprocess.run([sys.executable, "-c", MEASURE, str(path), str(samples), method],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])["peak_kb"]


def test_peak_memory_does_not_grow_with_samples(tmp_path):
    # 16 vs 256 samples of 4x128x128 inputs: keeping the three 512 KiB activations of every sample would
    # add 390 MB, against a baseline of about 200 MB
    proto = onnx.parser.parse_model("""
        <ir_version: 8, opset_import: ["" : 13]>
        g (float[N,4,128,128] x) => (float[N,8,128,128] y) {
          c = Conv <pads = [1,1,1,1]> (x, w)
          r = Relu(c)
          y = Sigmoid(r)
        }""")
    proto.graph.initializer.append(onnx.numpy_helper.from_array(
        np.random.default_rng(0).standard_normal((8, 4, 3, 3)).astype(np.float32), "w"))
    path = tmp_path / "m.onnx"
    onnx.save(proto, str(path))
    for method in ("minmax", "mse"):
        small, large = peak_kb(path, 16, method), peak_kb(path, 256, method)
        assert large <= 1.2 * small, (method, small, large)
