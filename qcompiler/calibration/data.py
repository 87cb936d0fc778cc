"""Calibration data: where feeds come from, and checking each one against the model's inputs.

A :class:`CalibrationSet` is a re-iterable source of feed dicts ``{input name: array}``, made by
:func:`open_calibration` from:

* a directory of ``.npz`` files (read in name order), one feed per file, keys = input names (the
  layout the realmodels kit writes under ``data/calib_npz/<model>/batch_*.npz``);
* one ``.npz`` file (one feed);
* a list or tuple (or any re-iterable) of feed dicts, or a single feed dict;
* a zero-argument callable returning a new iterator of feed dicts at each call (streams: nothing
  is kept between passes);
* an onnxruntime ``CalibrationDataReader`` (``get_next()`` until it returns None). When it has
  ``rewind()``, every pass calls it first and nothing is kept.
* a one-shot iterator (a generator, or a reader without ``rewind()``): it can be read only once, so
  its feeds are **kept in memory as they are read** and later passes replay them (the set warns
  with :class:`OneShotSourceWarning`). The replay is shared by every :func:`open_calibration` of
  the same iterator object, so the pipeline's several passes over the data work. To stream with
  bounded memory, pass a callable returning a new iterator instead.

Files are read one at a time, so memory holds one feed. Every feed is checked as it is read:
every input present, no unknown key, the exact dtype (no silent casts: float64 for a float32 input
is an error), the rank and every static dimension, symbolic dimensions of the same name equal
across the inputs of one feed, at least one value (no zero-row batch), finite values. A problem raises :class:`CalibrationDataError`
naming the file (or feed number), the input, what it is and what the model expects.
"""

from __future__ import annotations

import os
import warnings
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import UserError


class CalibrationDataError(UserError):
    """Calibration data that does not fit the model, or cannot be read."""


class OneShotSourceWarning(UserWarning):
    """A one-shot iterator was given as calibration data: its feeds are kept in memory for replay."""


def _is_dynamic(dim: Any) -> bool:
    return dim is None or isinstance(dim, str) or dim < 0


@dataclass(frozen=True)
class InputSpec:
    """A model input as a feed must provide it: name, numpy dtype, shape (int, symbol or None).

    ``shape=None`` accepts any shape. A ``None``, a string, or a negative dimension (Paddle
    exports write -1) is dynamic. Dimensions named by the same symbol (not ``"?"``) must be equal
    across the inputs of one feed, as ONNX defines.
    """

    name: str
    dtype: np.dtype
    shape: tuple[int | str | None, ...] | None

    def describe_shape(self) -> str:
        if self.shape is None:
            return "any shape"
        text = ", ".join("?" if d is None or (isinstance(d, int) and d < 0) else str(d) for d in self.shape)
        return f"({text},)" if len(self.shape) == 1 else f"({text})"


def input_specs(model: Any) -> list[InputSpec]:
    """The inputs a feed must provide for an ``onnx.ModelProto`` (initializer-backed ones excluded)."""
    import onnx

    initializers = {tensor.name for tensor in model.graph.initializer}
    specs = []
    for value in model.graph.input:
        if value.name in initializers or not value.type.HasField("tensor_type"):
            continue
        tensor_type = value.type.tensor_type
        shape = None
        if tensor_type.HasField("shape"):
            shape = tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
                          for d in tensor_type.shape.dim)
        dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor_type.elem_type))
        specs.append(InputSpec(value.name, dtype, shape))
    return specs


def _where_not_finite(array: np.ndarray) -> str:
    bad = ~np.isfinite(array)
    nans = int(np.count_nonzero(np.isnan(array)))
    infs = int(np.count_nonzero(bad)) - nans
    first = tuple(int(i) for i in np.argwhere(bad)[0])
    parts = [f"{nans} NaN" if nans else "", f"{infs} Inf" if infs else ""]
    return f"{' and '.join(p for p in parts if p)} value(s) of {array.size} (first at index {first})"


