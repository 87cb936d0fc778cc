"""External data: tensors kept in a file beside the ``.onnx``, mapped when read, streamed when written,
and the ``.onnx`` + data pair replaced as one.

Reading (:class:`DataFiles`): an initializer whose data is external becomes a read-only NumPy view of a
shared, read-only memory map of its range of the file (``mmap`` ``ACCESS_READ``); nothing is copied into
protobuf or into the process's anonymous memory, pages are read from the file when touched, and unmapped
when the array goes. Writing (:class:`TensorWriter`): tensors are streamed into the data file one at a time, each
at an offset aligned to 4096 bytes (a page; onnxruntime maps aligned external data instead of copying
it); a tensor still mapped from a file is copied file to file (``os.copy_file_range``) without passing
through this process's memory.

Replacing a pair (:func:`replace_pair`). A model at ``dir/NAME`` with external data is written as

1. ``dir/.NAME.<token>.lock``: created under a temporary name, locked (``flock``) and only then renamed
   to its real name, so every lock file that exists under that name is held by a live writer or was left
   by a dead one (whose lock the kernel released);
2. ``dir/NAME.<token>.data``: the data, under a fresh random name no other save ever uses, written
   completely and ``fsync``-ed before anything refers to it;
3. ``dir/.NAME.<token>.onnx.tmp``: the graph, referring to that data file by its unique name, ``fsync``-ed
   and renamed over ``dir/NAME`` (``rename`` is atomic on POSIX), after which the lock file goes;
4. cleanup: every ``NAME.<token>.data`` that the current ``dir/NAME`` does not refer to and whose writer
   is gone (its lock file absent or unlocked), every staging file of a dead writer (a killed save), and
   the previous ``NAME.data`` (the name other tools and older qcompiler versions use) when the model that
   was replaced referred to it.

The guarantee: a reader that opens ``dir/NAME`` gets an ``.onnx`` whose data file is the one written with
it, never another save's data, because a data file name is never reused and its content never changes
after the ``.onnx`` referring to it appears. Concurrent saves leave the last rename's pair. The data of a
replaced pair is deleted, so a reader that read the old ``.onnx`` but opens its data only after the next
save finished finds no data file (an error, not wrong weights); :func:`qcompiler.ir.load` then reads the
new pair. A save killed at any point leaves the previous pair readable, and its staging files are
removed by the next save to that name. Both files get the permissions of the file being replaced, or of a
fresh file under the umask. Nothing is read from or written to the current directory.
"""

from __future__ import annotations

import contextlib
import fcntl
import mmap
import os
import re
import secrets
import sys
import tempfile
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from ..errors import ModelLoadError, ModelSaveError

ALIGNMENT = 4096
"""Offset alignment of each tensor in a data file written here (a page)."""

INLINE_BYTES = 1024
"""Tensors smaller than this stay inside the ``.onnx`` (as onnx's own external-data writer does)."""

_TOKEN = r"[0-9a-f]{12}"
_CREATING_GRACE_S = 60.0  # a lock file still under its temporary name this old belongs to a dead writer

# tensor types whose NumPy array is their storage, byte for byte (not int4/float4 packing, not strings)
_PLAIN = {onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16,
          onnx.TensorProto.INT8, onnx.TensorProto.INT16, onnx.TensorProto.INT32, onnx.TensorProto.INT64,
          onnx.TensorProto.UINT8, onnx.TensorProto.UINT16, onnx.TensorProto.UINT32, onnx.TensorProto.UINT64,
          onnx.TensorProto.BOOL, onnx.TensorProto.FLOAT8E4M3FN, onnx.TensorProto.FLOAT8E4M3FNUZ,
          onnx.TensorProto.FLOAT8E5M2, onnx.TensorProto.FLOAT8E5M2FNUZ}

# id(array) -> (array weak reference, open data file, offset, length, its mmap): arrays that are views of a
# data file (the open file, not its name: a save may replace and delete that file while the model is in use)
_MAPPED: dict[int, tuple[weakref.ref, Any, int, int, mmap.mmap]] = {}


def _plain_dtype(data_type: int) -> np.dtype | None:
    if data_type not in _PLAIN or sys.byteorder != "little":
        return None
    return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(data_type))


# ---------------------------------------------------------------------------------------------
# reading


def external_location(tensor: onnx.TensorProto) -> tuple[str, int, int | None]:
    """(location, offset, length or None) of a tensor with external data."""
    info = {entry.key: entry.value for entry in tensor.external_data}
    length = info.get("length")
    return info.get("location", ""), int(info.get("offset") or 0), int(length) if length else None


MAP_BYTES = 1 << 20
"""Tensors from this size get a memory map of their own (released with the array); smaller ones are read."""


