"""Calibration data sources: every bad input names the file or feed, the input and the expectation."""

from __future__ import annotations

import gc
import json
import weakref
from pathlib import Path

import numpy as np
import pytest

from qcompiler.calibration import (CalibrationDataError, CalibrationSet, InputSpec, OneShotSourceWarning,
                                   check_calibration, open_calibration)
from qcompiler.errors import UserError

INPUTS = [InputSpec("x", np.dtype(np.float32), ("N", 3, 8, "W")), InputSpec("ids", np.dtype(np.int64), ("N", 4))]
REALMODELS = Path("/root/realmodels/data/calib_npz")


def good_feed(n=2, width=5):
    return {"x": np.zeros((n, 3, 8, width), np.float32), "ids": np.ones((n, 4), np.int64)}


def write_dir(directory: Path, feeds):
    directory.mkdir(exist_ok=True)
    for i, feed in enumerate(feeds):
        np.savez(directory / f"batch_{i:03d}.npz", **feed)
    return directory


def test_directory_of_npz_is_read_in_order_with_varying_dims(tmp_path):
    write_dir(tmp_path, [good_feed(width=w) for w in (5, 9, 7)])
    (tmp_path / "index.json").write_text("{}")  # other files are ignored
    data = open_calibration(tmp_path, INPUTS)
    assert len(data) == 3 and isinstance(data, CalibrationSet)
    assert [f["x"].shape[-1] for f in data] == [5, 9, 7]
    assert [f["x"].shape[-1] for f in data] == [5, 9, 7]  # re-iterable
    assert [where for where, _ in data.items()] == [str(tmp_path / f"batch_{i:03d}.npz") for i in range(3)]


def test_directory_holds_one_feed_at_a_time(tmp_path):
    write_dir(tmp_path, [good_feed() for _ in range(3)])
    iterator = iter(open_calibration(tmp_path, INPUTS))
    first = weakref.ref(next(iterator)["x"])
    second = next(iterator)
    gc.collect()
    assert first() is None and second["x"].shape == (2, 3, 8, 5)


def test_single_npz_list_dict_and_callable(tmp_path):
    np.savez(tmp_path / "one.npz", **good_feed())
    assert len(list(open_calibration(tmp_path / "one.npz", INPUTS))) == 1
    assert len(open_calibration([good_feed(), good_feed()], INPUTS)) == 2
    assert len(list(open_calibration(good_feed(), INPUTS))) == 1
    calls = []

    def feeds():
        calls.append(1)
        return (good_feed() for _ in range(3))

    data = open_calibration(feeds, INPUTS)
    assert len(list(data)) == 3 and len(list(data)) == 3 and len(calls) == 2  # a new iterator per pass
    with pytest.raises(TypeError, match="not known"):
        len(data)


def test_one_shot_iterator_is_replayed_and_warned_about():
    generator = (good_feed(width=w) for w in (5, 6))
    with pytest.warns(OneShotSourceWarning, match="can be read only once"):
        data = open_calibration(generator, INPUTS)
    assert [f["x"].shape[-1] for f in data] == [5, 6]
    assert [f["x"].shape[-1] for f in data] == [5, 6]  # replayed from memory
    again = open_calibration(generator, INPUTS)  # a later pass of the pipeline opens the same generator
    assert [f["x"].shape[-1] for f in again] == [5, 6]


def test_onnxruntime_calibration_data_reader():
    from onnxruntime.quantization import CalibrationDataReader

    class Rewinding(CalibrationDataReader):
        def __init__(self):
            self.rewind()

        def get_next(self):
            return next(self.iterator, None)

        def rewind(self):
            self.iterator = iter([good_feed(width=5), good_feed(width=6)])

    data = open_calibration(Rewinding(), INPUTS)
    assert [f["x"].shape[-1] for f in data] == [5, 6] and [f["x"].shape[-1] for f in data] == [5, 6]
    assert data.length is None  # CalibrationDataReader.__len__ raises NotImplementedError

    class OneShot(CalibrationDataReader):
        def __init__(self):
            bad = {"x": np.zeros((2, 3, 8, 5), np.float64), "ids": np.ones((2, 4), np.int64)}
            self.iterator = iter([good_feed(), bad])

        def get_next(self):
            return next(self.iterator, None)

    with pytest.warns(OneShotSourceWarning, match="OneShot without rewind"):
        data = open_calibration(OneShot(), INPUTS)
    with pytest.raises(CalibrationDataError, match=r"^OneShot feed #1: input 'x' has dtype float64, the model expects "
                                                   r"float32 \(convert with \.astype\(np\.float32\)\)$"):
        list(data)


