"""External data: memory-mapped loading, streamed saving, and the .onnx + data pair replaced as one
(concurrent saves, a stale data file in the working directory, killed saves, permissions)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from qcompiler import ir
from qcompiler.errors import ModelLoadError
from qcompiler.ir import external_data, serde

WIDTH = 64  # a 16 KiB weight: external (>= 1 KiB)


def filled_model(fill: float) -> ir.Model:
    """y = x @ W with W filled with ``fill``, and ``fill`` in the metadata: a reader can tell whether the
    weights it got are the ones its .onnx was saved with."""
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, WIDTH])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, WIDTH])],
        [onnx.numpy_helper.from_array(np.full((WIDTH, WIDTH), fill, np.float32), "w")])
    model = ir.from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    model.metadata["fill"] = repr(fill)
    return model


def pair_names(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def referenced_data(path: Path) -> list[str]:
    proto = onnx.load(str(path), load_external_data=False)
    return [external_data.external_location(t)[0] for t in proto.graph.initializer
            if t.data_location == TensorProto.EXTERNAL]


# -- loading ---------------------------------------------------------------------------------------


def test_external_initializers_are_mapped_read_only_not_copied(tmp_path, monkeypatch):
    monkeypatch.setattr(external_data, "MAP_BYTES", 1024)
    path = tmp_path / "m.onnx"
    ir.save(filled_model(3.0), path, external_data=True)
    weight = ir.load(path).graph.initializers["w"].const
    assert not weight.flags.writeable  # a view of the read-only mapping
    assert external_data.mapped_source(weight) is not None
    np.testing.assert_array_equal(weight, np.full((WIDTH, WIDTH), 3.0, np.float32))


@pytest.mark.parametrize("map_bytes", [1024, 1 << 20])  # mapped (copied file to file), read
def test_a_mapped_model_saved_elsewhere_copies_its_data_and_survives_the_source_being_replaced(
        tmp_path, monkeypatch, map_bytes):
    monkeypatch.setattr(external_data, "MAP_BYTES", map_bytes)
    source, copy = tmp_path / "a.onnx", tmp_path / "b.onnx"
    ir.save(filled_model(2.0), source, external_data=True)
    model = ir.load(source)
    ir.save(filled_model(5.0), source, external_data=True)  # deletes the data file `model` is mapped from
    ir.save(model, copy, external_data=True)
    loaded = ir.load(copy)
    assert float(loaded.graph.initializers["w"].const[0, 0]) == 2.0 and loaded.metadata["fill"] == "2.0"
    session = ort.InferenceSession(str(copy), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(session.run(None, {"x": np.ones((1, WIDTH), np.float32)})[0],
                               np.full((1, WIDTH), 2.0 * WIDTH))


def test_packed_int4_and_bfloat16_tensors_round_trip_through_external_data(tmp_path):
    import ml_dtypes

    model = filled_model(1.0)
    int4 = np.arange(-8, 8, dtype=np.int8).repeat(256).astype(ml_dtypes.int4)  # 2 KiB packed
    bf16 = np.linspace(-2, 2, 4096).astype(ml_dtypes.bfloat16)
    model.graph.add_initializer(ir.Value("q", const=int4))
    model.graph.add_initializer(ir.Value("h", const=bf16))
    path = tmp_path / "m.onnx"
    ir.save(model, path, external_data=True)
    loaded = ir.load(path)
    np.testing.assert_array_equal(loaded.graph.initializers["q"].const.astype(np.int8), int4.astype(np.int8))
    np.testing.assert_array_equal(loaded.graph.initializers["h"].const, bf16)
    assert loaded.graph.initializers["q"].dtype == TensorProto.INT4


def test_a_truncated_data_file_is_a_load_error_naming_the_tensor(tmp_path):
    path = tmp_path / "m.onnx"
    ir.save(filled_model(1.0), path, external_data=True)
    data = tmp_path / referenced_data(path)[0]
    data.write_bytes(data.read_bytes()[:100])
    with pytest.raises(ModelLoadError, match="'w'.*truncated"):
        ir.load(path)


def test_onnxruntime_gets_a_path_with_external_data_for_a_large_model(monkeypatch):
    model = filled_model(0.5)
    feeds = {"x": np.ones((1, WIDTH), np.float32)}
    monkeypatch.setattr(serde, "IN_MEMORY_BYTES", 1024)  # as if the weights were past 256 MB

    with serde.onnxruntime_model(model, extra_outputs=["x"]) as source:
        assert isinstance(source, str) and Path(source).is_file()
        session = ort.InferenceSession(source, providers=["CPUExecutionProvider"])
    assert not Path(source).exists()  # the scratch copy is gone; the session keeps working
    y, x = session.run(["y", "x"], feeds)
    np.testing.assert_allclose(y, np.full((1, WIDTH), 0.5 * WIDTH))
    np.testing.assert_array_equal(x, feeds["x"])


# -- the pair --------------------------------------------------------------------------------------


def test_a_stale_data_file_in_the_working_directory_does_not_matter(tmp_path, monkeypatch):
    work, out = tmp_path / "work", tmp_path / "out"
    work.mkdir(), out.mkdir()
    monkeypatch.chdir(work)
    for stale in ("m.onnx.data", "model.onnx.data"):
        (work / stale).write_bytes(b"stale bytes, not a tensor")
        (out / stale).write_bytes(b"stale bytes, not a tensor")
    ir.save(filled_model(4.0), "m.onnx", external_data=True)  # relative: into the working directory
    ir.save(filled_model(4.0), out / "m.onnx", external_data=True)
    for path in (work / "m.onnx", out / "m.onnx"):
        loaded = ir.load(path)
        assert float(loaded.graph.initializers["w"].const[0, 0]) == 4.0
    for directory in (work, out):  # files the saves do not own are left alone
        assert (directory / "model.onnx.data").read_bytes() == b"stale bytes, not a tensor"
        assert (directory / "m.onnx.data").read_bytes() == b"stale bytes, not a tensor"


def test_replacing_a_pair_removes_the_previous_data_and_switching_to_inline_removes_it_too(tmp_path):
    path = tmp_path / "m.onnx"
    ir.save(filled_model(1.0), path, external_data=True)
    first = referenced_data(path)
    ir.save(filled_model(2.0), path, external_data=True)
    second = referenced_data(path)
    assert first != second and pair_names(tmp_path) == sorted(["m.onnx", *second])
    ir.save(filled_model(3.0), path)  # inline
    assert pair_names(tmp_path) == ["m.onnx"]


def test_the_conventional_data_file_of_a_replaced_model_goes_with_it(tmp_path):
    path = tmp_path / "m.onnx"
    proto = ir.to_proto(filled_model(1.0))
    onnx.save_model(proto, str(path), save_as_external_data=True, location="m.onnx.data", size_threshold=1024)
    assert (tmp_path / "m.onnx.data").exists()
    model = ir.load(path)
    ir.save(model, path, external_data=True)  # --overwrite: the input is mapped from m.onnx.data
    assert "m.onnx.data" not in pair_names(tmp_path) and len(pair_names(tmp_path)) == 2
    assert float(ir.load(path).graph.initializers["w"].const[0, 0]) == 1.0


@pytest.mark.parametrize("external", [True, False])
@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_a_fresh_pair_gets_the_permissions_of_a_fresh_file(tmp_path, external, umask):
    previous = os.umask(umask)
    try:
        path = tmp_path / "m.onnx"
        ir.save(filled_model(1.0), path, external_data=external)
        with open(tmp_path / "fresh", "w"):
            pass
    finally:
        os.umask(previous)
    expected = (tmp_path / "fresh").stat().st_mode & 0o7777
    for name in ["m.onnx", *referenced_data(path)]:
        assert (tmp_path / name).stat().st_mode & 0o7777 == expected, name


@pytest.mark.parametrize("external", [True, False])
def test_a_replaced_pair_keeps_the_permissions_of_the_file_it_replaces(tmp_path, external):
    path = tmp_path / "m.onnx"
    ir.save(filled_model(1.0), path, external_data=True)
    os.chmod(path, 0o640)
    ir.save(filled_model(2.0), path, external_data=external)
    for name in ["m.onnx", *referenced_data(path)]:
        assert (tmp_path / name).stat().st_mode & 0o7777 == 0o640, name


def _python(code: str, *args: str, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), *args], text=True, **kwargs)


_KILLED_SAVE = """
import sys, time
import numpy as np
from qcompiler import ir
from qcompiler.ir import external_data
where, path = sys.argv[1], sys.argv[2]
model = ir.load(sys.argv[3])
model.graph.initializers["w"].const = np.full((64, 64), 9.0, np.float32)

