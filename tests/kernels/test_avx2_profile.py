"""The ``avx2_pair_saturate`` accumulation profile: unit behaviour, and onnxruntime on an emulated
AVX2-without-VNNI CPU (``qemu-x86_64 -cpu Haswell-v4``, skipped when qemu-user is not installed:
``apt-get install qemu-user``)."""

from __future__ import annotations

import shutil
import subprocess
import sys

import numpy as np
import pytest

from qcompiler.kernels import default_registry
from qcompiler.kernels.jit import JIT
from qcompiler.kernels.reference import REFERENCE, integer_matmul

ARITHS = {"reference": REFERENCE, "jit": JIT}


def matmul(a, b, accumulation, arith, za=0, zb=0):
    a, b = np.asarray(a), np.asarray(b)
    return int(integer_matmul(a.reshape(1, 1, -1), b.reshape(1, -1, 1), za, zb,
                              accumulation=accumulation, arith=arith)[0, 0, 0])


@pytest.mark.parametrize("backend", ARITHS)
@pytest.mark.parametrize(
    "x, w, exact, saturated",
    [
        ([255, 255], [127, 127], 64770, 32767),  # one pair saturates
        ([255, 255], [-128, -128], -65280, -32768),  # ... at both ends
        ([0, 255, 255, 0], [127] * 4, 64770, 64770),  # pairs are (0, 1), (2, 3): no pair saturates
        ([255, 255, 0, 255], [127] * 4, 97155, 65152),  # 32767 + 32385
        ([255, 255, 255], [127] * 3, 97155, 65152),  # odd K: the last product stands alone
        ([255] * 64, [127] * 64, 2072640, 32 * 32767),
    ],
)
def test_pair_saturation(x, w, exact, saturated, backend):
    x, w = np.array(x, np.uint8), np.array(w, np.int8)
    assert matmul(x, w, "exact", ARITHS[backend]) == exact
    assert matmul(x, w, "avx2_pair_saturate", ARITHS[backend]) == saturated


@pytest.mark.parametrize("backend", ARITHS)
def test_zero_points_are_applied_after_the_saturated_raw_sum(backend):
    x, w = np.full(64, 200, np.uint8), np.full(64, 100, np.int8)
    assert matmul(x, w, "exact", ARITHS[backend], za=128) == 64 * 72 * 100
    # 32 pairs of 2 * 200 * 100 saturate to 32767, then - za * colsum(w)
    assert matmul(x, w, "avx2_pair_saturate", ARITHS[backend], za=128) == 32 * 32767 - 128 * 64 * 100


@pytest.mark.parametrize("backend", ARITHS)
@pytest.mark.parametrize("at, bt", [(np.uint8, np.uint8), (np.int8, np.int8), (np.int8, np.uint8)])
def test_other_type_pairs_are_exact(at, bt, backend):
    a, b = np.full(8, np.iinfo(at).max, at), np.full(8, np.iinfo(bt).max, bt)
    assert matmul(a, b, "avx2_pair_saturate", ARITHS[backend]) == matmul(a, b, "exact", ARITHS[backend])


def test_unknown_accumulation_is_refused():
    with pytest.raises(ValueError, match="accumulation must be one of"):
        integer_matmul(np.zeros((1, 1, 2), np.uint8), np.zeros((1, 2, 1), np.int8), accumulation="vnni")


def qlinear_conv(backend):
    return default_registry.lookup("", "QLinearConv", 13, backends=(backend,))


@pytest.mark.parametrize("backend", ARITHS)
def test_conv_pairs_the_channels_of_one_kernel_position(backend):
    """im2col's k order is (kh, kw, c), as in onnxruntime's NHWC im2col: with C=2 and a 1x2 kernel
    the pairs are (k0c0, k0c1) and (k1c0, k1c1). In the weight's own order (c, kh, kw) they would
    be (c0k0, c0k1) and (c1k0, c1k1), and nothing would saturate here."""
    x = np.array([255, 0, 255, 0], np.uint8).reshape(1, 2, 1, 2)  # 255 at k0, 0 at k1, in both channels
    w = np.full((1, 2, 1, 2), 127, np.int8)
    args = (x, np.float32(1), np.uint8(0), w, np.float32(1), np.zeros((), np.int8), np.float32(256), np.uint8(0))
    assert qlinear_conv(backend)(*args).item() == round(64770 / 256)
    assert qlinear_conv(backend)(*args, accumulation="avx2_pair_saturate").item() == round(32767 / 256)


@pytest.mark.parametrize("backend", ARITHS)
def test_convinteger_is_exact_under_the_profile(backend):
    """onnxruntime's ConvInteger multiplies (w, x), an s8 x u8 GEMM that MLAS computes exactly."""
    x = np.array([255, 0, 255, 0], np.uint8).reshape(1, 2, 1, 2)
    w = np.full((1, 2, 1, 2), 127, np.int8)
    kernel = default_registry.lookup("", "ConvInteger", 10, backends=(backend,))
    assert kernel(x, w, accumulation="avx2_pair_saturate").item() == 64770


