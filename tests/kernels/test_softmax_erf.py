"""Softmax and Erf against onnxruntime 1.32's MLAS kernels, bit for bit (the numpy reference and
the numba jit kernels alike).

* natively: on a CPU with AVX-512F onnxruntime runs the ``avx512f`` Softmax kernel, on one with only
  AVX2+FMA the ``fma3`` one; Erf's kernel is FMA3 on both;
* under ``qemu-x86_64 -cpu Haswell-v4`` (AVX2+FMA, no AVX-512), where installed: the ``fma3`` kernels;
* everywhere: the SHA-256 of onnxruntime's outputs recorded on both (AMD EPYC natively and under
  qemu), and the float64 definition within a few ulps.
"""

from __future__ import annotations

import hashlib
import math
import platform
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from qcompiler.ir.testing import x86_cpu_flags

from qcompiler.executor import Interpreter
from qcompiler.kernels import default_registry
from qcompiler.kernels.jit import transcendental as jit
from qcompiler.kernels.reference.erf import Erf
from qcompiler.kernels.reference.softmax import Softmax

KERNELS = {"reference": (Softmax, Erf), "jit": (jit.Softmax, jit.Erf)}

LENGTHS = (1, 5, 8, 13, 16, 24, 31, 48, 52, 100, 129)


def softmax_rows(n: int) -> np.ndarray:
    """Seeded rows of length ``n``: normal logits of three scales, a quarter masked to -10000."""
    rng = np.random.default_rng(n)
    x = rng.normal(0, 1, (24, n)) * np.repeat([0.5, 3.0, 30.0], 8)[:, None]
    x[rng.random(x.shape) < 0.25] = -10000.0
    return x.astype(np.float32)


def erf_values() -> np.ndarray:
    rng = np.random.default_rng(9)
    return np.concatenate([rng.normal(0, 2, 2048), rng.uniform(-6, 6, 2048), np.linspace(-4.5, 4.5, 2051),
                           [0.0, -0.0, 0.921875, -0.921875, 3.925, 8.0, np.inf, -np.inf]]).astype(np.float32)


# SHA-256 of onnxruntime 1.32's float32 outputs for these inputs (all lengths concatenated for Softmax).
EXPECTED = {
    ("Softmax", "avx512f"): "4ab1913bcdc99f76b845d704c6009449a8c1357a4ba59009f75f3ea887ffb786",  # native
    ("Softmax", "fma3"): "0cc5038ad48c84c704c43169a1a3bffd73a0611000d9301f1ca5dfb3d1d58b5f",  # qemu; AVX2-only EPYC
    ("Erf", "fma3"): "4a98fc513ce6cf8a78c7c51ee84754109527c260b205ae7290439aa8ce62d4b6",  # both
}


def _digest(arrays) -> str:
    h = hashlib.sha256()
    for a in arrays:
        h.update(np.ascontiguousarray(a, np.float32).tobytes())
    return h.hexdigest()


def _ours(op: str, isa: str, backend: str = "reference"):
    softmax, erf = KERNELS[backend]
    if op == "Softmax":
        return [softmax(softmax_rows(n), axis=-1, isa=isa) for n in LENGTHS]
    return [erf(erf_values(), isa=isa)]


FLAGS = x86_cpu_flags()
NATIVE_ISA = "avx512f" if "avx512f" in FLAGS else "fma3" if {"avx2", "fma"} <= FLAGS else None
QEMU = shutil.which("qemu-x86_64") if platform.machine().lower() in ("x86_64", "amd64") else None

_WORKER = r"""
import sys, numpy as np, onnxruntime as ort
from onnx import helper, TensorProto
def session(op, **attrs):
    g = helper.make_graph([helper.make_node(op, ["x"], ["y"], **attrs)], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, None)],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)]); m.ir_version = 8
    o = ort.SessionOptions(); o.intra_op_num_threads = 1; o.log_severity_level = 3
    return ort.InferenceSession(m.SerializeToString(), o, providers=["CPUExecutionProvider"])
sm, er = session("Softmax", axis=-1), session("Erf")
data = np.load(sys.argv[1])
np.savez(sys.argv[2], **{k: (er if k == "erf" else sm).run(None, {"x": data[k]})[0] for k in data.files})
"""


def onnxruntime_outputs(tmp_path: Path, qemu: bool) -> dict[str, np.ndarray]:
    """onnxruntime's Softmax and Erf outputs for the test inputs, in a subprocess (under qemu or not)."""
    inputs, out = tmp_path / "inputs.npz", tmp_path / ("qemu.npz" if qemu else "native.npz")
    np.savez(inputs, erf=erf_values(), **{f"softmax_{n}": softmax_rows(n) for n in LENGTHS})
    command = [sys.executable, "-c", _WORKER, str(inputs), str(out)]
    if qemu:
        command = [QEMU, "-cpu", "Haswell-v4"] + command
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    return dict(np.load(out))


def _bit_mismatches(ours, theirs) -> int:
    return sum(int((a.view(np.uint32) != b.view(np.uint32)).sum()) for a, b in zip(ours, theirs, strict=True))


