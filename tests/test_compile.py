"""qcompiler.compile and `qcompiler compile` end to end on a small CNN with real onnxruntime runs."""

from __future__ import annotations

import hashlib

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import qcompiler
from qcompiler import ir
from qcompiler.cli import main

TEXT = """
<ir_version: 8, opset_import: ["" : 13]>
cnn (float[N,3,16,16] image) => (float[N,10] logits) {
  c1 = Conv <pads = [1,1,1,1]> (image, w1, b1)
  r1 = Relu(c1)
  p1 = MaxPool <kernel_shape = [2,2], strides = [2,2]> (r1)
  c2 = Conv <pads = [1,1,1,1]> (p1, w2, b2)
  r2 = Relu(c2)
  g = GlobalAveragePool(r2)
  f = Flatten(g)
  logits = Gemm <transB = 1> (f, w3, b3)
}
"""


@pytest.fixture
def model_path(tmp_path):
    rng = np.random.default_rng(0)
    proto = onnx.parser.parse_model(TEXT)
    shapes = {"w1": (32, 3, 3, 3), "b1": (32,), "w2": (64, 32, 3, 3), "b2": (64,), "w3": (10, 64), "b3": (10,)}
    proto.graph.initializer.extend(
        onnx.numpy_helper.from_array((rng.standard_normal(s) * 0.2).astype(np.float32), n) for n, s in shapes.items())
    proto.metadata_props.add(key="labels", value="0,1,2,3,4,5,6,7,8,9")
    path = tmp_path / "cnn.onnx"
    onnx.save(proto, str(path))
    return path


@pytest.fixture
def calib_dir(tmp_path):
    rng = np.random.default_rng(1)
    directory = tmp_path / "calib"
    directory.mkdir()
    for i in range(4):
        np.savez(directory / f"batch_{i}.npz", image=rng.standard_normal((4, 3, 16, 16)).astype(np.float32))
    return directory


def run(path, feeds):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feeds)[0]


@pytest.mark.parametrize("target", ["x86-vnni", "x86-avx2"])
def test_compile_quantizes_and_stays_accurate(model_path, calib_dir, tmp_path, run_deployed, target):
    """Accurate on the CPU it was compiled for, whichever CPU runs the test: compiled for x86-vnni
    (8-bit weights) this CNN measures 41 dB there but 22 dB where onnxruntime sums u8 x s8 pairs into
    a saturating int16 (AVX2 without VNNI); the x86-avx2 target's 7-bit weights give 35 dB there."""
    out = tmp_path / "cnn.int8.onnx"
    model = qcompiler.compile(model_path, out, calib=calib_dir, objective="size", target=target)
    onnx.checker.check_model(str(out), full_check=True)
    proto = onnx.load(str(out))
    assert {p.key for p in proto.metadata_props} == {"labels"}
    assert [i.name for i in proto.graph.input] == ["image"] and [o.name for o in proto.graph.output] == ["logits"]
    int8_weights = [t for t in proto.graph.initializer if t.data_type == onnx.TensorProto.INT8 and len(t.dims) > 1]
    assert len(int8_weights) == 3
    assert not any(t.data_type == onnx.TensorProto.FLOAT and len(t.dims) > 1 for t in proto.graph.initializer)
    feeds = {"image": np.random.default_rng(2).standard_normal((8, 3, 16, 16)).astype(np.float32)}
    expected, actual = run(model_path, feeds), run_deployed(out, feeds, target)["logits"]
    sqnr = 10 * np.log10(np.sum(expected**2) / np.sum((actual - expected) ** 2))
    assert sqnr > 25, sqnr
    assert out.stat().st_size < 0.4 * model_path.stat().st_size
    assert model.plan.reports.get("latency_guard") is None  # objective size: no guard


def test_compile_is_deterministic(model_path, calib_dir, tmp_path):
    digests = set()
    for i in range(2):
        out = tmp_path / f"out{i}.onnx"
        qcompiler.compile(model_path, out, calib=calib_dir, objective="size", target="x86-avx2")
        digests.add(hashlib.sha256(out.read_bytes()).hexdigest())
    assert len(digests) == 1


