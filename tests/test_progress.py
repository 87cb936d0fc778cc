"""Progress bars (qcompiler.progress, tqdm): shown for long work where the user asked for progress, with
a count and the time left; nothing with ``-q``, from the library, or for work shorter than the delay."""

from __future__ import annotations

import io

import numpy as np
import onnx
import pytest

from qcompiler import ir, progress
from qcompiler.calibration import MinMaxObserver, collect
from qcompiler.instruments import Progress
from qcompiler.pass_manager import PassManager
from qcompiler.passes import FoldConstants, UpgradeOpset

MODEL = """
<ir_version: 8, opset_import: ["" : 13]>
g (float[N,4] x) => (float[N,4] y) <float[4] a = {1, 2, 3, 4}> {
  b = Add(a, a)
  y = Mul(x, b)
}"""


class Terminal(io.StringIO):
    """A stream that says it is a terminal, 100 columns wide."""

    def isatty(self) -> bool:
        return True


@pytest.fixture
def no_delay(monkeypatch):
    monkeypatch.setattr(progress, "DELAY", 0.0)
    monkeypatch.setenv("COLUMNS", "100")


def test_collect_shows_a_bar_only_where_enabled(capsys, no_delay):
    proto = onnx.parser.parse_model(MODEL)
    feeds = [{"x": np.ones((2, 4), np.float32)} for _ in range(3)]
    collect(proto, ["y"], feeds, lambda name: MinMaxObserver())
    assert capsys.readouterr().err == ""  # a library call prints nothing
    with progress.bars():
        collect(proto, ["y"], feeds, lambda name: MinMaxObserver())
    err = capsys.readouterr().err
    assert "calibration:" in err and "/3 [" in err and "feed/s" in err


def test_short_work_shows_no_bar(capsys):
    with progress.bars():
        with progress.bar(5, "short") as step:
            for _ in range(5):
                step.update(1)
    assert capsys.readouterr().err == ""  # under DELAY seconds


def test_progress_instrument_lines_off_a_terminal_are_unchanged():
    stream = io.StringIO()
    model = ir.from_proto(onnx.parser.parse_model(MODEL))
    PassManager([UpgradeOpset(), FoldConstants()], instruments=[Progress(2, stream)])(model)
    lines = stream.getvalue().splitlines()
    assert [line.split(" ... ")[0] for line in lines] == ["[1/2] upgrade-opset", "[2/2] fold-constants"]
    assert lines[1].endswith("s, changed, 1 nodes") and "\r" not in stream.getvalue()


def test_progress_instrument_on_a_terminal_has_a_bar_with_the_time_left(no_delay):
    stream = Terminal()
    model = ir.from_proto(onnx.parser.parse_model(MODEL))
    seen = []

    class Probe(UpgradeOpset):
        def call(self, model):
            seen.append(progress.enabled())  # bars of loops inside the pass are enabled
            return super().call(model)

    PassManager([Probe(), FoldConstants()], instruments=[Progress(2, stream)])(model)
    text = stream.getvalue()
    assert seen == [True] and not progress.enabled()
    assert "[1/2] upgrade-opset:" in text and "0/2 [" in text and "pass/s" in text  # count, elapsed<left, rate
    finished = [part for part in text.replace("\r", "\n").splitlines() if " ... " in part]
    assert [line.split(" ... ")[0] for line in finished] == ["[1/2] upgrade-opset", "[2/2] fold-constants"]


def test_progress_instrument_close_after_a_failing_pass_clears_the_bar(no_delay):
    stream = Terminal()
    model = ir.from_proto(onnx.parser.parse_model(MODEL))

    class Broken(UpgradeOpset):
        def call(self, model):
            raise RuntimeError("boom")

    instrument = Progress(2, stream)
    with pytest.raises(Exception, match="boom"):
        PassManager([Broken(), FoldConstants()], instruments=[instrument])(model)
    assert progress.enabled()  # the failed pass never reached after()
    instrument.close()
    assert not progress.enabled()
    assert stream.getvalue().endswith("\r")  # the bar's line is cleared: an error message starts a clean line