def _check_against(outputs: dict[str, np.ndarray], softmax_isa: str):
    theirs = [outputs[f"softmax_{n}"] for n in LENGTHS]
    for backend in KERNELS:
        ours = _ours("Softmax", softmax_isa, backend)
        assert _bit_mismatches(ours, theirs) == 0, (backend, softmax_isa, _bit_mismatches(ours, theirs))
        assert _bit_mismatches(_ours("Erf", "fma3", backend), [outputs["erf"]]) == 0, backend


@pytest.mark.skipif(NATIVE_ISA is None, reason="needs an x86-64 CPU with AVX2+FMA (MLAS's vector kernels)")
def test_native_onnxruntime_bit_exact(tmp_path):
    _check_against(onnxruntime_outputs(tmp_path, qemu=False), NATIVE_ISA)


@pytest.mark.skipif(QEMU is None, reason="qemu-x86_64 not installed (apt-get install qemu-user)")
def test_onnxruntime_under_qemu_haswell_bit_exact(tmp_path):
    _check_against(onnxruntime_outputs(tmp_path, qemu=True), "fma3")


@pytest.mark.parametrize("backend", sorted(KERNELS))
@pytest.mark.parametrize("op,isa", sorted(EXPECTED))
def test_recorded_onnxruntime_outputs(op, isa, backend):
    assert _digest(_ours(op, isa, backend)) == EXPECTED[op, isa]


@pytest.mark.parametrize("backend", sorted(KERNELS))
def test_erf_isas_agree(backend):
    """There is one x86 Erf kernel (FMA3), used on AVX-512 CPUs too."""
    assert _digest(_ours("Erf", "avx512f", backend)) == _digest(_ours("Erf", "fma3", backend))


@pytest.mark.parametrize("isa", ["fma3", "avx512f"])
def test_jit_matches_reference_on_edge_values(isa):
    """Seeded rows of every length up to 70 and odd shapes, with ties, huge, tiny and masked logits."""
    rng = np.random.default_rng(5)
    for n in range(1, 71):
        x = rng.normal(0, rng.choice([0.01, 1, 10, 100]), (6, n)).astype(np.float32)
        x[0] = 0.0
        x[1, ::3] = -1e30
        x[2] = rng.integers(-3, 3, n)
        np.testing.assert_array_equal(jit.Softmax(x, axis=-1, isa=isa), Softmax(x, axis=-1, isa=isa))
    x = softmax_rows(31).reshape(2, 12, 31)
    for axis in (0, 1, 2, -1):
        np.testing.assert_array_equal(jit.Softmax(x, axis=axis, isa=isa), Softmax(x, axis=axis, isa=isa))
    v = np.concatenate([rng.normal(0, 3, 20000), np.nextafter(np.float32(0.921875), [0, 1], dtype=np.float32),
                        [1e-40, -1e-40, 1e-20, 3.9249, 3.9251, 100]]).astype(np.float32)
    np.testing.assert_array_equal(jit.Erf(v.reshape(-1, 2), isa=isa), Erf(v.reshape(-1, 2), isa=isa))


@pytest.mark.parametrize("isa", ["fma3", "avx512f"])
def test_close_to_float64_definition(isa):
    for n in LENGTHS:
        x = softmax_rows(n)
        x64 = x.astype(np.float64)
        want = np.exp(x64 - x64.max(axis=1, keepdims=True))
        want /= want.sum(axis=1, keepdims=True)
        np.testing.assert_allclose(Softmax(x, axis=-1, isa=isa), want, rtol=4e-7 * 8, atol=1e-30)
    v = erf_values()
    want = np.array([math.erf(t) for t in v.astype(np.float64)])
    np.testing.assert_allclose(Erf(v, isa=isa), want, rtol=3e-7, atol=2e-7)


def test_softmax_other_axes_and_formula():
    x = softmax_rows(52).reshape(4, 6, 52)
    moved = Softmax(np.moveaxis(x, 1, -1), axis=-1, isa="fma3")
    np.testing.assert_array_equal(Softmax(x, axis=1, isa="fma3"), np.moveaxis(moved, -1, 1))
    for isa in (None, "fma3", "avx512f"):
        np.testing.assert_allclose(Softmax(x, axis=0, isa=isa).sum(axis=0), 1, rtol=1e-5)
    x64 = x.astype(np.float64)  # other dtypes: the formula
    np.testing.assert_allclose(Softmax(x64, axis=-1, isa="fma3").sum(axis=-1), 1, rtol=1e-12)
    with pytest.raises(ValueError, match="unknown isa"):
        Softmax(x, isa="neon")


def test_profiles_choose_the_isa():
    from onnx import TensorProto, helper

    from qcompiler import ir

    graph = helper.make_graph(
        [helper.make_node("Softmax", ["x"], ["s"], axis=-1), helper.make_node("Erf", ["s"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [24, 52])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [24, 52])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    x = softmax_rows(52)
    for profile, isa in (("x86-avx2", "fma3"), ("x86-vnni", "avx512f"), ("simulate", None), ("arm64", None)):
        interpreter = Interpreter(ir.from_proto(model), profile=profile)
        assert [step.attrs.get("isa") for step in interpreter.steps] == [isa, isa]
        got = interpreter.run({"x": x})["y"]
        np.testing.assert_array_equal(got, Erf(Softmax(x, axis=-1, isa=isa), isa=isa))  # reference == jit
    assert default_registry.lookup("", "Softmax", 13) is jit.Softmax
    assert default_registry.lookup("", "Erf", 13, backends=("reference",)) is Erf
