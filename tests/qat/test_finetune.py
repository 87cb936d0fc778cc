"""qcompiler finetune end to end on a small real CNN: what it writes, that a resumed run equals an
uninterrupted one, that the torch forward is what onnxruntime runs from the written model, and its errors."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest

torch = pytest.importorskip("torch")

import qcompiler  # noqa: E402
from qcompiler import ir  # noqa: E402
from qcompiler.cli import main  # noqa: E402
from qcompiler.errors import UserError  # noqa: E402

from .conftest import float_model  # noqa: E402


def _initializers(path) -> dict[str, np.ndarray]:
    return {t.name: onnx.numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer}


def test_writes_the_same_qdq_model_with_trained_integers_and_scales(tiny_cnn, tmp_path):
    fp32, int8, data = tiny_cnn
    out = tmp_path / "tuned.onnx"
    result = qcompiler.finetune(int8, out, teacher=fp32, data=data, steps=30, lr=1e-4, batch=8, weights="int4")
    onnx.checker.check_model(onnx.load(str(out)), full_check=True)
    before, after = onnx.load(str(int8)), onnx.load(str(out))
    assert [(n.op_type, list(n.input), list(n.output)) for n in before.graph.node] == \
           [(n.op_type, list(n.input), list(n.output)) for n in after.graph.node]  # same graph: same speed
    old, new = _initializers(int8), _initializers(out)
    assert {k: v.dtype for k, v in old.items()} == {k: v.dtype for k, v in new.items()}
    assert any(not np.array_equal(old[k], new[k]) for k in old)  # trained
    assert len(result.losses) == 30 and result.outputs[0].name == "y"
    assert result.outputs[0].error_after < result.outputs[0].error_before  # distillation helped the 4-bit start
    feeds = dict(np.load(data / "batch_0.npz"))
    ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, feeds)


@pytest.mark.parametrize("blocks", [0, 1])
def test_a_task_loss_sees_the_teachers_outputs(tiny_cnn, tmp_path, blocks):
    """``extras['teacher:y']`` is the FP32 teacher's output for the step's rows (what sequence-level
    distillation decodes), with or without block reconstruction (then from the canonicalized teacher)."""
    fp32, int8, data = tiny_cnn
    teacher = ort.InferenceSession(str(fp32), providers=["CPUExecutionProvider"])
    seen = []

    def task_loss(outputs, extras):
        seen.append((extras["teacher:y"], outputs["y"].shape))
        return torch.zeros(())

    qcompiler.finetune(int8, tmp_path / "t.onnx", teacher=fp32, data=data, steps=2, batch=16, blocks=blocks,
                       task_loss=task_loss)
    assert len(seen) == 2 and all(t.shape == shape for t, shape in seen)
    every = np.concatenate([teacher.run(None, dict(np.load(f)))[0] for f in sorted(data.glob("*.npz"))])
    for t, _ in seen:  # each file holds 16 rows, a step takes all of one file: its rows are some file's
        assert any(np.allclose(t, every[i:i + 16], atol=1e-5) for i in range(0, len(every), 16))


@pytest.mark.parametrize("settings", [{}, {"weights": "int4", "freeze": 0.05}, {"ema": 0.5}],
                         ids=["int8", "int4-freezing", "int8-averaged"])
def test_a_resumed_run_ends_where_an_uninterrupted_one_does(tiny_cnn, tmp_path, settings):
    fp32, int8, data = tiny_cnn
    whole = tmp_path / "whole.onnx"
    qcompiler.finetune(int8, whole, teacher=fp32, data=data, steps=6, lr=1e-3, batch=8, **settings)

    class Interrupted(Exception):
        pass

    def interrupt(step, loss):
        if step == 2:  # within the first epoch of the 3 files: the resumed run needs that epoch's order
            raise Interrupted

    checkpoint = tmp_path / "run.ckpt"
    resumed = tmp_path / "resumed.onnx"
    with pytest.raises(Interrupted):
        qcompiler.finetune(int8, resumed, teacher=fp32, data=data, steps=6, lr=1e-3, batch=8, checkpoint=checkpoint,
                           checkpoint_every=1, on_step=interrupt, **settings)
    assert checkpoint.exists() and not resumed.exists()
    result = qcompiler.finetune(int8, resumed, teacher=fp32, data=data, steps=6, lr=1e-3, batch=8,
                                checkpoint=checkpoint, checkpoint_every=1, **settings)
    assert result.steps_run == 4  # steps 3..6
    a, b = _initializers(whole), _initializers(resumed)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    with pytest.raises(UserError, match="belongs to another model or other settings"):
        qcompiler.finetune(int8, tmp_path / "other.onnx", teacher=fp32, data=data, steps=7, lr=1e-3, batch=8,
                           checkpoint=checkpoint, **settings)


def test_each_epoch_draws_every_file_once_in_a_new_order():
    from qcompiler.qat.train import FileOrder

    files = FileOrder(5, np.random.default_rng(0))
    epochs = [[files.draw() for _ in range(5)] for _ in range(4)]
    assert all(sorted(epoch) == [0, 1, 2, 3, 4] for epoch in epochs)
    assert len({tuple(epoch) for epoch in epochs}) > 1


def test_the_parameter_average_starts_at_its_step_and_decays():
    """``ParameterAverage``: nothing before ``start``, the parameters at ``start``, then ``a <- d a + (1 - d) p``;
    ``apply`` writes the average into the parameters."""
    from types import SimpleNamespace

    from qcompiler.qat.train import ParameterAverage

    module = SimpleNamespace(parameters_=torch.nn.ParameterDict({"w": torch.nn.Parameter(torch.zeros(2))}))
    average = ParameterAverage(module, 0.5, start=2)
    for done, value in enumerate([9.0, 4.0, 8.0, 0.0], start=1):
        module.parameters_["w"].data.fill_(value)
        average.update(done)
    average.apply()  # 4, then 0.5 * 4 + 0.5 * 8 = 6, then 0.5 * 6 + 0.5 * 0 = 3
    assert torch.equal(module.parameters_["w"].data, torch.full((2,), 3.0))


def _onnxruntime_integers(path, feeds) -> dict[str, np.ndarray]:
    """Every QuantizeLinear output of the model as onnxruntime computes it (the outputs exposed)."""
    model = onnx.load(str(path))
    names = [n.output[0] for n in model.graph.node if n.op_type == "QuantizeLinear"]
    model.graph.output.extend(onnx.helper.make_empty_tensor_value_info(n) for n in names)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds), strict=True))


@pytest.mark.parametrize("lowering", [{}, {"weights": "int4", "activation_bits": 4}, {"weights": "ternary"},
                                      {"weights": "binary"}])
def test_deployed_equals_trained(tiny_cnn, tmp_path, lowering):
    """The integer activations of the torch forward that was trained and of onnxruntime running the written
    model: >= 99.9 % identical, the rest within one step."""
    from qcompiler.qat.graph import QuantizedModel

    fp32, int8, data = tiny_cnn
    out = tmp_path / "tuned.onnx"
    qcompiler.finetune(int8, out, teacher=fp32, data=data, steps=20, lr=1e-3, batch=8, **lowering)
    module = QuantizedModel(ir.load(out))
    same = total = 0
    for file in sorted(data.glob("*.npz")):
        feeds = dict(np.load(file))
        ours, theirs = module.recorded(feeds), _onnxruntime_integers(out, feeds)
        assert set(ours) <= set(theirs) and ours
        for name, q in ours.items():
            diff = np.abs(q.astype(np.int64) - theirs[name].astype(np.int64))
            assert diff.max() <= 1, name
            same += int((diff == 0).sum())
            total += diff.size
    assert same / total >= 0.999


def _tied_qdq_conv(path):
    """A QDQ Conv whose output step is twice ``s_x · s_w``: every odd accumulator lands exactly halfway between
    two output integers, where only the exact sum rounds (half to even) as onnxruntime's QLinearConv does."""
    rng = np.random.default_rng(3)
    s_x, s_w = np.float32(0.1), np.float32(0.03)
    init = onnx.numpy_helper.from_array
    inits = [init(rng.integers(-7, 8, (4, 8, 3, 3)).astype(np.int8), "w"), init(np.array(s_w), "w.s"),
             init(np.array(0, np.int8), "w.z"), init(np.array(s_x), "x.s"), init(np.array(128, np.uint8), "x.z"),
             init(np.array(np.float32(s_x * s_w) * 2), "y.s"), init(np.array(128, np.uint8), "y.z")]
    nodes = [onnx.helper.make_node("QuantizeLinear", ["x", "x.s", "x.z"], ["xq"]),
             onnx.helper.make_node("DequantizeLinear", ["xq", "x.s", "x.z"], ["xd"]),
             onnx.helper.make_node("DequantizeLinear", ["w", "w.s", "w.z"], ["wd"]),
             onnx.helper.make_node("Conv", ["xd", "wd"], ["c"], pads=[1, 1, 1, 1], name="conv"),
             onnx.helper.make_node("QuantizeLinear", ["c", "y.s", "y.z"], ["cq"]),
             onnx.helper.make_node("DequantizeLinear", ["cq", "y.s", "y.z"], ["y"])]
    model = float_model(nodes, "tied", ["n", 8, 6, 6], ["n", 4, 6, 6], inits)
    onnx.save(model, path)
    return {"x": (rng.integers(0, 256, (4, 8, 6, 6)).astype(np.float32) - 128) * s_x}


