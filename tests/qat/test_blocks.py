"""Block reconstruction (``qcompiler finetune --blocks N``) on the small real CNN: where the blocks end, that
no gradient crosses a block's end, and a run that reconstructs blocks end to end."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import qcompiler  # noqa: E402
from qcompiler import ir  # noqa: E402
from qcompiler.cli import main  # noqa: E402
from qcompiler.errors import UserError  # noqa: E402
from qcompiler.qat.blocks import block_ends, block_loss, cut_into_blocks, rescaled  # noqa: E402
from qcompiler.qat.graph import QuantizedModel  # noqa: E402
from qcompiler.qat.teacher import Teacher  # noqa: E402
from qcompiler.qat.train import distillation_loss  # noqa: E402



def _weight_read_by(module: QuantizedModel, layer: str) -> torch.nn.Parameter:
    node = next(n for n in module.model.graph if n.name == layer)
    key = next(k for k, q in module.weights.items() if q.output == node.inputs[1].name)
    return module.parameters_[f"weight_{key}"]


def _teacher_values(fp32, tmp_path) -> set[str]:
    canonical = qcompiler.compile(str(fp32), str(tmp_path / "canonical.onnx"), pipeline="canonicalize")
    return {v.name for v in canonical.graph.values()}


def test_blocks_end_after_enough_layers_on_values_the_teacher_computes(tiny_cnn, tmp_path):
    fp32, int8, _ = tiny_cnn
    module = QuantizedModel(ir.load(int8))
    names = _teacher_values(fp32, tmp_path)
    # conv's output (its Relu absorbed: quantized with the Relu's range) and mix's; not the input
    assert block_ends(module, names, 1)[:2] == ["c", "m"]
    assert block_ends(module, names, 2)[0] == "m"
    assert "c" not in block_ends(module, names - {"c"}, 1)  # only where the teacher has the tensor


def test_no_gradient_crosses_the_end_of_a_block(tiny_cnn):
    _, int8, data = tiny_cnn
    module = QuantizedModel(ir.load(int8))
    module.cuts = frozenset({"c"})
    feeds = {"x": np.load(data / "batch_0.npz")["x"][:4]}
    outputs = module(feeds)
    distillation_loss([outputs["y"]], [np.zeros((4, 5), np.float32) + 1]).backward()
    first, second = _weight_read_by(module, "conv"), _weight_read_by(module, "mix")
    assert first.grad is None or not first.grad.any()  # the outputs' loss stops at the cut
    assert second.grad is not None and second.grad.any()
    module.zero_grad()
    first.grad = None
    outputs = module(feeds)
    q, low, high = module.taps["c"]
    assert float(low) == 0.0 and float(high) > 0  # the absorbed Relu: the range starts at 0
    block_loss(module, {"teacher:c": np.ones(q.shape, np.float32)}).backward()
    assert first.grad is not None and first.grad.any()  # the first block learns from its own end


def test_finetune_reconstructs_blocks_and_the_cli_names_them(tiny_cnn, tmp_path, capsys):
    fp32, int8, data = tiny_cnn
    out = tmp_path / "blocks.onnx"
    result = qcompiler.finetune(int8, out, teacher=fp32, data=data, steps=30, lr=1e-4, batch=8, weights="int4",
                                blocks=1)
    assert result.block_ends[:2] == ["c", "m"]
    assert result.outputs[0].error_after < result.outputs[0].error_before
    assert main(["finetune", str(int8), "-o", str(tmp_path / "cli.onnx"), "--teacher", str(fp32), "--data", str(data),
                 "--steps", "2", "--blocks", "1", "-q"]) == 0
    assert "block reconstruction: " in capsys.readouterr().out
    module = QuantizedModel(ir.load(int8))
    with pytest.raises(UserError, match="at least one layer"):
        cut_into_blocks(module, Teacher(fp32, ["x"], 1), [], 0)


def test_an_end_where_the_teacher_tensor_is_rescaled_per_channel_is_found():
    """Cross-layer equalization and SmoothQuant rescale a tensor per channel under its name: against such a
    teacher tensor a block would learn the wrong thing. Rounding errors, even large ones, are not a rescaling."""
    rng = np.random.default_rng(0)
    t = rng.standard_normal((8, 16, 5, 5)).astype(np.float32)
    factors = np.exp(rng.uniform(-1.2, 1.2, 16)).astype(np.float32)  # equalization-like, 0.3x..3.3x
    assert rescaled(t * factors[None, :, None, None] + 0.01 * rng.standard_normal(t.shape), t)
    assert rescaled(np.moveaxis(np.moveaxis(t, 1, -1) * factors, -1, 1), t)
    tokens = rng.standard_normal((2, 7, 16)).astype(np.float32)  # SmoothQuant: the hidden (last) axis
    assert rescaled(tokens / factors, tokens)
    assert not rescaled(t + 0.7 * rng.standard_normal(t.shape), t)  # noise: no factor per channel explains it
    assert not rescaled(t * (1 + 0.05 * rng.standard_normal(16))[None, :, None, None], t)  # 4-bit gain errors