class DataFiles:
    """The data files of one model (relative to its directory), each opened once.

    A tensor of :data:`MAP_BYTES` and more is a read-only view of its own shared, read-only memory map
    of the file's range: the pages are read when touched, and unmapped when the array is dropped (a
    quantized weight that replaced it does not keep the float weight's pages resident). Smaller tensors
    are read into memory."""

    def __init__(self, directory: Path, where: str):
        self.directory = directory
        self.where = where
        self._files: dict[Path, tuple[Any, int]] = {}

    def _resolve(self, location: str) -> Path:
        relative = Path(location)
        if not location or relative.is_absolute() or ".." in relative.parts:
            raise ModelLoadError(f"{self.where}: external data location {location!r} is not a file name "
                                 f"relative to the model's directory")
        return self.directory / relative

    def _open(self, path: Path) -> tuple[Any, int]:
        if path not in self._files:
            try:
                stream = open(path, "rb")  # noqa: SIM115 - kept open while arrays refer to it
            except FileNotFoundError:
                raise ModelLoadError(f"{self.where}: its external data file {path.name} is missing") from None
            except OSError as exc:
                raise ModelLoadError(f"{self.where}: cannot read its external data {path} ({exc.strerror})") from None
            self._files[path] = stream, os.fstat(stream.fileno()).st_size
        return self._files[path]

    def array(self, tensor: onnx.TensorProto) -> np.ndarray:
        """The tensor's data (see the class docstring; packed and rare types are decoded into a copy)."""
        location, offset, length = external_location(tensor)
        path = self._resolve(location)
        stream, size = self._open(path)
        shape = tuple(tensor.dims)
        dtype = _plain_dtype(tensor.data_type)
        expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize if dtype is not None else length
        length = expected if length is None else length
        if length is None or offset + length > size or (dtype is not None and length != expected):
            raise ModelLoadError(f"{self.where}: tensor {tensor.name!r} wants bytes {offset}..{offset + (length or 0)} "
                                 f"of {path.name}, which has {size} (truncated or wrong data file?)")
        if dtype is None or length < MAP_BYTES:
            data = os.pread(stream.fileno(), length, offset) if length else b""
            if dtype is not None:
                return np.frombuffer(data, dtype=dtype).reshape(shape).copy()
            copy = onnx.TensorProto()
            copy.CopyFrom(tensor)
            del copy.external_data[:]
            copy.data_location = onnx.TensorProto.DEFAULT
            copy.raw_data = data
            return numpy_helper.to_array(copy)
        return _map(stream, offset, length, dtype, shape)


