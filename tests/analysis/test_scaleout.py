"""Scale-out (``qcompiler.scaleout``) against a real local Ray cluster: one cluster of 2 CPUs for the whole
test session, tasks in real worker processes. Every result must equal the local run's: compiled bytes,
analysis report, merged observers; a worker killed with SIGKILL mid-task must not change them."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import onnx
import pytest

import qcompiler
from qcompiler import ir
from qcompiler.analysis import analyze
from qcompiler.calibration import collect, make_observer_factory, model_inputs
from qcompiler.cli import main
from qcompiler.errors import UserError
from qcompiler.scaleout import LocalExecutor, executor_for
from qcompiler.scaleout.calibration import collect_sharded, shares
from qcompiler.scaleout.fleet import compile_many, read_manifest

from .conftest import cnn, cnn_feeds

TASK_TITLE = b"ray::_run"  # the process title Ray gives a worker while it runs qcompiler.scaleout's task


@pytest.fixture(scope="session")
def ray_cluster():
    """One local Ray cluster (2 CPUs) for the session, and an executor on it."""
    ray = pytest.importorskip("ray", reason="ray is not installed (pip install 'onnx-qcompiler[ray]')")
    from qcompiler.scaleout.ray_executor import RayExecutor

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, object_store_memory=256 << 20)
    try:
        yield RayExecutor(workers=2)
    finally:
        ray.shutdown()


def test_nothing_imports_ray_without_it(cnn_path, calib_dir, tmp_path):
    """Importing qcompiler and compiling (with mixed precision: the sensitivity code path) loads no ray."""
    script = (f"import sys, qcompiler\n"
              f"qcompiler.compile({str(cnn_path)!r}, {str(tmp_path / 'out.onnx')!r}, calib={str(calib_dir)!r}, "
              f"target='x86-avx2', objective='size', sensitivity_threshold=0.005)\n"
              f"print(sorted(m for m in sys.modules if m == 'ray' or m.startswith('ray.')))\n")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_local_spec_is_the_unchanged_path():
    assert executor_for(None) is None and executor_for("local") is None
    executor = LocalExecutor()
    assert executor_for(executor) is executor
    assert executor.map(lambda shared, item: shared + item, [1, 2, 3], executor.share(10)) == [11, 12, 13]
    with pytest.raises(UserError, match="--workers needs --ray"):
        executor_for(None, workers=2)


def test_ray_missing_is_a_user_error(monkeypatch, cnn_path, calib_dir, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # what an environment without ray looks like to import
    assert main(["compile", str(cnn_path), "-o", str(tmp_path / "out.onnx"), "--calib", str(calib_dir),
                 "--ray", "auto", "-q"]) == 2
    assert "pip install 'onnx-qcompiler[ray]'" in capsys.readouterr().err
    assert not (tmp_path / "out.onnx").exists()


def test_shares_are_contiguous_and_cover_the_data(calib_dir):
    files = sorted(calib_dir.iterdir())
    cut = shares(calib_dir, 4)
    assert [f for share in cut for f in share] == files and len(cut) == 4 and all(cut)
    assert shares(str(calib_dir), 100) == [[f] for f in files]  # never an empty share
    feeds = cnn_feeds(3)
    assert [len(s) for s in shares(feeds, 2)] == [1, 2]
    assert shares(lambda: iter(feeds), 2) is None  # a function cannot be cut without reading it


@pytest.mark.parametrize("method", ["minmax", "mse", "entropy", "percentile"])
def test_sharded_calibration_merges_to_the_single_process_observers(ray_cluster, calib_dir, method):
    model = cnn()
    proto = ir.to_proto(model)
    names = ["x", *(n.outputs[0].name for n in model.graph), "w1"]  # input, activations and an initializer
    factory = make_observer_factory(method, percentile=99.9)
    local = collect(proto, names, str(calib_dir), factory)
    sharded = collect_sharded(ray_cluster, proto, names, str(calib_dir), model_inputs(model), method, 99.9)
    for name in names:
        assert local[name].count == sharded[name].count, name  # the initializer is observed once, not per share
        np.testing.assert_array_equal(local[name].compute_range(), sharded[name].compute_range(), err_msg=name)
        if hasattr(local[name], "counts"):
            np.testing.assert_array_equal(local[name].counts, sharded[name].counts, err_msg=name)


@pytest.mark.parametrize("threshold", [None, 0.005])
def test_compile_on_ray_is_byte_identical(ray_cluster, cnn_path, calib_dir, tmp_path, threshold):
    options = dict(calib=str(calib_dir), target="x86-avx2", objective="size", sensitivity_threshold=threshold)
    qcompiler.compile(cnn_path, tmp_path / "local.onnx", **options)
    model = qcompiler.compile(cnn_path, tmp_path / "ray.onnx", executor=ray_cluster, **options)
    assert (tmp_path / "local.onnx").read_bytes() == (tmp_path / "ray.onnx").read_bytes()
    if threshold is not None:
        assert model.plan.reports["mixed_precision"]["evaluations"] > 4


def test_analyze_on_ray_gives_the_same_report(ray_cluster, cnn_path, calib_dir):
    local = analyze(str(cnn_path), str(calib_dir), target="x86-avx2")
    remote = analyze(str(cnn_path), str(calib_dir), target="x86-avx2", executor=ray_cluster)
    local.pop("seconds"), remote.pop("seconds")
    assert remote == local
    assert len(local["layers"]) == 4 and local["evaluations"] >= 9


def _parent(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return 0


def _ours(pid: int) -> bool:
    """Whether ``pid`` descends from this test process (a worker of the session's cluster, not another's)."""
    while pid > 1:
        pid = _parent(pid)
        if pid == os.getpid():
            return True
    return False


def _killer(stop: threading.Event, killed: list[int]) -> None:
    """Kill (SIGKILL) the first worker of this session's Ray cluster seen running a qcompiler task."""
    while not stop.is_set() and not killed:
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                title = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if title.startswith(TASK_TITLE) and _ours(int(entry.name)):
                os.kill(int(entry.name), signal.SIGKILL)
                killed.append(int(entry.name))
                return
        time.sleep(0.002)