def check_feed(feed: Any, inputs: list[InputSpec], where: str) -> dict[str, np.ndarray]:
    """Validate one feed against the model's inputs; returns it as a dict of arrays.

    ``where`` names the feed in messages (a file path, "feed #3").
    """
    if not isinstance(feed, Mapping):
        raise CalibrationDataError(f"{where}: expected a dict of input name -> array, got {type(feed).__name__}")
    expected = {spec.name for spec in inputs}
    unknown = sorted(str(key) for key in set(feed) - expected)
    if unknown:
        raise CalibrationDataError(f"{where}: unknown input(s) {unknown}; the model's inputs are {sorted(expected)}")
    arrays: dict[str, np.ndarray] = {}
    symbols: dict[str, tuple[str, int, int]] = {}  # symbol -> (input, axis, size) where first seen
    for spec in inputs:
        expected_text = f"{np.dtype(spec.dtype).name} {spec.describe_shape()}"
        if spec.name not in feed:
            raise CalibrationDataError(f"{where}: input {spec.name!r} is missing (the model expects {expected_text})")
        try:
            array = np.asarray(feed[spec.name])
        except Exception as exc:  # ragged lists and such
            raise CalibrationDataError(f"{where}: input {spec.name!r} is not an array ({exc}); "
                                       f"the model expects {expected_text}") from None
        if array.dtype != np.dtype(spec.dtype):
            hint = f" (convert with .astype(np.{np.dtype(spec.dtype).name}))" if array.dtype.kind in "biuf" else ""
            raise CalibrationDataError(f"{where}: input {spec.name!r} has dtype {array.dtype.name}, "
                                       f"the model expects {np.dtype(spec.dtype).name}{hint}")
        if spec.shape is not None:
            mismatch = len(spec.shape) != array.ndim or any(
                not _is_dynamic(d) and d != n for d, n in zip(spec.shape, array.shape))
            if mismatch:
                raise CalibrationDataError(f"{where}: input {spec.name!r} has shape {tuple(array.shape)}, "
                                           f"the model expects {spec.describe_shape()}")
            for axis, (dim, size) in enumerate(zip(spec.shape, array.shape)):
                if not isinstance(dim, str) or dim in ("", "?"):
                    continue
                first = symbols.setdefault(dim, (spec.name, axis, size))
                if first[2] != size:
                    raise CalibrationDataError(
                        f"{where}: input {spec.name!r} has size {size} on axis {axis} ({dim!r}) but input "
                        f"{first[0]!r} has size {first[2]} on axis {first[1]}; the model expects them equal")
        if array.size == 0 and (spec.shape is None or all(d != 0 for d in spec.shape)):
            empty = [axis for axis, n in enumerate(array.shape) if n == 0]
            raise CalibrationDataError(f"{where}: input {spec.name!r} has no values (shape {tuple(array.shape)}, "
                                       f"size 0 on axis {empty[0]}); a calibration feed needs at least one row")
        if array.dtype.kind in "fc" and array.size and not np.isfinite(array).all():
            raise CalibrationDataError(f"{where}: input {spec.name!r} has {_where_not_finite(array)}; "
                                       f"calibration data must be finite")
        arrays[spec.name] = array
    return arrays


_ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")  # a zip's first local file header, or an empty zip's end record
_NPY_MAGIC = b"\x93NUMPY"


def read_npz(path: str | os.PathLike, error: type[Exception] = UserError) -> dict[str, np.ndarray]:
    """The named arrays of an ``.npz`` file, or ``error`` with one line naming the file.

    The file's first bytes are checked before numpy reads it: given anything that is neither a zip
    archive nor an ``.npy`` array, ``np.load`` falls back to unpickling and, with pickles refused,
    says the file holds "pickled data" that could be "loaded unsafely", which is no help for a text
    file that happens to be named ``x.npz``.
    """
    path = Path(path)
    try:
        with open(path, "rb") as stream:
            head = stream.read(len(_NPY_MAGIC))
    except FileNotFoundError:
        raise error(f"{path}: no such file") from None
    except IsADirectoryError:
        raise error(f"{path}: is a directory, expected an .npz file") from None
    except OSError as exc:
        raise error(f"{path}: cannot read ({exc.strerror or exc})") from None
    if head.startswith(_NPY_MAGIC):
        raise error(f"{path}: not a .npz archive (it is a single .npy array, not named arrays: "
                    f"write it with np.savez(path, input_name=array))")
    if head[:4] not in _ZIP_MAGIC:
        content = "the file is empty" if not head else f"it starts with {head[:4]!r}, not a zip header"
        raise error(f"{path}: not a .npz archive ({content}); write feeds with np.savez(path, input_name=array)")
    try:
        data = np.load(path, allow_pickle=False)
    except Exception as exc:
        raise error(f"{path}: cannot read as .npz ({type(exc).__name__}: {exc})") from None
    with data:
        try:
            return {key: data[key] for key in data.files}
        except Exception as exc:
            raise error(f"{path}: cannot read as .npz ({type(exc).__name__}: {exc})") from None


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    return read_npz(path, CalibrationDataError)


Source = Callable[[], Iterator[tuple[str, Any]]]  # a new pass: (where, feed) pairs