def stop():
    print("stopped", flush=True)
    time.sleep(600)

if where == "data":  # in the middle of the data file
    write = external_data.TensorWriter._write
    def half(self, view):
        write(self, view[: len(view) // 2])
        stop()
    external_data.TensorWriter._write = half
else:  # everything staged, just before the rename
    external_data.os.replace = lambda *a: stop()
ir.save(model, path, external_data=True)
"""


@pytest.mark.parametrize("where", ["data", "staged"])
def test_a_killed_save_leaves_the_previous_pair_and_the_next_save_removes_its_files(tmp_path, where):
    path, source = tmp_path / "m.onnx", tmp_path.parent / f"{tmp_path.name}-source.onnx"
    ir.save(filled_model(1.0), path, external_data=True)
    ir.save(filled_model(9.0), source)
    before = pair_names(tmp_path)
    child = _python(_KILLED_SAVE, where, str(path), str(source), stdout=subprocess.PIPE)
    try:
        assert child.stdout.readline().strip() == "stopped"
        assert len(pair_names(tmp_path)) > len(before)  # its staging files are there
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
        source.unlink()
    loaded = ir.load(path)  # the previous pair is intact
    assert float(loaded.graph.initializers["w"].const[0, 0]) == 1.0
    ir.save(filled_model(2.0), path, external_data=True)
    assert pair_names(tmp_path) == sorted(["m.onnx", *referenced_data(path)])


def test_a_live_concurrent_save_is_not_cleaned_up(tmp_path):
    """A writer's staging files survive another save's cleanup while the writer lives."""
    path, source = tmp_path / "m.onnx", tmp_path.parent / f"{tmp_path.name}-source.onnx"
    ir.save(filled_model(9.0), source)
    child = _python(_KILLED_SAVE, "data", str(path), str(source), stdout=subprocess.PIPE)
    try:
        assert child.stdout.readline().strip() == "stopped"
        staged = set(pair_names(tmp_path))
        ir.save(filled_model(2.0), path, external_data=True)
        assert staged <= set(pair_names(tmp_path))
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
        source.unlink()


_WRITER = """
import sys
from qcompiler import ir
sys.path.insert(0, sys.argv[3])
from test_external_data import filled_model
path, fill = sys.argv[1], float(sys.argv[2])
for _ in range(int(sys.argv[4])):
    ir.save(filled_model(fill), path, external_data=True)
"""

_READER = """
import sys, time
import numpy as np
import onnxruntime as ort
from qcompiler import ir
path, stop = sys.argv[1], sys.argv[2]
import os
reads = mismatches = missing = 0
x = np.ones((1, 64), np.float32)
while not os.path.exists(stop) or reads < 10:
    model = ir.load(path)  # never fails: a replaced pair is read again
    fill = float(model.metadata["fill"])
    if not np.all(model.graph.initializers["w"].const == fill):
        mismatches += 1
    try:  # onnxruntime reads the .onnx, then its data: a replaced pair's data may be gone, never mixed
        session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        fill = float(session.get_modelmeta().custom_metadata_map["fill"])
        if not np.allclose(session.run(None, {"x": x})[0], fill * 64):
            mismatches += 1
    except Exception as exc:  # the data file gone: onnxruntime says so in words, or as errno 2 (ENOENT)
        text = str(exc).lower()
        if not any(word in text for word in ("data", "no such file", "open", "systemerror : 2")):
            raise
        missing += 1
    reads += 1
print(reads, mismatches, missing)
"""


def test_concurrent_saves_over_one_pair_never_show_a_reader_a_mismatched_pair(tmp_path):
    path, stop = tmp_path / "m.onnx", tmp_path.parent / f"{tmp_path.name}-stop"
    ir.save(filled_model(0.0), path, external_data=True)
    here = str(Path(__file__).parent)
    readers = [_python(_READER, str(path), str(stop), stdout=subprocess.PIPE) for _ in range(2)]
    writers = [_python(_WRITER, str(path), str(fill), here, "20") for fill in (1.0, 2.0)]
    try:
        assert all(w.wait(timeout=300) == 0 for w in writers)
    finally:
        stop.write_text("")
    results = []
    for reader in readers:
        out, _ = reader.communicate(timeout=300)
        assert reader.returncode == 0
        results.append([int(n) for n in out.split()])
    stop.unlink()
    assert sum(r[0] for r in results) >= 20
    assert sum(r[1] for r in results) == 0  # no reader ever saw one save's .onnx with another's data
    assert pair_names(tmp_path) == sorted(["m.onnx", *referenced_data(path)])  # nothing left behind
    assert float(ir.load(path).metadata["fill"]) in (1.0, 2.0)


def test_load_reads_the_new_pair_when_saves_replace_it_between_the_onnx_and_its_data(tmp_path, monkeypatch):
    """Two saves land after ``load`` read the ``.onnx`` and before it opens the data, which the second
    deletes; on ext4 the second save's file gets the inode of the file it replaces, so only the data file
    names tell that the pair was replaced (the concurrent-save test above failed one run in ten on that)."""
    path = tmp_path / "m.onnx"
    ir.save(filled_model(1.0), path, external_data=True)
    read = serde._read_proto
    calls = []

    def read_then_replace(where):
        found = read(where)
        calls.append(where)
        if len(calls) == 1:
            for fill in (2.0, 3.0):
                ir.save(filled_model(fill), path, external_data=True)
        return found

    monkeypatch.setattr(serde, "_read_proto", read_then_replace)
    model = ir.load(path)
    assert float(model.metadata["fill"]) == 3.0 and np.all(model.graph.initializers["w"].const == 3.0)
    assert len(calls) == 2


def test_a_missing_data_file_is_reported_after_one_more_read(tmp_path, monkeypatch):
    path = tmp_path / "m.onnx"
    ir.save(filled_model(1.0), path, external_data=True)
    for name in external_data._referenced(path):
        os.unlink(tmp_path / name)
    reads = []
    read = serde._read_proto
    monkeypatch.setattr(serde, "_read_proto", lambda where: reads.append(where) or read(where))
    with pytest.raises(ModelLoadError, match="is missing"):
        ir.load(path)
    assert len(reads) == 2