def test_layers_onnxruntime_runs_on_integers_are_computed_on_integers(tmp_path):
    """A Conv onnxruntime fuses into QLinearConv is one integer layer in torch (integer sums, one requantizing
    multiplier): its quantized outputs are onnxruntime's, ties included."""
    from qcompiler.qat.graph import QuantizedModel

    path = tmp_path / "tied.onnx"
    feeds = _tied_qdq_conv(path)
    module = QuantizedModel(ir.load(path))
    assert [step.op for step in module.interpreter.steps] == ["FakeQuantize", "FakeQuantizeWeight", "IntegerLayer"]
    ours, theirs = module.recorded(feeds)["cq"], _onnxruntime_integers(path, feeds)["cq"]
    assert np.array_equal(ours, theirs.astype(np.float32))


def test_an_attention_matmul_of_two_activations_is_an_integer_layer(tmp_path):
    """``DQ(a) @ DQ(b) -> Q`` (attention's scores) runs as QLinearMatMul in onnxruntime: in torch too, ties
    included (the output step is twice ``s_a · s_b``)."""
    from qcompiler.qat.graph import QuantizedModel

    s_a, s_b = np.float32(0.07), np.float32(0.045)
    init = onnx.numpy_helper.from_array
    inits = [init(np.array(s_a), "a.s"), init(np.array(128, np.uint8), "a.z"), init(np.array(s_b), "b.s"),
             init(np.array(128, np.uint8), "b.z"), init(np.array(np.float32(s_a * s_b) * 2), "y.s"),
             init(np.array(128, np.uint8), "y.z")]
    nodes = [onnx.helper.make_node("QuantizeLinear", ["x", "a.s", "a.z"], ["aq"]),
             onnx.helper.make_node("DequantizeLinear", ["aq", "a.s", "a.z"], ["ad"]),
             onnx.helper.make_node("Transpose", ["x"], ["xt"], perm=[0, 2, 1]),
             onnx.helper.make_node("QuantizeLinear", ["xt", "b.s", "b.z"], ["bq"]),
             onnx.helper.make_node("DequantizeLinear", ["bq", "b.s", "b.z"], ["bd"]),
             onnx.helper.make_node("MatMul", ["ad", "bd"], ["m"], name="scores"),
             onnx.helper.make_node("QuantizeLinear", ["m", "y.s", "y.z"], ["mq"]),
             onnx.helper.make_node("DequantizeLinear", ["mq", "y.s", "y.z"], ["y"])]
    path = tmp_path / "scores.onnx"
    onnx.save(float_model(nodes, "scores", ["n", 6, 5], ["n", 6, 6], inits), path)
    feeds = {"x": np.random.default_rng(5).normal(0, 1, (8, 6, 5)).astype(np.float32)}
    module = QuantizedModel(ir.load(path))
    assert [step.nodes[0].name for step in module.interpreter.steps if step.op == "IntegerLayer"] == ["scores"]
    ours, theirs = module.recorded(feeds)["mq"], _onnxruntime_integers(path, feeds)["mq"]
    assert np.array_equal(ours, theirs.astype(np.float32))


