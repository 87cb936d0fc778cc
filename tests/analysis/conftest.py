"""A small CNN with a BatchNormalization (so canonicalization changes its float numerics) and an
input whose channel 0 carries rare large spikes (so the first convolution's input quantization is
coarse and that layer is the sensitive one), with seeded calibration feeds."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from qcompiler import ir


def cnn(seed: int = 0) -> ir.Model:
    rng = np.random.default_rng(seed)
    proto = onnx.parser.parse_model("""
    <ir_version: 8, opset_import: ["" : 13]>
    g (float[N,3,8,8] x) => (float[N,10] y) {
      c1 = Conv<pads=[1,1,1,1]>(x, w1, b1)
      n1 = BatchNormalization(c1, gamma, beta, mean, var)
      r1 = Relu(n1)
      c2 = Conv<pads=[1,1,1,1]>(r1, w2, b2)
      r2 = Relu(c2)
      p = GlobalAveragePool(r2)
      f = Flatten(p)
      y = Gemm<transB=1>(f, w3, b3)
    }""")
    arrays = {"w1": rng.standard_normal((32, 3, 3, 3)) * 0.3, "b1": rng.standard_normal(32) * 0.1,
              "gamma": rng.uniform(0.5, 1.5, 32), "beta": rng.standard_normal(32) * 0.1,
              "mean": rng.standard_normal(32) * 0.1, "var": rng.uniform(0.5, 1.5, 32),
              "w2": rng.standard_normal((64, 32, 3, 3)) * 0.1, "b2": rng.standard_normal(64) * 0.1,
              "w3": rng.standard_normal((10, 64)) * 0.3, "b3": rng.standard_normal(10) * 0.1}
    proto.graph.initializer.extend(onnx.numpy_helper.from_array(a.astype(np.float32), n) for n, a in arrays.items())
    onnx.checker.check_model(proto)
    return ir.from_proto(proto)


def cnn_feeds(count: int = 6, batch: int = 4, seed: int = 1) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    feeds = []
    for _ in range(count):
        x = rng.standard_normal((batch, 3, 8, 8)).astype(np.float32)
        x[0, 0, 0, 0] = 400.0  # a spike: min/max ranges of the first layer's input waste their levels on it
        feeds.append({"x": x})
    return feeds


@pytest.fixture
def cnn_path(tmp_path: Path) -> Path:
    path = tmp_path / "cnn.onnx"
    ir.save(cnn(), path)
    return path


@pytest.fixture
def calib_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "calib"
    directory.mkdir()
    for i, feed in enumerate(cnn_feeds()):
        np.savez(directory / f"batch_{i:03d}.npz", **feed)
    return directory