@pytest.mark.parametrize("backend", ARITHS)
def test_depthwise_qlinearconv_with_one_weight_zero_point_is_exact(backend):
    x = np.full((1, 2, 2, 2), 255, np.uint8)
    w = np.full((2, 1, 2, 2), 127, np.int8)
    kernel = qlinear_conv(backend)
    args = (x, np.float32(1), np.uint8(0), w, np.float32(1), np.zeros(2, np.int8), np.float32(512), np.uint8(0))
    exact = kernel(*args, group=2)
    assert exact.ravel().tolist() == [round(4 * 255 * 127 / 512)] * 2
    np.testing.assert_array_equal(kernel(*args, group=2, accumulation="avx2_pair_saturate"), exact)
    args = args[:5] + (np.array([0, 1], np.int8),) + args[6:]  # distinct zero points: the GEMM path
    assert kernel(*args, group=2, accumulation="avx2_pair_saturate").ravel()[0] == round(2 * 32767 / 512)


ORT_RUNNER = """
import glob, sys, numpy as np, onnxruntime as ort
for path in sorted(glob.glob(sys.argv[1] + "/*.onnx")):
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    np.save(path[:-5] + ".y.npy", session.run(None, dict(np.load(path[:-5] + ".x.npz")))[0])
"""


def extreme_cases(rng):
    """``name -> (op, inputs, output dtype, attrs)`` where u8 x s8 pairs saturate often."""
    def u8(*shape):
        return rng.choice(np.array([0, 1, 128, 254, 255], np.uint8), shape)

    def s8(*shape):
        return rng.choice(np.array([-128, -127, 0, 126, 127], np.int8), shape)

    def qconv(x, w, w_zero_point, **attrs):
        m = w.shape[0]
        return ("QLinearConv", {"x": x, "x_scale": np.float32(0.02), "x_zero_point": np.uint8(7), "w": w,
                                "w_scale": np.full(m, 0.01, np.float32), "w_zero_point": w_zero_point,
                                "y_scale": np.float32(4.0), "y_zero_point": np.uint8(128),
                                "B": rng.integers(-999, 999, m).astype(np.int32)}, np.uint8, attrs)

    def qmatmul(a, b):
        return ("QLinearMatMul", {"a": a, "a_scale": np.float32(0.02), "a_zero_point": np.uint8(3), "b": b,
                                  "b_scale": np.float32(0.01), "b_zero_point": np.int8(0),
                                  "y_scale": np.float32(4.0), "y_zero_point": np.uint8(128)}, np.uint8, {})

    return {
        "matmulinteger_u8s8": ("MatMulInteger", {"A": u8(5, 37), "B": s8(37, 9), "a_zero_point": np.uint8(9),
                                                 "b_zero_point": np.int8(-2)}, np.int32, {}),
        "matmulinteger_u8u8": ("MatMulInteger", {"A": u8(5, 37), "B": u8(37, 9)}, np.int32, {}),
        "qlinearmatmul_batch": qmatmul(u8(2, 3, 300), s8(300, 17)),
        "qlinearconv_3x3_c3": qconv(u8(1, 3, 6, 6), s8(8, 3, 3, 3), np.zeros(8, np.int8), pads=[1, 1, 1, 1]),
        "qlinearconv_group2": qconv(u8(2, 6, 5, 5), s8(4, 3, 3, 3), np.full(4, 3, np.int8), group=2, strides=[2, 1]),
        "qlinearconv_depthwise": qconv(u8(1, 8, 5, 5), s8(8, 1, 3, 3), np.zeros(8, np.int8), group=8, pads=[1] * 4),
        "qlinearconv_depthwise_zps": qconv(u8(1, 8, 5, 5), s8(8, 1, 3, 3), np.arange(8, dtype=np.int8), group=8),
        "qlinearconv_1d_dilated": qconv(u8(1, 5, 12), s8(4, 5, 3), np.zeros(4, np.int8), dilations=[2]),
        "convinteger_u8s8": ("ConvInteger", {"x": u8(1, 4, 5, 5), "w": s8(3, 4, 3, 3), "x_zero_point": np.uint8(5),
                                             "w_zero_point": np.int8(0)}, np.int32, {"pads": [1, 1, 1, 1]}),
    }


@pytest.mark.skipif(shutil.which("qemu-x86_64") is None, reason="needs qemu-user (apt-get install qemu-user)")
def test_onnxruntime_on_emulated_haswell_matches_the_profile(single_node, tmp_path):
    cases = extreme_cases(np.random.default_rng(7))
    for name, (op, inputs, out_dtype, attrs) in cases.items():
        model, feeds = single_node(op, inputs, out_dtype, **attrs)
        (tmp_path / f"{name}.onnx").write_bytes(model.SerializeToString())
        np.savez(tmp_path / f"{name}.x.npz", **feeds)
    subprocess.run(["qemu-x86_64", "-cpu", "Haswell-v4", sys.executable, "-c", ORT_RUNNER, str(tmp_path)],
                   check=True, timeout=600, capture_output=True)
    differs = []
    for name, (op, inputs, _, attrs) in cases.items():
        expected = np.load(tmp_path / f"{name}.y.npy")
        for backend in ARITHS:
            kernel = default_registry.lookup("", op, 13, backends=(backend,))
            ours = kernel(*inputs.values(), **attrs, accumulation="avx2_pair_saturate")
            np.testing.assert_array_equal(ours, expected, err_msg=f"{name} ({backend})")
        if not np.array_equal(kernel(*inputs.values(), **attrs), expected):
            differs.append(name)
    # the cases discriminate: where u8 x s8 goes through MLAS's GEMM, exact accumulation is wrong
    assert differs == ["matmulinteger_u8s8", "qlinearmatmul_batch", "qlinearconv_3x3_c3", "qlinearconv_group2",
                       "qlinearconv_depthwise_zps", "qlinearconv_1d_dilated"]
