"""Iterative freezing of oscillating weights: which weights it tracks, that a weight flipping between two
integers freezes at the integer it mostly holds and stays there, that a weight moving one way does not
freeze, that its state resumes, and that ``finetune --freeze-oscillations`` writes frozen integers."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

import qcompiler  # noqa: E402
from qcompiler import ir  # noqa: E402
from qcompiler.errors import UserError  # noqa: E402
from qcompiler.qat.graph import QuantizedModel  # noqa: E402
from qcompiler.qat.lowbit import lower_precision  # noqa: E402
from qcompiler.qat.oscillation import OscillationFreezer  # noqa: E402


@pytest.fixture()
def int4_module(tiny_cnn):
    model = ir.load(tiny_cnn[1])
    assert lower_precision(model, "int4") == 1  # the 1x1 conv: the first and last layers keep 8 bits
    return QuantizedModel(model)


def _set_level(module, key, index, level):
    """Put weight ``key``'s element ``index`` at ``level`` steps (plus a small offset, off the boundary)."""
    weight, step = module.parameters_[f"weight_{key}"], module.weight_scale(key).detach().reshape(-1)
    channel = index[0] if step.numel() > 1 else 0
    with torch.no_grad():
        weight[index] = (level + 0.1) * step[channel]


def test_only_the_4_bit_weights_are_tracked(int4_module):
    freezer = OscillationFreezer(int4_module, 0.01, steps=100)
    assert [int4_module.weights[k].qmax for k in freezer.tracks] == [7]
    assert len(int4_module.weights) == 3
    assert freezer.threshold(0) == pytest.approx(0.1) and freezer.threshold(100) == pytest.approx(0.01)
    assert freezer.threshold(50) == pytest.approx(0.055)


def test_a_weight_flipping_between_two_integers_freezes_at_the_one_it_mostly_holds(int4_module):
    key = "1"
    flipper, climber = (0, 0, 0, 0), (1, 0, 0, 0)
    _set_level(int4_module, key, flipper, 2)
    _set_level(int4_module, key, climber, -7)
    freezer = OscillationFreezer(int4_module, 0.01, steps=300, momentum=0.05)
    assert list(freezer.tracks) == [key]
    pattern = [2, 2, 3]  # two steps at 2, one at 3: an oscillation on every change
    for step in range(1, 301):
        _set_level(int4_module, key, flipper, pattern[step % 3])
        _set_level(int4_module, key, climber, -7 + (step // 25))  # one way, a level every 25 steps
        freezer.update(step)
    track = freezer.tracks[key]
    assert bool(track.frozen[flipper]) and float(track.value[flipper]) == 2
    assert not bool(track.frozen[climber])
    assert 0 < freezer.frozen_share() < 0.5  # the flipper alone among the others at rest
    _set_level(int4_module, key, flipper, 5)  # the optimizer moves it: the next update holds it at 2
    freezer.update(301)
    assert int(freezer.integers(key)[flipper]) == 2


def test_the_state_resumes(int4_module):
    first = OscillationFreezer(int4_module, 0.01, steps=40, momentum=0.2)
    key = next(iter(first.tracks))
    for step in range(1, 21):
        _set_level(int4_module, key, (0, 0, 0, 0), step % 2)
        first.update(step)
    second = OscillationFreezer(int4_module, 0.01, steps=40, momentum=0.2)
    second.load_state_dict(first.state_dict())
    for step in range(21, 41):
        for freezer in (first, second):
            _set_level(int4_module, key, (0, 0, 0, 0), step % 2)
            freezer.update(step)
            assert torch.equal(freezer.integers(key), first.integers(key))
    assert all(torch.equal(getattr(first.tracks[key], f), getattr(second.tracks[key], f))
               for f in ("previous", "direction", "frequency", "mean", "frozen", "value"))
    assert bool(first.tracks[key].frozen[0, 0, 0, 0])


def test_finetune_tracks_the_4_bit_weights_and_refuses_a_frequency_outside_0_1(tiny_cnn, tmp_path):
    fp32, int8, data = tiny_cnn
    out, checkpoint = tmp_path / "frozen.onnx", tmp_path / "run.ckpt"
    result = qcompiler.finetune(int8, out, teacher=fp32, data=data, steps=8, lr=3e-2, batch=8, weights="int4",
                                freeze=0.05, checkpoint=checkpoint)
    assert result.steps_run == 8 and out.exists() and 0 <= result.frozen < 0.5
    state = torch.load(checkpoint, weights_only=False)["freezer"]
    assert list(state) == ["1"] and float(state["1"]["frequency"].max()) > 0  # the 1x1 conv's weights flipped
    with pytest.raises(UserError, match="--freeze-oscillations 1.5"):
        qcompiler.finetune(int8, tmp_path / "x.onnx", teacher=fp32, data=data, steps=2, freeze=1.5)