def test_a_softmax_onnxruntime_fuses_after_propagation_gives_its_integers(tmp_path):
    """``Softmax -> Reshape -> Q``: onnxruntime moves a Q/DQ pair before the Reshape and runs the Softmax as
    QLinearSoftmax (an exponential table, the output scale truncated to ``floor(1 / s_y)``, far from the float
    softmax requantized at this ``s_y``); the torch forward gives its integers."""
    from qcompiler.qat.graph import QuantizedModel

    init = onnx.numpy_helper.from_array
    inits = [init(np.array(0.05, np.float32), "x.s"), init(np.array(128, np.uint8), "x.z"),
             init(np.array(1 / 200.7, np.float32), "y.s"), init(np.array(0, np.uint8), "y.z"),
             init(np.array([0, 48], np.int64), "shape")]
    nodes = [onnx.helper.make_node("QuantizeLinear", ["x", "x.s", "x.z"], ["xq"]),
             onnx.helper.make_node("DequantizeLinear", ["xq", "x.s", "x.z"], ["xd"]),
             onnx.helper.make_node("Softmax", ["xd"], ["p"], axis=-1, name="softmax"),
             onnx.helper.make_node("Reshape", ["p", "shape"], ["r"]),
             onnx.helper.make_node("QuantizeLinear", ["r", "y.s", "y.z"], ["rq"]),
             onnx.helper.make_node("DequantizeLinear", ["rq", "y.s", "y.z"], ["y"])]
    path = tmp_path / "softmax.onnx"
    onnx.save(float_model(nodes, "softmax", ["n", 4, 12], ["n", 48], inits), path)
    feeds = {"x": np.random.default_rng(4).normal(0, 2, (16, 4, 12)).astype(np.float32)}
    module = QuantizedModel(ir.load(path))
    assert "ExactUnit" in [step.op for step in module.interpreter.steps]
    ours, theirs = module.recorded(feeds), _onnxruntime_integers(path, feeds)
    assert set(ours) == {"xq", "rq"}  # the pair onnxruntime inserts is not in the written model
    assert np.array_equal(ours["rq"], theirs["rq"].astype(np.float32))


