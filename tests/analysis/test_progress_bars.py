"""``qcompiler analyze`` shows tqdm bars for its long steps (calibration, evaluations, per-layer
evaluations, kernel check, distributions), each counting to its total; ``-q`` shows nothing."""

from __future__ import annotations

import importlib

import pytest

import qcompiler.analysis
from qcompiler import progress
from qcompiler.cli import main

ANALYZE = ["--target", "x86-vnni", "--calibration", "minmax"]
collect_module = importlib.import_module("qcompiler.calibration.collect")


class Recorder:
    """Stands in for ``progress.bar``: records each bar's description, total, final count and whether
    bars were enabled where it was made."""

    def __init__(self):
        self.bars: list[dict] = []

    def __call__(self, total, desc, unit="it", **kwargs):
        record = {"desc": desc, "total": total, "n": 0, "enabled": progress.enabled()}
        self.bars.append(record)
        return _FakeBar(record)


class _FakeBar:
    def __init__(self, record):
        self.record, self.n, self.total = record, 0, record["total"]

    def update(self, count=1):
        self.n += count
        self.record["n"], self.record["total"] = self.n, self.total

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_every_long_step_has_a_bar_that_counts_to_its_total(cnn_path, calib_dir, capsys, monkeypatch):
    recorder = Recorder()
    monkeypatch.setattr(qcompiler.analysis, "bar", recorder)
    monkeypatch.setattr(collect_module, "bar", recorder)
    assert main(["analyze", str(cnn_path), "--calib", str(calib_dir), *ANALYZE]) == 0
    capsys.readouterr()
    descriptions = {record["desc"] for record in recorder.bars}
    assert descriptions == {"calibration", "evaluations", "per-layer evaluations", "kernel check", "distributions"}
    for record in recorder.bars:
        assert record["enabled"], record
        assert record["n"] == record["total"], record  # each ends at its total: its estimate of the time left held
    per_layer = next(r for r in recorder.bars if r["desc"] == "per-layer evaluations")
    assert per_layer["total"] == 4 * 4 + 1  # four layers: two Conv, GlobalAveragePool, Gemm


@pytest.fixture
def no_delay(monkeypatch):
    monkeypatch.setattr(progress, "DELAY", 0.0)
    monkeypatch.setenv("COLUMNS", "100")


def test_bars_on_stderr_and_nothing_with_q(cnn_path, calib_dir, capsys, no_delay):
    assert main(["analyze", str(cnn_path), "--calib", str(calib_dir), *ANALYZE]) == 0
    err = capsys.readouterr().err
    assert "analyze: per-layer sensitivity" in err
    assert "per-layer evaluations:" in err and "/17 [" in err and "config/s" in err  # count, time left, rate
    assert "distributions:" in err and "calibration:" in err
    assert main(["analyze", str(cnn_path), "--calib", str(calib_dir), *ANALYZE, "-q"]) == 0
    assert capsys.readouterr().err == ""
