"""The distillation loss: KL divergence through the student's logits for an output a Softmax computes, the
relative squared error elsewhere."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper

torch = pytest.importorskip("torch")

import qcompiler  # noqa: E402
from qcompiler import ir  # noqa: E402
from qcompiler.qat.graph import QuantizedModel  # noqa: E402
from qcompiler.qat.train import distillation_loss  # noqa: E402


def _with_softmax(fp32, data, root, reshaped: bool):
    """The tiny CNN with class probabilities as its output, compiled to int8: ``Softmax(y)``, or (``reshaped``)
    that Softmax reshaped to ``[n, 1, 5]``, the form canonicalization gives a Softmax over a middle axis
    (Flatten, Softmax, Reshape)."""
    model = onnx.load(fp32)
    softmax = "softmax_out" if reshaped else "probabilities"
    model.graph.node.append(helper.make_node("Softmax", ["y"], [softmax], axis=-1, name="softmax"))
    if reshaped:
        model.graph.initializer.append(onnx.numpy_helper.from_array(np.array([-1, 1, 5], np.int64), "shape"))
        model.graph.node.append(helper.make_node("Reshape", [softmax, "shape"], ["probabilities"], name="reshape"))
        model.graph.output[0].type.tensor_type.shape.dim.insert(1, onnx.TensorShapeProto.Dimension(dim_value=1))
    model.graph.output[0].name = "probabilities"
    source, compiled = root / "softmax.onnx", root / "softmax.int8.onnx"
    onnx.save(model, source)
    qcompiler.compile(str(source), str(compiled), pipeline="int8", calib=str(data), objective="size")
    return compiled


@pytest.mark.parametrize("reshaped", [False, True])
def test_the_logits_of_a_softmax_output_are_recorded(tiny_cnn, tmp_path, reshaped):
    fp32, _, data = tiny_cnn
    module = QuantizedModel(ir.load(_with_softmax(fp32, data, tmp_path, reshaped)))
    feeds = {"x": np.load(data / "batch_0.npz")["x"][:4]}
    outputs = module(feeds)
    logits = module.logits["probabilities"]
    assert logits.shape == outputs["probabilities"].shape == ((4, 1, 5) if reshaped else (4, 5))
    np.testing.assert_allclose(torch.softmax(logits, -1).detach().numpy(), outputs["probabilities"].detach().numpy(),
                               rtol=1e-6, atol=1e-7)


def test_kl_through_the_logits_matches_its_definition_and_is_zero_at_the_teacher():
    rng = np.random.default_rng(0)
    z = torch.tensor(rng.normal(size=(3, 7, 11)), dtype=torch.float32, requires_grad=True)
    t = np.asarray(torch.softmax(torch.tensor(rng.normal(size=(3, 7, 11)) * 3), -1).numpy(), np.float32)
    t[0, 0] = np.eye(11)[2]  # a one-hot row: 0 log 0 counts as 0
    loss = distillation_loss([torch.softmax(z, -1)], [t], [z])
    log_y = torch.log_softmax(z, -1).detach().numpy().astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        expected = np.where(t > 0, t * (np.log(t) - log_y), 0.0).sum(-1).mean()
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    loss.backward()
    assert z.grad is not None and z.grad.abs().sum() > 0
    at_teacher = torch.log(torch.from_numpy(np.maximum(t, 1e-30)))
    assert distillation_loss([torch.from_numpy(t)], [t], [at_teacher]).item() == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("temperature", [2.0, 4.0])
def test_kl_at_a_temperature_softens_both_sides_and_scales_by_its_square(temperature):
    rng = np.random.default_rng(1)
    z = torch.tensor(rng.normal(size=(2, 5, 9)), dtype=torch.float32)
    teacher_logits = rng.normal(size=(2, 5, 9)) * 3
    t = np.asarray(torch.softmax(torch.tensor(teacher_logits), -1).numpy(), np.float32)
    loss = distillation_loss([torch.softmax(z, -1)], [t], [z], temperature)
    soft_t = torch.softmax(torch.tensor(teacher_logits) / temperature, -1).numpy()
    log_soft_y = torch.log_softmax(z.double() / temperature, -1).numpy()
    expected = temperature ** 2 * (soft_t * (np.log(soft_t) - log_soft_y)).sum(-1).mean()
    assert loss.item() == pytest.approx(expected, rel=1e-4)
    at_teacher = torch.tensor(teacher_logits, dtype=torch.float32)
    assert distillation_loss([torch.from_numpy(t)], [t], [at_teacher], temperature).item() == \
        pytest.approx(0.0, abs=1e-5)


def test_outputs_without_logits_keep_the_relative_squared_error():
    t = np.array([[1.0, 2.0], [3.0, 4.0]], np.float32)
    y = torch.tensor([[1.0, 2.0], [3.0, 5.0]])
    assert distillation_loss([y], [t]).item() == pytest.approx(1.0 / 30.0)
    assert distillation_loss([y], [t], [None]).item() == pytest.approx(1.0 / 30.0)
