"""Calibration data: where feeds come from, and checking each one against the model's inputs.

A :class:`CalibrationSet` is a re-iterable source of feed dicts ``{input name: array}``. Sources:

* a directory of ``.npz`` files (sorted by name), one batch per file, keys = input names (the layout
  the realmodels kit writes under ``data/calib_npz/<model>/``);
* one ``.npz`` file;
* a list (or any re-iterable) of feed dicts, or a zero-argument callable returning an iterator;
* an onnxruntime ``CalibrationDataReader`` (``get_next()`` until None; ``rewind()`` when it has one).

Files are read one at a time, so memory holds one feed. Every feed is checked as it is read: every
input present, no unknown key, the exact dtype, the rank and every static dimension, finite values.
Problems raise :class:`CalibrationDataError` naming the file or feed number, the input, what it is
and what the model expects.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import UserError


class CalibrationDataError(UserError):
    """Calibration data that does not fit the model, or cannot be read."""


@dataclass(frozen=True)
class InputSpec:
    """A model input as a feed must provide it: name, numpy dtype, shape (int, symbol or None).

    A negative dimension (Paddle exports write -1) counts as dynamic, like a symbol.
    """

    name: str
    dtype: np.dtype
    shape: tuple[int | str | None, ...] | None

    def describe_shape(self) -> str:
        if self.shape is None:
            return "any shape"
        return "(" + ", ".join("?" if d is None or (isinstance(d, int) and d < 0) else str(d)
                               for d in self.shape) + ")"


def check_feed(feed: Any, inputs: list[InputSpec], where: str) -> dict[str, np.ndarray]:
    """Validate one feed; returns it as a dict of arrays."""
    if not isinstance(feed, dict):
        raise CalibrationDataError(f"{where}: expected a dict of input name -> array, got {type(feed).__name__}")
    expected = {spec.name for spec in inputs}
    unknown = sorted(set(feed) - expected)
    if unknown:
        raise CalibrationDataError(f"{where}: unknown input(s) {unknown}; the model's inputs are {sorted(expected)}")
    arrays = {}
    for spec in inputs:
        if spec.name not in feed:
            raise CalibrationDataError(f"{where}: input {spec.name!r} is missing (the model expects "
                                       f"{np.dtype(spec.dtype).name} {spec.describe_shape()})")
        array = np.asarray(feed[spec.name])
        if array.dtype != np.dtype(spec.dtype):
            raise CalibrationDataError(f"{where}: input {spec.name!r} has dtype {array.dtype.name}, "
                                       f"the model expects {np.dtype(spec.dtype).name}")
        if spec.shape is not None:
            mismatch = len(spec.shape) != array.ndim or any(
                isinstance(d, int) and d >= 0 and d != n for d, n in zip(spec.shape, array.shape))
            if mismatch:
                raise CalibrationDataError(f"{where}: input {spec.name!r} has shape {tuple(array.shape)}, "
                                           f"the model expects {spec.describe_shape()}")
        if array.dtype.kind == "f" and not np.isfinite(array).all():
            bad = int(array.size - np.isfinite(array).sum())
            raise CalibrationDataError(f"{where}: input {spec.name!r} has {bad} NaN/Inf value(s)")
        arrays[spec.name] = array
    return arrays


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as data:
            return {key: data[key] for key in data.files}
    except Exception as exc:
        raise CalibrationDataError(f"{path}: cannot read as .npz ({type(exc).__name__}: {exc})") from None


class CalibrationSet:
    """A re-iterable, validated source of feeds (see the module docstring)."""

    def __init__(self, make_iterator: Callable[[], Iterator[tuple[str, Any]]], inputs: list[InputSpec],
                 length: int | None, description: str):
        self._make_iterator = make_iterator
        self.inputs = inputs
        self.length = length
        self.description = description

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        count = 0
        for where, feed in self._make_iterator():
            count += 1
            yield check_feed(feed, self.inputs, where)
        if count == 0:
            raise CalibrationDataError(f"{self.description}: no calibration data (no feed was found)")

    def __len__(self) -> int:
        if self.length is None:
            raise TypeError("this calibration source does not know its length")
        return self.length


def open_calibration(source: Any, inputs: list[InputSpec]) -> CalibrationSet:
    """A :class:`CalibrationSet` over ``source`` for a model with these inputs."""
    if isinstance(source, CalibrationSet):
        return CalibrationSet(source._make_iterator, inputs, source.length, source.description)
    if isinstance(source, (str, os.PathLike)):
        return _from_path(Path(source), inputs)
    if hasattr(source, "get_next"):
        return _from_reader(source, inputs)
    if callable(source):
        return CalibrationSet(lambda: ((f"feed #{i}", f) for i, f in enumerate(source())), inputs, None,
                              "calibration callable")
    if isinstance(source, dict):
        return CalibrationSet(lambda: iter([("feed #0", source)]), inputs, 1, "calibration feed")
    if isinstance(source, Iterator):
        raise CalibrationDataError("calibration data is a one-shot iterator; pass a list, or a function "
                                   "returning a new iterator, so it can be read more than once")
    if isinstance(source, Iterable):
        items = source
        length = len(items) if hasattr(items, "__len__") else None
        return CalibrationSet(lambda: ((f"feed #{i}", f) for i, f in enumerate(items)), inputs, length,
                              "calibration feeds")
    raise CalibrationDataError(f"unsupported calibration data of type {type(source).__name__}: expected a "
                               f"directory or .npz path, a list of feed dicts, or a CalibrationDataReader")


def _from_path(path: Path, inputs: list[InputSpec]) -> CalibrationSet:
    if not path.exists():
        raise CalibrationDataError(f"{path}: no such calibration file or directory")
    if path.is_dir():
        files = sorted(path.glob("*.npz"))
        if not files:
            raise CalibrationDataError(f"{path}: no .npz files in this directory")
        return CalibrationSet(lambda: ((str(f), _read_npz(f)) for f in files), inputs, len(files), str(path))
    if path.suffix != ".npz":
        raise CalibrationDataError(f"{path}: expected a directory of .npz files or one .npz file")
    return CalibrationSet(lambda: iter([(str(path), _read_npz(path))]), inputs, 1, str(path))


def _from_reader(reader: Any, inputs: list[InputSpec]) -> CalibrationSet:
    state = {"used": False}

    def iterate() -> Iterator[tuple[str, Any]]:
        if state["used"]:
            if not hasattr(reader, "rewind"):
                raise CalibrationDataError("the CalibrationDataReader has no rewind() and was already read")
            reader.rewind()
        state["used"] = True
        index = 0
        while (feed := reader.get_next()) is not None:
            yield f"CalibrationDataReader feed #{index}", feed
            index += 1

    return CalibrationSet(iterate, inputs, None, "CalibrationDataReader")