@pytest.mark.parametrize("feed, message", [
    ({"x": np.zeros((2, 3, 8, 5), np.float32)}, "input 'ids' is missing (the model expects int64 (N, 4))"),
    ({**good_feed(), "extra": np.zeros(1)}, "unknown input(s) ['extra']; the model's inputs are ['ids', 'x']"),
    ({**good_feed(), "x": np.zeros((2, 3, 8, 5), np.float64)},
     "input 'x' has dtype float64, the model expects float32 (convert with .astype(np.float32))"),
    ({**good_feed(), "ids": np.ones((2, 4), np.int32)},
     "input 'ids' has dtype int32, the model expects int64 (convert with .astype(np.int64))"),
    ({**good_feed(), "x": np.zeros((2, 3, 9, 5), np.float32)},
     "input 'x' has shape (2, 3, 9, 5), the model expects (N, 3, 8, W)"),
    ({**good_feed(), "x": np.zeros((3, 8, 5), np.float32)},
     "input 'x' has shape (3, 8, 5), the model expects (N, 3, 8, W)"),
    ({**good_feed(), "ids": np.ones((3, 4), np.int64)},
     "input 'ids' has size 3 on axis 0 ('N') but input 'x' has size 2 on axis 0; the model expects them equal"),
    (good_feed(n=0),
     "input 'x' has no values (shape (0, 3, 8, 5), size 0 on axis 0); a calibration feed needs at least one row"),
    ({**good_feed(), "x": np.zeros((2, 3, 8, 0), np.float32)},
     "input 'x' has no values (shape (2, 3, 8, 0), size 0 on axis 3); a calibration feed needs at least one row"),
])
def test_bad_feed_in_a_file_names_file_input_and_expectation(tmp_path, feed, message):
    write_dir(tmp_path, [good_feed(), feed])
    data = open_calibration(tmp_path, INPUTS)
    with pytest.raises(CalibrationDataError) as error:
        list(data)
    assert str(error.value) == f"{tmp_path / 'batch_001.npz'}: {message}"
    assert isinstance(error.value, UserError)


def test_non_finite_values_are_counted_and_located(tmp_path):
    x = np.zeros((2, 3, 8, 5), np.float32)
    x[1, 2, 3, 4] = np.nan
    x[1, 2, 4, 0] = np.inf
    x[1, 0, 0, 0] = np.nan
    write_dir(tmp_path, [{**good_feed(), "x": x}])
    with pytest.raises(CalibrationDataError) as error:
        list(open_calibration(tmp_path, INPUTS))
    assert str(error.value) == (f"{tmp_path / 'batch_000.npz'}: input 'x' has 2 NaN and 1 Inf value(s) of 240 "
                                f"(first at index (1, 0, 0, 0)); calibration data must be finite")


def test_feed_number_names_feeds_of_a_list():
    feeds = [good_feed(), good_feed(), {**good_feed(), "x": np.zeros((2, 3, 8, 5), np.float16)}]
    with pytest.raises(CalibrationDataError, match=r"^feed #2: input 'x' has dtype float16"):
        list(open_calibration(feeds, INPUTS))
    with pytest.raises(CalibrationDataError, match=r"^feed #0: expected a dict of input name -> array, got ndarray"):
        list(open_calibration([np.zeros(3)], INPUTS))


