"""collect(): ranges gathered through onnxruntime match a run that exposes every tensor, and peak
memory does not grow with the number of samples."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import onnx
import onnxruntime as ort

from qcompiler import ir
from qcompiler.calibration import InputSpec, MinMaxObserver, collect, open_calibration

TEXT = """
<ir_version: 8, opset_import: ["" : 13]>
g (float[N,4,8,8] x) => (float[N,16] y) {
  c = Conv <pads = [1,1,1,1]> (x, w)
  r = Relu(c)
  f = Flatten(r)
  y = MatMul(f, m)
}
"""


def model_proto() -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    proto = onnx.parser.parse_model(TEXT)
    proto.graph.initializer.extend([
        onnx.numpy_helper.from_array(rng.standard_normal((8, 4, 3, 3)).astype(np.float32), "w"),
        onnx.numpy_helper.from_array(rng.standard_normal((512, 16)).astype(np.float32), "m")])
    return proto


def test_collected_minmax_matches_full_run():
    proto = model_proto()
    rng = np.random.default_rng(1)
    feeds = [{"x": rng.standard_normal((2, 4, 8, 8)).astype(np.float32)} for _ in range(5)]
    data = open_calibration(feeds, [InputSpec("x", np.dtype(np.float32), ("N", 4, 8, 8))])
    observers = collect(proto, ["c", "r", "y"], data, lambda name: MinMaxObserver())
    exposed = onnx.ModelProto()
    exposed.CopyFrom(proto)
    exposed.graph.output.extend(onnx.helper.make_empty_tensor_value_info(n) for n in ("c", "r"))
    session = ort.InferenceSession(exposed.SerializeToString(), providers=["CPUExecutionProvider"])
    outputs = [session.run(["c", "r", "y"], f) for f in feeds]
    for position, name in enumerate(("c", "r", "y")):
        values = np.concatenate([o[position].ravel() for o in outputs])
        assert observers[name].compute_range() == (float(values.min()), float(values.max()))


MEASURE = textwrap.dedent("""
    import json, sys, numpy as np, onnx
    from qcompiler.calibration import InputSpec, collect, open_calibration, make_observer_factory
    proto = onnx.load(sys.argv[1]); samples = int(sys.argv[2])
    rng = np.random.default_rng(0)
    feeds = lambda: ({"x": rng.standard_normal((1, 4, 64, 64)).astype(np.float32)} for _ in range(samples))
    data = open_calibration(feeds, [InputSpec("x", np.dtype(np.float32), ("N", 4, 64, 64))])
    collect(proto, ["c", "r"], data, make_observer_factory(sys.argv[3]))
    hwm = [l for l in open("/proc/self/status") if l.startswith("VmHWM")][0].split()[1]
    print(json.dumps({"peak_kb": int(hwm)}))
""")


def peak_kb(path, samples: int, method: str) -> int:
    done = subprocess.run([sys.executable, "-c", MEASURE, str(path), str(samples), method],
                          capture_output=True, text=True, timeout=300, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])["peak_kb"]


def test_peak_memory_does_not_grow_with_samples(tmp_path):
    proto = onnx.parser.parse_model("""
        <ir_version: 8, opset_import: ["" : 13]>
        g (float[N,4,64,64] x) => (float[N,8,64,64] y) {
          c = Conv <pads = [1,1,1,1]> (x, w)
          r = Relu(c)
          y = Sigmoid(r)
        }""")
    proto.graph.initializer.append(onnx.numpy_helper.from_array(np.ones((8, 4, 3, 3), np.float32), "w"))
    path = tmp_path / "m.onnx"
    onnx.save(proto, str(path))
    for method in ("minmax", "percentile", "entropy"):
        small, large = peak_kb(path, 16, method), peak_kb(path, 256, method)
        assert large <= 1.2 * small, (method, small, large)
