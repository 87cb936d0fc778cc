"""finetune --ctc: sequence-level distillation of a CTC output against the text the teacher reads."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import qcompiler  # noqa: E402
from qcompiler.cli import main  # noqa: E402
from qcompiler.errors import UserError  # noqa: E402
from qcompiler.qat.sequence import ctc_distillation, greedy_texts, parse_ctc  # noqa: E402


def _one_hot(classes, n=4, sharp=8.0) -> np.ndarray:
    logits = np.eye(n, dtype=np.float32)[classes] * sharp
    e = np.exp(logits)
    return e / e.sum(-1, keepdims=True)


def test_greedy_reading_merges_repeats_and_drops_blanks():
    rows = np.stack([_one_hot([0, 1, 1, 0, 2, 2, 2, 0, 0, 1]), _one_hot([3, 0, 3, 3, 0, 0, 0, 0, 0, 0])])
    assert [t.tolist() for t in greedy_texts(rows, blank=0)] == [[1, 2, 1], [3, 3]]
    assert [t.tolist() for t in greedy_texts(rows, blank=3)] == [[0, 1, 0, 2, 0, 1], [0, 0]]


def test_the_loss_is_low_where_the_student_reads_the_teachers_text_and_has_a_gradient():
    teacher = _one_hot([[0, 1, 1, 0, 2, 0], [2, 2, 0, 3, 3, 0]])
    loss = ctc_distillation("y")
    extras = {"teacher:y": teacher}
    same = torch.tensor(teacher, requires_grad=True)
    other = torch.tensor(_one_hot([[3, 3, 0, 1, 0, 0], [1, 0, 1, 0, 1, 0]]), requires_grad=True)
    low, high = loss({"y": same}, extras), loss({"y": other}, extras)
    assert low.item() < 0.1 < high.item()
    high.backward()
    assert other.grad is not None and other.grad.abs().sum() > 0


def test_ctc_names_an_output_of_the_model():
    assert parse_ctc("y", ["y"]) == ("y", 0) and parse_ctc("y:5", ["y"]) == ("y", 5)
    assert parse_ctc("a:b", ["a:b"]) == ("a:b", 0)
    with pytest.raises(UserError, match="no output 'z'; its outputs are y"):
        parse_ctc("z", ["y"])
    with pytest.raises(UserError, match=r"shape \[2, 4\]; CTC reads \[batch, positions, classes\]"):
        ctc_distillation("y")({"y": torch.zeros(2, 4)}, {"teacher:y": np.zeros((2, 4))})


def test_finetune_with_ctc_learns_the_teachers_reading(line_model, tmp_path, capsys):
    fp32, int8, data = line_model
    result = qcompiler.finetune(int8, tmp_path / "ctc.onnx", teacher=fp32, data=data, steps=4, batch=2, ctc="y")
    assert len(result.losses) == 4 and all(np.isfinite(result.losses))
    assert main(["finetune", str(int8), "-o", str(tmp_path / "bad.onnx"), "--teacher", str(fp32), "--data", str(data),
                 "--steps", "2", "--ctc", "probabilities", "-q"]) == 2
    assert "--ctc probabilities: the model has no output 'probabilities'; its outputs are y" in capsys.readouterr().err
    assert not (tmp_path / "bad.onnx").exists()