def test_source_errors(tmp_path):
    with pytest.raises(CalibrationDataError, match="missing: no such calibration file or directory"):
        open_calibration(tmp_path / "missing", INPUTS)
    with pytest.raises(CalibrationDataError, match=r"no \.npz files in this directory \(it is empty\)"):
        open_calibration(tmp_path, INPUTS)
    np.save(tmp_path / "x.npy", np.zeros(3))
    with pytest.raises(CalibrationDataError, match=r"no \.npz files in this directory \(found: \.npy\); calibration "
                                                   r"data is one \.npz file per feed, keys = model input names"):
        open_calibration(tmp_path, INPUTS)
    with pytest.raises(CalibrationDataError, match=r"x\.npy: expected a directory of \.npz files or one \.npz file"):
        open_calibration(tmp_path / "x.npy", INPUTS)
    (tmp_path / "bad.npz").write_text("not a zip")
    with pytest.raises(CalibrationDataError) as error:
        list(open_calibration(tmp_path, INPUTS))
    assert str(error.value) == (f"{tmp_path / 'bad.npz'}: not a .npz archive (it starts with b'not ', not a zip "
                                f"header); write feeds with np.savez(path, input_name=array)")
    (tmp_path / "bad.npz").write_bytes(b"")
    with pytest.raises(CalibrationDataError, match=r"bad\.npz: not a \.npz archive \(the file is empty\)"):
        list(open_calibration(tmp_path / "bad.npz", INPUTS))
    np.save(tmp_path / "array.npy", np.zeros(3))
    (tmp_path / "array.npy").rename(tmp_path / "array.npz")
    with pytest.raises(CalibrationDataError, match=r"array\.npz: not a \.npz archive \(it is a single \.npy array"):
        list(open_calibration(tmp_path / "array.npz", INPUTS))
    with pytest.raises(CalibrationDataError, match="empty collection"):
        open_calibration([], INPUTS)
    with pytest.raises(CalibrationDataError, match="no calibration data"):
        list(open_calibration(lambda: iter([]), INPUTS))
    with pytest.raises(CalibrationDataError, match=r"unsupported calibration data of type int"):
        open_calibration(3, INPUTS)
    with pytest.raises(CalibrationDataError, match=r"returned dict; expected an iterator of feed dicts"):
        list(open_calibration(lambda: good_feed(), INPUTS))


def test_check_calibration_reads_the_first_feed_now(tmp_path):
    half = [InputSpec("x", np.dtype(np.float16), ("N", 8))]
    write_dir(tmp_path / "calib", [{"x": np.zeros((2, 8), np.float32)}, {"x": np.zeros((2, 8), np.float32)}])
    data = open_calibration(tmp_path / "calib", half)  # lazy: nothing read yet
    assert isinstance(data, CalibrationSet)
    with pytest.raises(CalibrationDataError) as error:
        check_calibration(tmp_path / "calib", half)
    assert str(error.value) == (f"{tmp_path / 'calib' / 'batch_000.npz'}: input 'x' has dtype float32, the model "
                                f"expects float16 (convert with .astype(np.float16))")
    with pytest.raises(CalibrationDataError, match="no calibration data"):
        check_calibration(lambda: iter([]), half)
    feeds = [{"x": np.full((2, 8), i, np.float16)} for i in range(3)]
    with pytest.warns(OneShotSourceWarning):
        checked = check_calibration(iter(feeds), half)
    assert [float(f["x"][0, 0]) for f in checked] == [0.0, 1.0, 2.0]  # the feed checked is not lost


@pytest.mark.skipif(not (REALMODELS / "index.json").exists(), reason="realmodels calibration data not present")
@pytest.mark.parametrize("model", ["ocr_rec_ppocrv4", "minilm_l6"])
def test_realmodels_layout(model):
    index = json.loads((REALMODELS / "index.json").read_text())[model]
    specs = [InputSpec(name, np.dtype(spec["dtype"]), tuple(d if d is not None else f"d{i}" if model == "minilm_l6"
                                                            else None for i, d in enumerate(spec["shape"])))
             for name, spec in index["inputs"].items()]
    data = open_calibration(REALMODELS / model, specs)
    assert len(data) == index["files"]
    shapes = [feed[specs[0].name].shape for feed in data]
    assert sum(shape[0] for shape in shapes) == index["samples"]
    assert len({shape[-1] for shape in shapes}) > 1  # the dynamic last dimension varies
