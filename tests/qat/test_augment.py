"""finetune --crop: random windows along named axes, labelled anew by the teacher on every step."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper
import pytest

from qcompiler.errors import UserError
from qcompiler.qat.augment import MIN_FRACTION, crop, parse_axes



def test_axes_are_checked_against_the_inputs_and_their_shapes():
    shapes = {"x": ("n", 3, 48, "w"), "ids": ("batch", None), "free": None}
    assert parse_axes(["x:3", "ids:-1", "x:3", "free:2"], shapes) == (("x", 3), ("ids", 1), ("free", 2))
    for spec, message in [("y:1", "one of the model's inputs"), ("x:w", "not an integer"),
                          ("x:0", "axis 0 is the batch"), ("x:4", "must be 1..3"), ("ids:-2", "must be 1..1"),
                          ("free:0", "no known rank"), ("x:2", "fixes axis 2 of input x to 48")]:
        with pytest.raises(UserError, match=message):
            parse_axes([spec], shapes)


def test_one_window_cuts_every_named_axis_and_keeps_the_rest():
    ids = np.arange(40).reshape(2, 20)
    feeds = {"ids": ids, "mask": ids + 100, "other": np.ones((2, 3))}
    rng = np.random.default_rng(0)
    sizes = set()
    for _ in range(200):
        out = crop(feeds, (("ids", 1), ("mask", 1)), rng)
        size = out["ids"].shape[1]
        start = int(out["ids"][0, 0])
        assert MIN_FRACTION * 20 <= size <= 20 and out["ids"].shape == out["mask"].shape
        np.testing.assert_array_equal(out["ids"], ids[:, start:start + size])  # a contiguous window
        np.testing.assert_array_equal(out["mask"], out["ids"] + 100)  # the same window on both
        assert out["other"] is feeds["other"]
        sizes.add(size)
    assert sizes == set(range(10, 21))  # every length from half to all of it
    assert crop(feeds, (("ids", 1),), np.random.default_rng(3))["ids"].tolist() == \
        crop(feeds, (("ids", 1),), np.random.default_rng(3))["ids"].tolist()  # seeded: reproducible


def test_axes_of_different_lengths_are_refused():
    with pytest.raises(UserError, match="one length in each data file, not a:1 = 4, b:1 = 5"):
        crop({"a": np.zeros((1, 4)), "b": np.zeros((1, 5))}, (("a", 1), ("b", 1)), np.random.default_rng(0))


def test_finetune_labels_each_window_with_the_teacher_and_resumes_exactly(line_model, tmp_path, monkeypatch):
    pytest.importorskip("torch")
    import qcompiler
    from qcompiler.qat import teacher as teacher_module

    fp32, int8, data = line_model

    seen = []
    label = teacher_module.Teacher.label

    def spy(self, feeds, extras):
        batch = label(self, feeds, extras)
        seen.append((feeds["x"].shape[3], batch.teacher[0].shape[1]))
        return batch

    monkeypatch.setattr(teacher_module.Teacher, "label", spy)
    whole = tmp_path / "whole.onnx"
    qcompiler.finetune(int8, whole, teacher=fp32, data=data, steps=8, lr=1e-3, batch=2, crop=["x:3"])
    windows = seen  # the data files are labelled as they are drawn: one window a step
    assert len(windows) == 8 and all(w == t for w, t in windows)  # the teacher saw each window
    assert len({w for w, _ in windows}) > 2 and all(8 <= w <= 24 for w, _ in windows)

    class Interrupted(Exception):
        pass

    def interrupt(step, loss):
        if step == 5:
            raise Interrupted

    checkpoint, resumed = tmp_path / "run.ckpt", tmp_path / "resumed.onnx"
    with pytest.raises(Interrupted):
        qcompiler.finetune(int8, resumed, teacher=fp32, data=data, steps=8, lr=1e-3, batch=2, crop=["x:3"],
                           checkpoint=checkpoint, checkpoint_every=1, on_step=interrupt)
    qcompiler.finetune(int8, resumed, teacher=fp32, data=data, steps=8, lr=1e-3, batch=2, crop=["x:3"],
                       checkpoint=checkpoint, checkpoint_every=1)
    a, b = onnx.load(str(whole)).graph.initializer, onnx.load(str(resumed)).graph.initializer
    assert all(np.array_equal(numpy_helper.to_array(x), numpy_helper.to_array(y)) for x, y in zip(a, b, strict=True))
    with pytest.raises(UserError, match="belongs to another model or other settings"):
        qcompiler.finetune(int8, tmp_path / "other.onnx", teacher=fp32, data=data, steps=8, lr=1e-3, batch=2,
                           checkpoint=checkpoint)  # the same run without --crop is another run


def test_cli_crop_logs_progress_off_a_terminal_and_names_a_bad_axis(line_model, tmp_path, capsys):
    pytest.importorskip("torch")
    from qcompiler.cli import main

    fp32, int8, data = line_model
    args = ["finetune", str(int8), "--teacher", str(fp32), "--data", str(data), "--steps", "4", "--batch", "2"]
    assert main(args + ["-o", str(tmp_path / "a.onnx"), "--crop", "x:3"]) == 0
    assert "finetune: step 4/4, loss" in capsys.readouterr().err  # a log's progress: a line every steps/20 steps
    assert main(args + ["-o", str(tmp_path / "b.onnx"), "--crop", "x:1"]) == 2
    assert "--crop x:1: the model fixes axis 1 of input x to 1" in capsys.readouterr().err
    assert not (tmp_path / "b.onnx").exists()


def test_a_window_the_teacher_refuses_is_a_user_error(line_model, tmp_path):
    from qcompiler.qat.teacher import Teacher

    fp32, _, _ = line_model
    with pytest.raises(UserError, match=r"--teacher .*line.onnx: onnxruntime refused the feeds \(x \[1, 1, 3, 8\]\)"):
        Teacher(fp32, ["x"], 1).label({"x": np.zeros((1, 1, 3, 8), np.float32)}, {})


def test_the_summary_reads_at_most_summary_files_evenly_spaced(line_model, tmp_path, monkeypatch):
    pytest.importorskip("torch")
    import qcompiler
    import qcompiler.qat as qat
    from qcompiler.qat import teacher as teacher_module

    fp32, int8, data = line_model
    widths = []
    outputs = teacher_module.Teacher.outputs

    def spy(self, feeds):
        widths.append(feeds["x"].shape[3])
        return outputs(self, feeds)

    monkeypatch.setattr(teacher_module.Teacher, "outputs", spy)
    monkeypatch.setattr(qat, "SUMMARY_FILES", 2)
    result = qcompiler.finetune(int8, tmp_path / "out.onnx", teacher=fp32, data=data, steps=2, lr=1e-3, batch=2)
    assert widths[-2:] == [16, 20] and len(widths) == 4  # two steps, then the first and the third of three files
    assert result.outputs[0].error_after >= 0