def test_calibration_from_python_feeds_matches_directory(model_path, calib_dir):
    feeds = [dict(np.load(p)) for p in sorted(calib_dir.glob("*.npz"))]
    from_list = qcompiler.compile(model_path, calib=feeds, objective="size", target="x86-vnni")
    from_dir = qcompiler.compile(model_path, calib=calib_dir, objective="size", target="x86-vnni")
    assert ir.format_model(from_list) == ir.format_model(from_dir)


def test_latency_objective_keeps_int8_only_the_regions_measured_faster(model_path, calib_dir):
    model = qcompiler.compile(model_path, calib=calib_dir, target="x86-vnni")
    placed = model.plan.reports["latency_placement"]
    regions = [r for r in placed["regions"] if r["parent"] is None]
    # the regions faster alone, as a whole model, against the all-int8 one and float: the fastest that separates
    result, whole = placed["result"], placed["whole_model"]
    expected = {"float": lambda r: "float", "int8": lambda r: "int8",
                "placed": lambda r: "int8" if r["int8"] else "float"}
    assert regions and all(r["choice"] == expected[result](r) for r in regions)
    assert whole["int8"] == (result != "float")
    if result == "placed":
        assert all(r["t"] >= 4 and r["float_ms"] > r["int8_ms"] for r in placed["regions"] if r["choice"] == "int8")
    quantized = any(n.op_type == "QuantizeLinear" for n in model.graph)
    assert quantized == (result != "float") == (placed["int8_regions"] + placed["int8_units"] > 0)


def test_cli_compile_and_bad_calibration(model_path, calib_dir, tmp_path, capsys):
    out = tmp_path / "o.onnx"
    assert main(["compile", str(model_path), "-o", str(out), "--calib", str(calib_dir), "-q",
                 "--objective", "size", "--calibration", "percentile"]) == 0
    assert "quantized activations" in capsys.readouterr().out
    bad = tmp_path / "bad"
    bad.mkdir()
    np.savez(bad / "b.npz", image=np.zeros((1, 3, 8, 8), np.float32))
    out2 = tmp_path / "o2.onnx"
    assert main(["compile", str(model_path), "-o", str(out2), "--calib", str(bad), "-q"]) == 2
    err = capsys.readouterr().err
    assert "b.npz: input 'image' has shape (1, 3, 8, 8), the model expects (N, 3, 16, 16)" in err
    assert not out2.exists()
    assert main(["compile", str(model_path), "-o", str(out2), "--calib", str(calib_dir), "--target", "tpu"]) == 2
    assert "unknown target 'tpu'" in capsys.readouterr().err


def test_cli_compile_refuses_a_zero_row_calibration_batch(model_path, calib_dir, tmp_path, capsys):
    np.savez(calib_dir / "batch_9.npz", image=np.zeros((0, 3, 16, 16), np.float32))
    out = tmp_path / "o.onnx"
    assert main(["compile", str(model_path), "-o", str(out), "--calib", str(calib_dir), "-q", "--objective", "size"]) == 2
    err = capsys.readouterr().err
    assert err.strip() == (f"qcompiler: error: {calib_dir / 'batch_9.npz'}: input 'image' has no values (shape "
                           f"(0, 3, 16, 16), size 0 on axis 0); a calibration feed needs at least one row")
    assert not out.exists()


def _low_precision_model(tmp_path, dtype: str, calib_dtype) -> list[str]:
    """``y = Relu(MatMul(x, w))`` computing in ``dtype`` and calibration feeds of ``calib_dtype``: the
    compile command line."""
    proto = onnx.parser.parse_model(f"""
    <ir_version: 8, opset_import: ["" : 13]>
    g ({dtype}[N,8] x) => ({dtype}[N,4] y) {{ h = MatMul(x, w)
      y = Relu(h) }}""")
    proto.graph.initializer.append(onnx.numpy_helper.from_array(np.ones((8, 4), np.dtype(dtype)), "w"))
    onnx.save(proto, str(tmp_path / "low.onnx"))
    (tmp_path / "calib").mkdir()
    np.savez(tmp_path / "calib" / "b0.npz", x=np.ones((2, 8), calib_dtype))
    return ["compile", str(tmp_path / "low.onnx"), "-o", str(tmp_path / "o.onnx"), "--calib", str(tmp_path / "calib"),
            "--target", "x86-vnni", "--objective", "size", "-q"]