class CalibrationSet:
    """A re-iterable, validated source of feeds (see the module docstring).

    Iterating yields ``{input name: ndarray}`` dicts, each checked by :func:`check_feed`; a pass
    that finds no feed at all raises :class:`CalibrationDataError`. ``len()`` works when the number
    of feeds is known without reading them (``length`` is then an int, else None).
    """

    def __init__(self, make_iterator: Source, inputs: list[InputSpec], length: int | None, description: str):
        self._make_iterator = make_iterator
        self.inputs = list(inputs)
        self.length = length
        self.description = description

    def items(self) -> Iterator[tuple[str, dict[str, np.ndarray]]]:
        """``(where, feed)`` pairs: ``where`` names the feed (its file, or "feed #3") for messages."""
        count = 0
        for where, feed in self._make_iterator():
            count += 1
            checked = check_feed(feed, self.inputs, where)
            del feed
            yield where, checked
            del checked  # before the next feed is read: one feed in memory at a time
        if count == 0:
            raise CalibrationDataError(f"{self.description}: no calibration data (no feed was found)")

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        for _, feed in self.items():
            yield feed
            del feed  # before the next feed is read

    def __len__(self) -> int:
        if self.length is None:
            raise TypeError(f"{self.description}: the number of feeds is not known before reading them")
        return self.length

    def __repr__(self) -> str:
        count = "?" if self.length is None else self.length
        return f"CalibrationSet({self.description}, {count} feed(s), inputs={[s.name for s in self.inputs]})"


class _Replay:
    """Reads a one-shot source once, lazily, keeping what it read so later passes can replay it."""

    def __init__(self, next_feed: Callable[[], Any], prefix: str):
        self._next_feed = next_feed
        self._prefix = prefix
        self._seen: list[Any] = []
        self._done = False

    def __call__(self) -> Iterator[tuple[str, Any]]:
        index = 0
        while True:
            if index < len(self._seen):
                feed = self._seen[index]
            elif self._done:
                return
            else:
                feed = self._next_feed()
                if feed is None:
                    self._done = True
                    return
                self._seen.append(feed)
            yield f"{self._prefix}feed #{index}", feed
            index += 1


_REPLAYS: weakref.WeakKeyDictionary[Any, _Replay] = weakref.WeakKeyDictionary()


def _replay_for(source: Any, next_feed: Callable[[], Any], what: str, prefix: str, stacklevel: int) -> _Replay:
    """The replay shared by every CalibrationSet over this one-shot ``source``."""
    try:
        replay = _REPLAYS.get(source)
    except TypeError:  # not weak-referenceable (e.g. a list_iterator): no sharing
        replay = None
    if replay is None:
        warnings.warn(f"calibration data is {what}, which can be read only once: its feeds are kept in memory as "
                      f"they are read so that they can be read again; pass a list, a directory of .npz files or a "
                      f"function returning a new iterator to stream with bounded memory", OneShotSourceWarning,
                      stacklevel=stacklevel)
        replay = _Replay(next_feed, prefix)
        try:
            _REPLAYS[source] = replay
        except TypeError:
            pass
    return replay


def _numbered(feeds: Iterable[Any]) -> Iterator[tuple[str, Any]]:
    """``("feed #i", feed)`` pairs, without holding feed i while feed i + 1 is made.

    (A ``for`` loop or generator expression keeps its loop variable bound until the next item
    arrives, and ``enumerate`` keeps its last result tuple: two feeds in memory.)
    """
    index = 0
    for feed in feeds:
        yield f"feed #{index}", feed
        del feed
        index += 1


def _length(source: Any) -> int | None:
    try:
        return int(len(source))
    except (TypeError, NotImplementedError, AttributeError):
        return None


