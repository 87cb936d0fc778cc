"""The torch backend (``qcompiler.kernels.torch_ops``) on the onnx wheel's backend node tests of every op
it has a kernel for: the same generated models, inputs and expected outputs as
``test_onnx_node_cases.py``. Each case's node is decoded and run through the torch kernel and through the
reference backend where that has a kernel for the op (else the case's expected output, computed by
``onnx.reference``, is the reference). Floats agree to float32 rounding (torch sums in another order),
integers exactly.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from qcompiler.kernels import KernelNotFound, default_registry  # noqa: E402
from qcompiler.kernels.torch_ops import BACKEND, registered_ops  # noqa: E402

from .test_onnx_node_cases import _array, _attribute, _node_cases  # noqa: E402

_UNSUPPORTED = "an attribute or type the torch backend refuses (only what CNN/OCR models use is covered)"
_FLOAT8 = "float8/float4 quantized types are refused: qcompiler quantizes to integer types only"
EXCLUDED_PREFIXES = {
    "test_quantizelinear_e": _FLOAT8, "test_quantizelinear_float4": _FLOAT8, "test_dequantizelinear_e": _FLOAT8,
    "test_dequantizelinear_float4": _FLOAT8, "test_cast_": _UNSUPPORTED, "test_castlike": _UNSUPPORTED,
    "test_batchnorm_example_training": _UNSUPPORTED, "test_batchnorm_epsilon_training": _UNSUPPORTED,
    "test_training_dropout": _UNSUPPORTED, "test_maxpool_with_argmax": _UNSUPPORTED,
    "test_maxpool_2d_uint8": _UNSUPPORTED, "test_reshape_allowzero": _UNSUPPORTED,
    "test_gather_elements": _UNSUPPORTED,
}


CASES = _node_cases(set(registered_ops()))


def _excluded(name: str) -> str | None:
    return next((why for prefix, why in EXCLUDED_PREFIXES.items() if name.startswith(prefix)), None)


def _call(case, backend: str):
    node = case.model.graph.node[0]
    opset = next(o.version for o in case.model.opset_import if o.domain in ("", "ai.onnx"))
    kernel = default_registry.lookup(node.domain, node.op_type, opset, backends=(backend,))
    present = iter(case.data_sets[0][0])
    args = [None if name == "" else _array(next(present)) for name in node.input]
    result = kernel(*args, **{a.name: _attribute(a) for a in node.attribute})
    outputs = list(result) if isinstance(result, tuple) else [result]
    return [o.detach().numpy() if isinstance(o, torch.Tensor) else np.asarray(o) for o in outputs]


@pytest.mark.parametrize("case", [pytest.param(c, id=c.name, marks=pytest.mark.skip(reason=_excluded(c.name))
                                               if _excluded(c.name) else ()) for c in CASES])
def test_torch_kernel_matches_reference(case):
    torch.set_num_threads(1)
    expected = [_array(v) for v in case.data_sets[0][1]]
    try:
        expected = _call(case, "reference")
    except KernelNotFound:
        pass  # no numpy kernel for this op: the generator's expected output (onnx.reference) is the reference
    actual = _call(case, BACKEND)
    for got, want in zip(actual, expected, strict=False):
        assert got.shape == want.shape, (got.shape, want.shape)
        if want.dtype.kind == "f":
            tolerance = 1e-6 if want.dtype == np.float64 else 2e-5
            np.testing.assert_allclose(got.astype(np.float64), want.astype(np.float64), rtol=tolerance,
                                       atol=tolerance)
        else:
            np.testing.assert_array_equal(got.astype(np.float64), want.astype(np.float64))


def test_cases_cover_every_torch_op_with_node_tests():
    covered = {c.model.graph.node[0].op_type for c in CASES}
    assert {"Conv", "Gemm", "MatMul", "MaxPool", "AveragePool", "QuantizeLinear", "DequantizeLinear",
            "Softmax", "Reshape", "Concat"} <= covered


def test_hardswish_is_onnxruntimes_hardsigmoid_times_x_bit_for_bit():
    """onnxruntime computes HardSwish as ``x * HardSigmoid(x; 1/6, 1/2)``; ``F.hardswish`` rounds otherwise."""
    x = (np.random.default_rng(0).standard_normal(100_000) * 4).astype(np.float32)
    torch_kernel = default_registry.lookup("", "HardSwish", 14, backends=(BACKEND,))
    reference = default_registry.lookup("", "HardSwish", 14, backends=("reference",))
    np.testing.assert_array_equal(torch_kernel(x).numpy(), reference(x))


@pytest.mark.parametrize("kernel, strides, dilations, pads", [(3, (1, 1), (1, 1), (1, 1, 1, 1)),
                                                               (5, (2, 1), (1, 1), (2, 2, 2, 2)),
                                                               (3, (2, 2), (2, 1), (0, 1, 2, 0))])
def test_depthwise_conv_and_its_gradients_equal_torchs(kernel, strides, dilations, pads):
    """The depthwise Conv (group = channels, numba loops) against ``torch.nn.functional.conv2d``: outputs to
    float32 rounding, exactly on integer-valued operands (the integer layers fine-tuning runs); the input's,
    the weight's and the bias's gradients to float32 rounding."""
    import torch.nn.functional as F

    conv = default_registry.lookup("", "Conv", 21, backends=(BACKEND,))
    rng = np.random.default_rng(0)
    x0 = torch.tensor(rng.integers(-128, 128, (2, 6, 11, 17)), dtype=torch.float32)
    w0 = torch.tensor(rng.integers(-8, 8, (6, 1, kernel, kernel)), dtype=torch.float32)
    b0 = torch.tensor(rng.integers(-500, 500, 6), dtype=torch.float32)
    results = []
    for ours in (True, False):
        x, w, b = (t.clone().requires_grad_(True) for t in (x0, w0, b0))
        if ours:
            y = conv(x, w, b, group=6, kernel_shape=[kernel, kernel], strides=list(strides), dilations=list(dilations),
                     pads=list(pads))
        else:
            y = F.conv2d(F.pad(x, (pads[1], pads[3], pads[0], pads[2])), w, b, strides, 0, dilations, 6)
        y.backward(torch.tensor(np.random.default_rng(1).normal(size=tuple(y.shape)), dtype=torch.float32))
        results.append((y.detach(), x.grad, w.grad, b.grad))
    (y, *gradients), (expected, *expected_gradients) = results
    assert torch.equal(y, expected)
    for ours, theirs in zip(gradients, expected_gradients, strict=True):
        np.testing.assert_allclose(ours.numpy(), theirs.numpy(), rtol=1e-5, atol=1e-5 * float(theirs.abs().max()))