@pytest.mark.parametrize("dtype, calib_dtype, message", [
    ("float16", np.float32, "input 'x' has dtype float32, the model expects float16"),  # refused before writing
    ("double", np.float64, "1 layer(s) compute in double (first: MatMul"),  # not left unquantized in silence
])
def test_cli_compile_of_a_model_it_cannot_quantize_says_why_and_writes_nothing(tmp_path, capsys, dtype, calib_dtype,
                                                                              message):
    status = main(_low_precision_model(tmp_path, dtype, calib_dtype))
    assert status == 2 and not (tmp_path / "o.onnx").exists()
    assert message in capsys.readouterr().err


def test_cli_compile_of_a_float16_model_says_it_upcasts(tmp_path, capsys):
    assert main(_low_precision_model(tmp_path, "float16", np.float16)) == 0
    assert "upcast: the model computes in float16; quantized as float32" in capsys.readouterr().out
    written = onnx.load(tmp_path / "o.onnx")
    assert written.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT16
    assert any(n.op_type == "QuantizeLinear" for n in written.graph.node)


@pytest.mark.parametrize("batch", ["N", "4"])
def test_latency_feed_cuts_a_slow_batched_feed_to_its_first_sample_where_the_model_takes_it(batch):
    from qcompiler.latency import latency_feed

    proto = onnx.parser.parse_model(f"""
    <ir_version: 8, opset_import: ["" : 13]>
    g (float[{batch},8] x) => (float[{batch},8] y) {{ y = Relu(x) }}""").SerializeToString()
    feed = {"x": np.ones((4, 8), np.float32)}
    assert latency_feed(proto, feed, slow_seconds=60.0) == (feed, None)  # fast: the whole feed
    cut, seconds = latency_feed(proto, feed, slow_seconds=0.0)
    if batch == "N":
        assert cut["x"].shape == (1, 8) and seconds > 0
    else:  # a fixed batch dimension refuses one sample: the whole feed is kept
        assert cut is feed and seconds is None


def test_a_scalar_affine_after_a_conv_folds_when_quantizing_but_not_in_canonicalize(calib_dir, tmp_path):
    """PP-OCR's learnable affine blocks (Conv -> Mul(scalar) -> Add(scalar)) would be a float island between
    two int8 convolutions: the static int8 pipelines fold them; ``canonicalize`` alone keeps the float model."""
    text = """
    <ir_version: 8, opset_import: ["" : 13]>
    g (float[N,3,16,16] image) => (float[N,8,16,16] y) {
      c1 = Conv <pads = [1,1,1,1]> (image, w1, b1)
      m = Mul (c1, k)
      a = Add (m, j)
      r = Relu (a)
      y = Conv <pads = [1,1,1,1]> (r, w2, b2)
    }"""
    rng = np.random.default_rng(2)
    proto = onnx.parser.parse_model(text)
    shapes = {"w1": (8, 3, 3, 3), "b1": (8,), "w2": (8, 8, 3, 3), "b2": (8,), "k": (1,), "j": (1,)}
    proto.graph.initializer.extend(
        onnx.numpy_helper.from_array((rng.standard_normal(s) * 0.3).astype(np.float32), n) for n, s in shapes.items())
    source = tmp_path / "affine.onnx"
    onnx.save(proto, str(source))
    canonical = ir.load(str(source))
    qcompiler.PassManager(qcompiler.pipelines.canonicalize())(canonical)
    assert [n.op_type for n in canonical.graph] == ["Conv", "Mul", "Add", "Relu", "Conv"]
    output = tmp_path / "affine.int8.onnx"
    qcompiler.compile(str(source), str(output), calib=str(calib_dir), objective="size")
    ops = [n.op_type for n in onnx.load(str(output)).graph.node]
    assert "Mul" not in ops and "Add" not in ops and ops.count("Conv") == 2
    feeds = {"image": np.random.default_rng(3).standard_normal((4, 3, 16, 16)).astype(np.float32)}
    expected, actual = run(source, feeds), run(output, feeds)
    cosine = float(np.sum(expected * actual) / np.linalg.norm(expected) / np.linalg.norm(actual))
    assert cosine > 0.99, cosine