def open_calibration(source: Any, inputs: list[InputSpec]) -> CalibrationSet:
    """A :class:`CalibrationSet` over ``source`` for a model with these inputs (see the module docstring).

    Raises :class:`CalibrationDataError` now for a missing path, a directory without ``.npz``
    files, an empty list or an unsupported source; problems inside feeds are raised as they are read.
    """
    inputs = list(inputs)
    if isinstance(source, CalibrationSet):
        return CalibrationSet(source._make_iterator, inputs, source.length, source.description)
    if isinstance(source, (str, os.PathLike)):
        return _from_path(Path(source), inputs)
    if hasattr(source, "get_next") and callable(source.get_next):  # onnxruntime CalibrationDataReader
        return _from_reader(source, inputs)
    if isinstance(source, Mapping):
        return CalibrationSet(lambda: iter([("feed #0", source)]), inputs, 1, "calibration feed")
    if isinstance(source, Iterator):
        replay = _replay_for(source, lambda: next(source, None), f"a one-shot {type(source).__name__}", "", 4)
        return CalibrationSet(replay, inputs, None, f"calibration {type(source).__name__}")
    if isinstance(source, Iterable) and not isinstance(source, (bytes, bytearray, np.ndarray)):
        items = source
        length = _length(items)
        if length == 0:
            raise CalibrationDataError("calibration data is an empty collection: no feed to calibrate with")
        return CalibrationSet(lambda: _numbered(items), inputs, length, "calibration feeds")
    if callable(source):
        def fresh() -> Iterator[tuple[str, Any]]:
            iterator = source()
            if isinstance(iterator, Mapping) or not isinstance(iterator, Iterable):
                raise CalibrationDataError(f"calibration function {getattr(source, '__name__', source)!r} returned "
                                           f"{type(iterator).__name__}; expected an iterator of feed dicts")
            return _numbered(iterator)

        return CalibrationSet(fresh, inputs, None, f"calibration function {getattr(source, '__name__', '')}".strip())
    raise CalibrationDataError(f"unsupported calibration data of type {type(source).__name__}: expected a directory "
                               f"of .npz files, an .npz file, a list of feed dicts, a function returning an iterator "
                               f"of feed dicts, or an onnxruntime CalibrationDataReader")


def check_calibration(source: Any, inputs: list[InputSpec]) -> CalibrationSet:
    """:func:`open_calibration`, and its first feed read and checked now (dtypes, shapes, values).

    Passes read calibration data only when they need it, and a pipeline that ends up quantizing
    nothing (a float16 model, everything excluded) may never read it; calling this before any
    compile work reports data that does not fit the model (a float32 feed for a float16 input)
    before anything is written. One-shot sources keep the feed read for the passes (see the module
    docstring); other sources are read again from the start by each pass.
    """
    data = open_calibration(source, inputs)
    items = data.items()
    try:
        next(items)  # raises CalibrationDataError for a bad first feed, or for no feed at all
    finally:
        items.close()
    return data


def _from_path(path: Path, inputs: list[InputSpec]) -> CalibrationSet:
    if not path.exists():
        raise CalibrationDataError(f"{path}: no such calibration file or directory")
    if path.is_dir():
        files = npz_files(path)
        if not files:
            others = sorted({p.suffix or p.name for p in path.iterdir()})
            found = f" (found: {', '.join(others[:8])})" if others else " (it is empty)"
            raise CalibrationDataError(f"{path}: no .npz files in this directory{found}; calibration data is one "
                                       f".npz file per feed, keys = model input names")
        return open_files(files, inputs, str(path))
    if path.suffix != ".npz":
        raise CalibrationDataError(f"{path}: expected a directory of .npz files or one .npz file")
    return CalibrationSet(lambda: iter([(str(path), _read_npz(path))]), inputs, 1, str(path))


def open_files(files: list[Path], inputs: list[InputSpec], description: str) -> CalibrationSet:
    """A :class:`CalibrationSet` of ``.npz`` files, one feed each, read in the order given (a directory's
    files, or a share of them that a worker calibrates on: :mod:`qcompiler.scaleout.calibration`)."""
    return CalibrationSet(lambda: ((str(f), _read_npz(f)) for f in files), inputs, len(files), description)


def npz_files(directory: Path) -> list[Path]:
    """The feeds of a calibration directory: its ``.npz`` files in name order (hidden ones skipped)."""
    return sorted(p for p in directory.iterdir() if p.suffix == ".npz" and p.is_file() and not p.name.startswith("."))


def _from_reader(reader: Any, inputs: list[InputSpec]) -> CalibrationSet:
    name = type(reader).__name__
    if callable(getattr(reader, "rewind", None)):
        def iterate() -> Iterator[tuple[str, Any]]:
            reader.rewind()
            index = 0
            while (feed := reader.get_next()) is not None:
                yield f"{name} feed #{index}", feed
                del feed  # before the next feed is read
                index += 1

        return CalibrationSet(iterate, inputs, _length(reader), name)
    replay = _replay_for(reader, reader.get_next, f"a {name} without rewind()", f"{name} ", 5)
    return CalibrationSet(replay, inputs, _length(reader), name)


def model_inputs(model: Any) -> list[InputSpec]:
    """The inputs a feed must provide for an IR model (graph inputs without an initializer behind them)."""
    import onnx

    return [InputSpec(v.name, np.dtype(onnx.helper.tensor_dtype_to_np_dtype(v.dtype)), v.shape)
            for v in model.graph.inputs if v.const is None and v.dtype is not None]