def test_an_op_without_a_torch_kernel_is_named(tmp_path):
    from qcompiler.qat.graph import TorchInterpreter

    node = onnx.helper.make_node("Einsum", ["a", "a"], ["b"], equation="ij,ij->ij")
    graph = onnx.helper.make_graph([node], "g", [onnx.helper.make_tensor_value_info("a", onnx.TensorProto.FLOAT, [2, 2])],
                                   [onnx.helper.make_tensor_value_info("b", onnx.TensorProto.FLOAT, [2, 2])])
    model = ir.from_proto(onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)]))
    with pytest.raises(UserError, match="no torch kernel for Einsum"):
        TorchInterpreter(model)


def test_cli_finetune_and_its_user_errors(tiny_cnn, tmp_path, capsys):
    fp32, int8, data = tiny_cnn
    out = tmp_path / "cli.onnx"
    assert main(["finetune", str(int8), "--teacher", str(fp32), "--data", str(data), "-o", str(out), "--steps", "5",
                 "--batch", "8", "-q"]) == 0
    printed = capsys.readouterr().out
    assert "error before" in printed and f"wrote {out}" in printed
    assert main(["finetune", str(int8), "--teacher", str(fp32), "--data", str(tmp_path / "missing"), "-o",
                 str(tmp_path / "x.onnx"), "-q"]) != 0
    assert "no such file or directory" in capsys.readouterr().err
    assert main(["finetune", str(fp32), "--teacher", str(fp32), "--data", str(data), "-o", str(tmp_path / "y.onnx"),
                 "-q"]) != 0
    assert "finetune starts from a model qcompiler compiled" in capsys.readouterr().err


def test_importing_qcompiler_does_not_import_torch():
    code = "import sys, qcompiler, qcompiler.kernels, qcompiler.cli, qcompiler.qat; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == \
        "False"


def test_a_bias_gives_the_step_sizes_its_gradient_without_float32_cancellation(tiny_cnn):
    """``d(round(b / s) · s) / ds = round(b / s) - b / s`` (STE) for ``s = s_x · s_w``: two terms as large as the
    bias in integers that nearly cancel. The activation step size's gradient through a bias of some
    thousand integers equals the float64 formula, where float32 sums of the two terms miss it."""
    from qcompiler.qat.graph import QuantizedModel

    module = QuantizedModel(ir.load(tiny_cnn[1]))
    key, bias = next(iter(module.biases.items()))
    with torch.no_grad():  # a bias of a few thousand steps: the terms are thousands of times their difference
        module.parameters_[f"bias_{key}"].mul_(0).add_(module.bias_scale(key).float() * 3000.3)
    weights = torch.linspace(-1, 2, module.bias_scale(key).numel())
    (module.fake_bias(key) * weights).sum().backward()
    s_x = module.activation_scale(bias.activation).detach().double()
    s_w = module.weight_scale(bias.weight).detach().double().reshape(-1)
    b = module.parameters_[f"bias_{key}"].detach().double()
    expected = float((weights.double() * (torch.round(b / (s_x * s_w)) - b / (s_x * s_w)) * s_w).sum())
    got = float(module.parameters_[f"activation_scale_{bias.activation}"].grad)
    assert got == pytest.approx(expected, rel=1e-6, abs=1e-12)