def _map(stream: Any, offset: int, length: int, dtype: np.dtype, shape: tuple[int, ...]) -> np.ndarray:
    """A read-only view of bytes ``offset .. offset + length`` of the open file ``stream``, on a shared,
    read-only memory map of its own (unmapped when the array goes), registered in ``_MAPPED``."""
    start = offset - offset % mmap.ALLOCATIONGRANULARITY
    mapped = mmap.mmap(stream.fileno(), offset + length - start, access=mmap.ACCESS_READ, offset=start)
    array = np.frombuffer(mapped, dtype=dtype, count=length // dtype.itemsize, offset=offset - start).reshape(shape)
    key = id(array)
    _MAPPED[key] = (weakref.ref(array, lambda _: _MAPPED.pop(key, None)), stream, offset, length, mapped)
    return array


_spill_file: Any = None
_spilled: set[int] = set()  # the live memory maps of the scratch file, by id
_spill_lock = threading.RLock()  # reentrant: a collection inside spill() may run the finalizer below


WRITING = 0
"""Held in ``_spilled`` while :func:`spill` writes (no object has id 0): the file is not emptied under it."""


def _forget_spilled(key: int) -> None:
    """A spilled array is gone (or a write ended): once none is left, the scratch file is emptied (a
    long-lived process that compiles model after model does not keep every spilled weight on disk)."""
    with _spill_lock:
        _spilled.discard(key)
        if not _spilled and _spill_file is not None:
            os.ftruncate(_spill_file.fileno(), 0)


def spill(array: np.ndarray) -> np.ndarray:
    """``array`` written to this process's scratch file and mapped back read-only: the same values, in pages
    the kernel can drop (:func:`release_pages`) instead of anonymous memory.

    For a pass that rewrites the weights of a model past memory (GPTQ, AWQ on an LLM): the rewritten weights
    of every layer would otherwise all be resident until the model is written. The scratch file is a
    ``tempfile.TemporaryFile`` (already unlinked, gone with the process); a save copies spilled tensors file
    to file like any mapped tensor. Arrays smaller than :data:`MAP_BYTES` and types that are not plain are
    given back as they are. The file is emptied whenever no spilled array is left."""
    global _spill_file
    dtype = _plain_dtype(onnx.helper.np_dtype_to_tensor_dtype(array.dtype)) if array.dtype.kind in "biuf" else None
    if dtype is None or array.nbytes < MAP_BYTES:
        return array
    with _spill_lock:
        if _spill_file is None:
            _spill_file = tempfile.TemporaryFile(prefix="qcompiler-spill-")  # noqa: SIM115 - kept for the process
        _spilled.add(WRITING)
        try:
            fd = _spill_file.fileno()
            offset = -(-os.fstat(fd).st_size // ALIGNMENT) * ALIGNMENT
            view, written = memoryview(np.ascontiguousarray(array)).cast("B"), 0
            while written < len(view):
                written += os.pwrite(fd, view[written:], offset + written)
            spilled = _map(_spill_file, offset, len(view), dtype, array.shape)
            mapped = _MAPPED[id(spilled)][4]  # lives while the array or any view of it does
            _spilled.add(id(mapped))
            weakref.finalize(mapped, _forget_spilled, id(mapped))
        finally:
            _forget_spilled(WRITING)
    return spilled


def mapped_source(array: np.ndarray) -> tuple[Any, int, int] | None:
    """(open file, offset, length) when ``array`` is a tensor read from a data file (read-only, so unchanged)."""
    entry = _MAPPED.get(id(array))
    if entry is None or entry[0]() is not array:
        return None
    return entry[1], entry[2], entry[3]


# ---------------------------------------------------------------------------------------------
# writing


class TensorWriter:
    """Streams tensors into one data file; :meth:`add` returns the TensorProto referring to them."""

    def __init__(self, stream, location: str):
        self.stream = stream  # unbuffered (open(..., buffering=0)): copy_file_range writes at its position
        self.location = location
        self.offset = 0

    def add(self, tensor: onnx.TensorProto, array: np.ndarray) -> onnx.TensorProto:
        """``tensor`` (name, type, dims, doc string set, no data) with ``array``'s data: inline when small,
        else appended to the data file."""
        dtype = _plain_dtype(tensor.data_type)
        if dtype is not None and array.dtype == dtype:
            length = array.nbytes
        else:
            full = numpy_helper.from_array(array, tensor.name)
            if not full.HasField("raw_data"):  # strings
                full.doc_string = tensor.doc_string
                return full
            length = len(full.raw_data)
        if length < INLINE_BYTES:
            full = numpy_helper.from_array(array, tensor.name)
            tensor.raw_data = full.raw_data
            return tensor
        self._pad()
        if dtype is not None:
            self.raw(array)
        else:
            self._write(memoryview(full.raw_data))
        for key, value in (("location", self.location), ("offset", str(self.offset)), ("length", str(length))):
            tensor.external_data.add(key=key, value=value)
        tensor.data_location = onnx.TensorProto.EXTERNAL
        self.offset += length
        return tensor

    def raw(self, array: np.ndarray) -> None:
        """Append the bytes of an array whose NumPy storage is its ONNX storage (little-endian)."""
        source = mapped_source(array)
        if source is not None:
            self._copy_range(*source)
        else:
            self._write(memoryview(np.ascontiguousarray(array).reshape(-1).view(np.uint8)))

    def _pad(self) -> None:
        padding = -self.offset % ALIGNMENT
        if padding:
            self._write(memoryview(b"\0" * padding))
            self.offset += padding

    def _write(self, view: memoryview) -> None:
        while len(view):  # write(2) writes at most 2 GiB at once
            view = view[self.stream.write(view[:1 << 30]):]

    def _copy_range(self, source: Any, offset: int, length: int) -> None:
        """Copy bytes of another file in the kernel (no pages of this process touched)."""
        done = 0
        while done < length:
            copied = os.copy_file_range(source.fileno(), self.stream.fileno(), length - done, offset + done)
            if copied == 0:
                raise ModelSaveError(f"{source.name}: shorter than its tensors say (changed while in use?)")
            done += copied


# ---------------------------------------------------------------------------------------------
# replacing a pair


def file_mode(path: Path) -> int:
    """The permissions for ``path``: those of the file it replaces, else a fresh file's under the umask."""
    try:
        return os.stat(path).st_mode & 0o7777
    except FileNotFoundError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


def data_files(proto: onnx.ModelProto) -> set[str]:
    """The names of the data files ``proto``'s tensors refer to (relative to its directory)."""
    from onnx.external_data_helper import _get_all_tensors, uses_external_data

    return {os.path.normpath(external_location(t)[0]) for t in _get_all_tensors(proto) if uses_external_data(t)}


def _referenced(path: Path) -> set[str]:
    """Data file names the model at ``path`` refers to (empty when it does not exist or is unreadable)."""
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception:  # noqa: BLE001 - a missing or foreign file refers to nothing of ours
        return set()
    return data_files(proto)


def _lock_is_free(path: Path) -> bool | None:
    """True when ``path`` exists and no live process holds its lock, False when one does, None when absent."""
    try:
        descriptor = os.open(path, os.O_RDWR)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    finally:
        os.close(descriptor)


def clean_stale(path: Path) -> None:
    """Remove the staging files of dead writers to ``path`` and data files nothing refers to (see the module)."""
    directory, name = path.parent, path.name
    pattern = re.compile(rf"^(?:\.{re.escape(name)}\.(?P<staged>{_TOKEN})\.(?P<kind>lock|lock\.new|onnx\.tmp)"
                         rf"|{re.escape(name)}\.(?P<data>{_TOKEN})\.data)$")
    tokens: dict[str, set[str]] = {}
    try:
        entries = os.listdir(directory)
    except OSError:
        return
    for entry in entries:
        found = pattern.match(entry)
        if found:
            tokens.setdefault(found["staged"] or found["data"], set()).add(entry)
    finished: dict[str, set[str]] = {}
    for token, entries in tokens.items():
        lock = directory / f".{name}.{token}.lock"
        state = _lock_is_free(lock)
        if state is False:
            continue  # a live writer
        if state is None and f".{name}.{token}.lock.new" in entries:
            try:
                if time.time() - os.stat(directory / f".{name}.{token}.lock.new").st_mtime < _CREATING_GRACE_S:
                    continue  # a writer that is creating its lock right now
            except FileNotFoundError:
                continue
        finished[token] = entries
    # read after every lock above was seen free, so each of those writers has renamed its .onnx if it ever
    # will: read before the last check, it could miss the rename of a save that finished in between
    referenced = _referenced(path) if any(f"{name}.{t}.data" in e for t, e in finished.items()) else set()
    for token, entries in finished.items():
        for entry in entries - referenced:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(directory / entry)


@contextlib.contextmanager
def _writer_lock(directory: Path, name: str, token: str) -> Iterator[Path]:
    """The lock file of one save (see the module docstring), held while the block runs."""
    creating = directory / f".{name}.{token}.lock.new"
    lock = directory / f".{name}.{token}.lock"
    descriptor = os.open(creating, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        os.rename(creating, lock)
        try:
            yield lock
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(lock)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(creating)
        os.close(descriptor)


def _fsync_directory(directory: Path) -> None:
    with contextlib.suppress(OSError):
        descriptor = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)


def replace_pair(path: Path, write: Callable[[Any, TensorWriter | None], None], external: bool) -> None:
    """Replace the model at ``path`` (and its data) by what ``write`` produces, as the module describes.

    ``write(stream, writer)`` writes the ``.onnx`` into ``stream`` (an unbuffered binary file) and its
    external data into ``writer`` (None: no external data). Failures are :class:`ModelSaveError`; a
    failed save leaves the previous pair."""
    directory, name = path.parent, path.name
    token = secrets.token_hex(6)
    data_name = f"{name}.{token}.data"
    staged = directory / f".{name}.{token}.onnx.tmp"
    mode = file_mode(path)
    legacy = f"{name}.data"
    try:
        clean_stale(path)
        # the replaced .onnx is parsed only when there is something to decide (an inline one can be 2 GB)
        replaced = _referenced(path) if (directory / legacy).exists() else set()
        with _writer_lock(directory, name, token):
            try:
                with contextlib.ExitStack() as files:
                    stream = files.enter_context(open(staged, "xb", buffering=0))
                    data = files.enter_context(open(directory / data_name, "xb", buffering=0)) if external else None
                    writer = TensorWriter(data, data_name) if external else None
                    write(stream, writer)
                    for written in (data, stream):
                        if written is not None:
                            os.fsync(written.fileno())
                if writer is not None and writer.offset:
                    os.chmod(directory / data_name, mode)
                elif writer is not None:  # every tensor was small enough to stay inline
                    os.unlink(directory / data_name)
                os.chmod(staged, mode)
                os.replace(staged, path)
            except BaseException:
                for leftover in (staged, directory / data_name):
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(leftover)
                raise
            _fsync_directory(directory)
        if legacy in replaced and legacy not in _referenced(path):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(directory / legacy)
        clean_stale(path)
    except OSError as exc:
        raise ModelSaveError(f"{path}: cannot write ({exc.strerror or exc})") from exc


def release_pages(array: np.ndarray) -> None:
    """Drop the resident pages of a mapped tensor (``madvise(MADV_DONTNEED)``; the mapping is shared and
    read-only, so nothing is lost: a later read faults them back in from the file or the page cache).
    For a pass that reads every weight once, so the process does not end up holding them all. A no-op
    for any other array."""
    entry = _MAPPED.get(id(array))
    if entry is not None and entry[0]() is array and hasattr(mmap, "MADV_DONTNEED"):
        entry[4].madvise(mmap.MADV_DONTNEED)
