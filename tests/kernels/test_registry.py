"""KernelRegistry: registration, version selection, backend preference, errors; the built-in kernels."""

from __future__ import annotations

import sys

import pytest

from qcompiler.kernels import KernelNotFound, KernelRegistry, available_backends, default_registry


def _registry() -> KernelRegistry:
    reg = KernelRegistry()
    for since, backend in [(1, "reference"), (13, "reference"), (13, "jit"), (19, "reference")]:
        reg.register("Op", since=since, backend=backend)(lambda *a, s=since, b=backend: (s, b))
    return reg


@pytest.mark.parametrize(
    "opset, backends, expected",
    [
        (1, ("jit", "reference"), (1, "reference")),
        (12, ("jit", "reference"), (1, "reference")),
        (13, ("jit", "reference"), (13, "jit")),
        (13, ("reference", "jit"), (13, "reference")),
        (18, ("jit", "reference"), (13, "jit")),
        (19, ("jit", "reference"), (19, "reference")),
        (30, ("native", "jit", "reference"), (19, "reference")),
    ],
)
def test_lookup_takes_highest_since_then_first_backend(opset, backends, expected):
    assert _registry().lookup("", "Op", opset, backends)() == expected


def test_lookup_does_not_fall_back_to_an_older_version_for_a_backend():
    with pytest.raises(KernelNotFound, match=r"since 19 exists only in \['reference'\]"):
        _registry().lookup("", "Op", 19, backends=("jit",))


@pytest.mark.parametrize(
    "domain, op, opset, message",
    [
        ("", "Missing", 13, r"ai\.onnx::Missing at opset 13 .*op not registered"),
        ("com.acme", "Op", 13, r"com\.acme::Op at opset 13"),
        ("", "Op", 0, r"registered only since 1"),
    ],
)
def test_kernel_not_found_names_domain_op_and_opset(domain, op, opset, message):
    with pytest.raises(KernelNotFound, match=message) as info:
        _registry().lookup(domain, op, opset)
    assert isinstance(info.value, KeyError)
    assert (info.value.domain, info.value.op_type, info.value.opset) == (domain, op, opset)


def test_ai_onnx_is_the_default_domain_and_custom_domains_are_separate():
    reg = _registry()
    assert reg.lookup("ai.onnx", "Op", 13)() == (13, "jit")
    reg.register("Op", domain="com.acme", since=1)(lambda: "acme")
    assert reg.lookup("com.acme", "Op", 1)() == "acme"
    assert ("com.acme", "Op") in reg and ("ai.onnx", "Op") in reg and ("", "Other") not in reg


def test_registering_the_same_key_twice_is_an_error():
    reg = _registry()
    with pytest.raises(ValueError, match="already registered"):
        reg.register("Op", since=13, backend="jit")(lambda: None)


def test_register_returns_the_function_unchanged():
    def kernel():
        return 1

    assert KernelRegistry().register("Op")(kernel) is kernel


BUILTIN = [("", op) for op in ["Add", "AveragePool", "Conv", "ConvInteger", "ConvTranspose", "DequantizeLinear",
                                "DynamicQuantizeLinear", "Erf", "HardSigmoid", "HardSwish",
                                "LayerNormalization", "MatMulInteger", "MaxPool", "Mul", "QLinearConv",
                                "QLinearMatMul", "QuantizeLinear", "Softmax", "Sub"]] + [
    ("com.microsoft", op) for op in ["DequantizeLinear", "GatherBlockQuantized", "MatMulIntegerToFloat", "MatMulNBits",
                                     "QGemm", "QLinearAdd", "QLinearGlobalAveragePool", "QLinearSoftmax",
                                     "QuantizeLinear"]]
JIT = ["ConvInteger", "DequantizeLinear", "DynamicQuantizeLinear", "MatMulInteger", "QLinearConv", "QLinearMatMul",
       "QuantizeLinear", "QGemm", "MatMulIntegerToFloat", "HardSigmoid"]
JIT_TRANSCENDENTAL = ["Erf", "Softmax"]


def test_importing_the_package_registers_the_builtin_kernels():
    torch_backend = sys.modules.get("qcompiler.kernels.torch_ops")  # optional; registered once some test imported it
    torch_only = {("", op) for op in torch_backend.registered_ops()} if torch_backend else set()
    assert set(BUILTIN) <= set(default_registry.ops()) and set(default_registry.ops()) - set(BUILTIN) <= torch_only
    assert available_backends() - {"torch"} == {"reference", "jit"}
    for domain, op in BUILTIN:
        opset = 1 if domain else 21
        reference = default_registry.lookup(domain, op, opset, backends=("reference",))
        assert reference.__module__.startswith("qcompiler.kernels.reference.")
        chosen = default_registry.lookup(domain, op, opset)
        assert chosen.__module__ == ("qcompiler.kernels.jit.ops" if op in JIT else "qcompiler.kernels.jit.transcendental"
                                     if op in JIT_TRANSCENDENTAL else reference.__module__)
