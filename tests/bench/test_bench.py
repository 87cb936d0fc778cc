"""``qcompiler.bench.bench`` on real onnxruntime sessions: agreement against numpy, latency fields,
session memory, and every input problem as a UserError."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from qcompiler.bench import bench
from qcompiler.bench.agreement import Agreement
from qcompiler.errors import UserError

from .conftest import matmul_model

FAST = {"runs": 3, "min_seconds": 0.01}


def expected_agreement(feeds: list[np.ndarray], ref_w: np.ndarray, cand_w: np.ndarray) -> dict:
    """The agreement numbers computed directly with numpy, over all feeds at once."""
    ref = np.concatenate([np.maximum(x @ ref_w, 0) for x in feeds]).astype(np.float64)
    cand = np.concatenate([np.maximum(x @ cand_w, 0) for x in feeds]).astype(np.float64)
    cos = (ref * cand).sum(1) / (np.linalg.norm(ref, axis=1) * np.linalg.norm(cand, axis=1))
    return {"sqnr_db": 10 * np.log10((ref ** 2).sum() / ((cand - ref) ** 2).sum()), "cos_mean": cos.mean(),
            "cos_min": cos.min(), "top1": np.mean(ref.argmax(1) == cand.argmax(1)),
            "max_abs": np.abs(cand - ref).max()}


def test_agreement_over_all_feeds_matches_numpy(pair, feed_dir, weights):
    result = bench([str(p) for p in pair], calib=str(feed_dir), memory=False, **FAST)
    feeds = [np.load(f)["x"] for f in sorted(feed_dir.glob("*.npz"))]
    expected = expected_agreement(feeds, *weights)
    got = result["models"][1]["agreement"]["y"]
    assert result["models"][0]["agreement"] is None
    assert got["sqnr_db"] == pytest.approx(expected["sqnr_db"], abs=0.006)
    assert got["cos_mean"] == pytest.approx(expected["cos_mean"], abs=2e-6)
    assert got["cos_min"] == pytest.approx(expected["cos_min"], abs=2e-6)
    assert got["top1"] == pytest.approx(expected["top1"], abs=1e-4)
    assert got["max_abs"] == pytest.approx(expected["max_abs"], rel=1e-3)
    assert 0 < got["top1"] <= 1 and got["sqnr_db"] > 10


def test_identical_models_agree_exactly(tmp_path, weights, feed_dir):
    a = matmul_model(tmp_path / "a.onnx", weights[0])
    b = matmul_model(tmp_path / "b.onnx", weights[0])
    got = bench([str(a), str(b)], calib=str(feed_dir), memory=False, **FAST)["models"][1]["agreement"]["y"]
    assert got == {"sqnr_db": None, "cos_mean": 1.0, "cos_min": 1.0, "top1": 1.0, "max_abs": 0.0}


def test_agreement_accumulates_like_one_big_batch():
    rng = np.random.default_rng(0)
    ref = rng.standard_normal((6, 5))
    out = ref + 0.1 * rng.standard_normal((6, 5))
    whole, parts = Agreement(), Agreement()
    whole.update(ref, out)
    parts.update(ref[:2], out[:2])
    parts.update(ref[2:], out[2:])
    assert parts.result() == pytest.approx(whole.result())


def test_latency_throughput_and_batch(pair, feed_dir):
    result = bench([str(p) for p in pair], inputs=str(feed_dir / "batch_0.npz"), batch=8, memory=False, **FAST)
    assert result["batch"] == 8 and result["threads"] == 2
    for entry in result["models"]:
        latency = entry["latency_ms"]
        assert latency["runs"] >= 3
        assert 0 < latency["min"] <= latency["median"] <= latency["p90"]
        # from the unrounded median: allow for the rounding of the stored one (4 decimals of a ms)
        assert entry["throughput_per_s"] == pytest.approx(8000 / latency["median"],
                                                          rel=1e-3 + 5e-5 / latency["median"])
        assert entry["size_mb"] == round(Path(entry["model"]).stat().st_size / 2**20, 3)
    assert result["models"][0]["speedup"] == 1.0
    second = result["models"][1]
    assert second["speedup"] == pytest.approx(result["models"][0]["latency_ms"]["median"]
                                              / second["latency_ms"]["median"],
                                              rel=2e-3 + 1e-4 / second["latency_ms"]["median"])


def test_random_inputs_fill_the_batch_axis(pair):
    result = bench([str(pair[0])], batch=3, memory=False, **FAST)
    assert result["batch"] == 3 and result["inputs"] == "random (seed 0)"


def test_session_memory_grows_with_the_weights(tmp_path, feed_dir):
    """A session holding a 64 MiB weight peaks at least 64 MiB above one holding a tiny weight."""
    rng = np.random.default_rng(0)
    small = matmul_model(tmp_path / "small.onnx", rng.standard_normal((16, 16)))
    large = matmul_model(tmp_path / "large.onnx", rng.standard_normal((16, 2**20)))
    small_mb, large_mb = (bench([str(model)], inputs=str(feed_dir / "batch_0.npz"), **FAST)["models"][0]["memory_mb"]
                          for model in (small, large))
    assert large_mb["session"] - small_mb["session"] >= 64
    assert large_mb["peak"] >= large_mb["session"] > 64


@pytest.mark.parametrize("problem, message", [
    ("missing model", "no such model file"),
    ("not onnx", "cannot read as an ONNX model"),
    ("wrong input name", "unknown input"),
    ("wrong shape", "has shape (4, 7)"),
    ("different inputs", "differ from those of"),
    ("different sizes", "input 'x' is float32"),
    ("fixed batch", "has a fixed batch of 2"),
    ("dynamic without data", "dynamic dimension on axis 1"),
    ("not an npz", "expects an existing .npz file"),
])
def test_input_problems_are_user_errors(tmp_path, pair, weights, feed_dir, problem, message):
    models, options = [str(p) for p in pair], {"inputs": str(feed_dir / "batch_0.npz")}
    if problem == "missing model":
        models[1] = str(tmp_path / "nope.onnx")
    elif problem == "not onnx":
        (tmp_path / "junk.onnx").write_bytes(b"not a protobuf at all")
        models[1] = str(tmp_path / "junk.onnx")
    elif problem == "wrong input name":
        np.savez(tmp_path / "bad.npz", input=np.zeros((4, 16), np.float32))
        options["inputs"] = str(tmp_path / "bad.npz")
    elif problem == "wrong shape":
        np.savez(tmp_path / "bad.npz", x=np.zeros((4, 7), np.float32))
        options["inputs"] = str(tmp_path / "bad.npz")
    elif problem == "different inputs":
        models[1] = str(matmul_model(tmp_path / "other.onnx", weights[1], input_name="pixels"))
    elif problem == "different sizes":
        models[1] = str(matmul_model(tmp_path / "other.onnx", np.ones((8, 10))))
    elif problem == "fixed batch":
        models = [str(matmul_model(tmp_path / "fixed.onnx", weights[0], batch=2))]
        options = {"batch": 4}
    elif problem == "dynamic without data":
        models = [str(matmul_model(tmp_path / "dyn.onnx", weights[0]))]
        options = {}
        import onnx

        proto = onnx.load(models[0])
        proto.graph.input[0].type.tensor_type.shape.dim[1].dim_param = "F"
        onnx.save(proto, models[0])
    elif problem == "not an npz":
        options["inputs"] = str(feed_dir)
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")):
        bench(models, memory=False, **options, **FAST)


def test_measuring_sessions_stop_spinning_when_a_run_returns(tmp_path, weights):
    """Latencies are taken from sessions measured in alternation in one process: a session whose workers
    spin on after its run would slow the next one down (see ``qcompiler.bench.session.open_session``)."""
    from qcompiler.bench.session import open_session

    session = open_session(str(matmul_model(tmp_path / "m.onnx", weights[0])), 2)
    options = session.get_session_options()
    assert options.get_session_config_entry("session.force_spinning_stop") == "1"
    assert options.intra_op_num_threads == 2 and options.inter_op_num_threads == 1