def _manifest(tmp_path: Path, calib_dir: Path) -> Path:
    for seed in (0, 1):
        ir.save(cnn(seed), tmp_path / f"cnn{seed}.onnx")
    manifest = tmp_path / "fleet.toml"
    manifest.write_text(f'root = "."\noutput_dir = "out"\ntargets = ["x86-vnni", "x86-avx2"]\n'
                        f'[options]\nobjective = "size"\ncalibration = "minmax"\n'
                        f'[[models]]\npath = "cnn0.onnx"\ncalib = "{calib_dir}"\n'
                        f'[[models]]\npath = "cnn1.onnx"\ncalib = "{calib_dir}"\nname = "second"\n'
                        f'options = {{ sensitivity_threshold = 0.005 }}\n')
    return manifest


@pytest.mark.skipif(not Path("/proc/self/cmdline").exists(), reason="finds the Ray worker to kill in /proc")
def test_worker_killed_mid_task_changes_nothing(ray_cluster, tmp_path, calib_dir):
    """compile-many on Ray with one worker killed (kill -9) while it compiles: the job is retried, every output
    equals the local run's byte for byte, and nothing partial is left."""
    local_dir, ray_dir = tmp_path / "local", tmp_path / "ray"
    local_dir.mkdir(), ray_dir.mkdir()
    local_rows, local_out = compile_many(_manifest(local_dir, calib_dir))
    stop, killed = threading.Event(), []
    thread = threading.Thread(target=_killer, args=(stop, killed))
    thread.start()
    try:
        rows, out = compile_many(_manifest(ray_dir, calib_dir), ray_cluster)
    finally:
        stop.set()
        thread.join()
    assert killed, "no Ray worker was seen running a task"
    with pytest.raises(ProcessLookupError):
        os.kill(killed[0], 0)
    assert [r["status"] for r in rows] == ["ok"] * 4
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in local_out.iterdir())  # no staging left
    for row in local_rows:
        name = Path(row["output"]).name
        assert (out / name).read_bytes() == (local_out / name).read_bytes(), name
        onnx.checker.check_model(str(out / name))


def test_compile_many_cli_writes_every_output_and_one_table(ray_cluster, tmp_path, calib_dir, capsys):
    manifest = _manifest(tmp_path, calib_dir)
    jobs, out = read_manifest(manifest)
    assert [(j.name, j.target) for j in jobs] == [("cnn0", "x86-vnni"), ("cnn0", "x86-avx2"),
                                                  ("second", "x86-vnni"), ("second", "x86-avx2")]
    assert main(["compile-many", str(manifest), "--ray", "auto"]) == 0  # connects to the session's cluster
    printed = capsys.readouterr().out
    assert "4/4 compiled" in printed and printed.count("| ok |") == 4
    table = json.loads((out / "summary.json").read_text())
    assert [Path(r["output"]).name for r in table] == [f"{j.name}.{j.target}.onnx" for j in jobs]
    assert all((out / f"{j.name}.{j.target}.onnx").is_file() for j in jobs)
    assert (out / "summary.md").read_text().count("| ok |") == 4


def test_compile_many_reports_a_failed_job_and_runs_the_others(tmp_path, calib_dir, capsys):
    manifest = _manifest(tmp_path, calib_dir)
    manifest.write_text(manifest.read_text().replace('targets = ["x86-vnni", "x86-avx2"]', 'targets = ["x86-avx2"]')
                        .replace('path = "cnn1.onnx"\n', 'path = "cnn1.onnx"\npipeline = "no-such-pipeline"\n'))
    assert main(["compile-many", str(manifest)]) == 1
    rows = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert rows[0]["status"] == "ok" and rows[1]["status"].startswith("failed: unknown pipeline")
    assert [p.name for p in (tmp_path / "out").glob("*.onnx")] == ["cnn0.x86-avx2.onnx"]


@pytest.mark.parametrize("text, message", [
    ('[[models]]\npath = "missing.onnx"\n', "no model file"),
    ('output = "x"\n[[models]]\npath = "cnn0.onnx"\n', "unknown key"),
    ('[[models]]\npath = "cnn0.onnx"\noptions = { calibration = "bogus" }\n', "unknown calibration method"),
    ('[[models]]\npath = "cnn0.onnx"\n[[models]]\npath = "cnn0.onnx"\n', "two jobs would write"),
    ("models = [", "not valid TOML"),
])
def test_manifest_mistakes_are_user_errors(tmp_path, text, message, capsys):
    ir.save(cnn(), tmp_path / "cnn0.onnx")
    manifest = tmp_path / "fleet.toml"
    manifest.write_text(text)
    assert main(["compile-many", str(manifest)]) == 2
    error = capsys.readouterr().err
    assert error.startswith(f"qcompiler: error: {manifest}:") and message in error

