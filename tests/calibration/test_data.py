"""Calibration data sources: every bad input names the file or feed, the input and the expectation."""

from __future__ import annotations

import numpy as np
import pytest

from qcompiler.calibration import CalibrationDataError, InputSpec, open_calibration

INPUTS = [InputSpec("x", np.dtype(np.float32), ("N", 3, 8, "W")), InputSpec("ids", np.dtype(np.int64), ("N", 4))]


def good_feed(n=2, width=5):
    return {"x": np.zeros((n, 3, 8, width), np.float32), "ids": np.ones((n, 4), np.int64)}


def write_dir(tmp_path, feeds):
    for i, feed in enumerate(feeds):
        np.savez(tmp_path / f"batch_{i:03d}.npz", **feed)
    return tmp_path


def test_directory_of_npz_is_read_in_order_with_varying_dims(tmp_path):
    write_dir(tmp_path, [good_feed(width=w) for w in (5, 9, 7)])
    data = open_calibration(tmp_path, INPUTS)
    assert len(data) == 3
    assert [f["x"].shape[-1] for f in data] == [5, 9, 7]
    assert [f["x"].shape[-1] for f in data] == [5, 9, 7]  # re-iterable


def test_list_single_npz_and_reader(tmp_path):
    assert len(list(open_calibration([good_feed(), good_feed()], INPUTS))) == 2
    np.savez(tmp_path / "one.npz", **good_feed())
    assert len(list(open_calibration(tmp_path / "one.npz", INPUTS))) == 1

    class Reader:  # onnxruntime's CalibrationDataReader protocol
        def __init__(self):
            self.items = [good_feed(), good_feed()]
            self.rewind()

        def get_next(self):
            return next(self.iterator, None)

        def rewind(self):
            self.iterator = iter(self.items)

    data = open_calibration(Reader(), INPUTS)
    assert len(list(data)) == 2 and len(list(data)) == 2


@pytest.mark.parametrize("feed, pattern", [
    ({"x": np.zeros((2, 3, 8, 5), np.float32)}, r"input 'ids' is missing \(the model expects int64 \(N, 4\)\)"),
    ({**good_feed(), "extra": np.zeros(1)}, r"unknown input\(s\) \['extra'\]"),
    ({**good_feed(), "x": np.zeros((2, 3, 8, 5), np.float64)}, r"input 'x' has dtype float64, the model expects float32"),
    ({**good_feed(), "x": np.zeros((2, 3, 9, 5), np.float32)}, r"input 'x' has shape \(2, 3, 9, 5\), the model expects \(N, 3, 8, W\)"),
    ({**good_feed(), "x": np.zeros((3, 8, 5), np.float32)}, r"input 'x' has shape \(3, 8, 5\)"),
    ({**good_feed(), "x": np.full((2, 3, 8, 5), np.nan, np.float32)}, r"input 'x' has 240 NaN/Inf value\(s\)"),
])
def test_bad_feed_in_a_file_names_file_and_input(tmp_path, feed, pattern):
    write_dir(tmp_path, [good_feed(), feed])
    with pytest.raises(CalibrationDataError, match=r"batch_001\.npz: " + pattern):
        list(open_calibration(tmp_path, INPUTS))


def test_source_errors(tmp_path):
    with pytest.raises(CalibrationDataError, match="no such calibration file or directory"):
        open_calibration(tmp_path / "missing", INPUTS)
    with pytest.raises(CalibrationDataError, match=r"no \.npz files in this directory"):
        open_calibration(tmp_path, INPUTS)
    (tmp_path / "bad.npz").write_text("not a zip")
    with pytest.raises(CalibrationDataError, match=r"bad\.npz: cannot read as \.npz"):
        list(open_calibration(tmp_path, INPUTS))
    with pytest.raises(CalibrationDataError, match="no calibration data"):
        list(open_calibration([], INPUTS))
    with pytest.raises(CalibrationDataError, match="one-shot iterator"):
        open_calibration(iter([good_feed()]), INPUTS)
