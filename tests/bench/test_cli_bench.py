"""``qcompiler bench``: the printed table carries exactly the JSON's numbers; bad inputs exit 2 with one line."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import pytest

from qcompiler.cli import main

from .conftest import matmul_model

FAST = ["--runs", "3", "--min-seconds", "0.01"]


def table_rows(text: str, header: str) -> list[list[str]]:
    """Cells of the rows of the table whose header's first two columns are ``header`` ("model size MB")."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if re.split(r"\s{2,}", line.strip())[:2] == header.split(" ", 1))
    rows = []
    for line in lines[start + 2:]:
        if not line.strip():
            break
        rows.append(re.split(r"\s{2,}", line.strip()))
    return rows


def number(cell: str) -> float | None:
    return None if cell == "-" else float(cell)


def test_table_and_json_agree(tmp_path, pair, feed_dir, capsys):
    out = tmp_path / "bench.json"
    assert main(["bench", str(pair[0]), str(pair[1]), "--calib", str(feed_dir), "--json", str(out), *FAST]) == 0
    printed = capsys.readouterr()
    result = json.loads(out.read_text())
    assert "bench: latency" in printed.err  # progress goes to stderr
    rows = table_rows(printed.out, "model size MB")
    assert [row[0] for row in rows] == [str(p) for p in pair]
    for row, entry in zip(rows, result["models"]):
        latency, memory = entry["latency_ms"], entry["memory_mb"]
        expected = [entry["size_mb"], latency["median"], latency["p90"], latency["min"], latency["runs"],
                    entry["throughput_per_s"], entry["speedup"], memory["peak"], memory["session"]]
        assert [number(cell) for cell in row[1:]] == expected
    agreement = table_rows(printed.out, "model output")
    assert len(agreement) == 1
    numbers = result["models"][1]["agreement"]["y"]
    assert agreement[0][:2] == [str(pair[1]), "y"]
    assert [number(cell) for cell in agreement[0][2:]] == [numbers[k] for k in
                                                          ("sqnr_db", "cos_mean", "cos_min", "top1", "max_abs")]
    assert f"{result['threads']} thread(s), batch {result['batch']}" in printed.out


def test_quiet_prints_no_progress(pair, feed_dir, capsys):
    assert main(["bench", str(pair[0]), "--inputs", str(feed_dir / "batch_0.npz"), "--no-memory", "-q", *FAST]) == 0
    printed = capsys.readouterr()
    assert printed.err == ""
    assert table_rows(printed.out, "model size MB")[0][-2:] == ["-", "-"]  # no memory measured


@pytest.mark.parametrize("case", ["missing model", "wrong npz names", "wrong npz shape", "different inputs"])
def test_bad_inputs_exit_2_with_one_line(tmp_path, pair, weights, feed_dir, capsys, case):
    models, feed = [str(p) for p in pair], str(feed_dir / "batch_0.npz")
    if case == "missing model":
        models.append(str(tmp_path / "absent.onnx"))
    elif case == "wrong npz names":
        feed = str(tmp_path / "names.npz")
        np.savez(feed, pixels=np.zeros((4, 16), np.float32))
    elif case == "wrong npz shape":
        feed = str(tmp_path / "shape.npz")
        np.savez(feed, x=np.zeros((4, 3, 16), np.float32))
    else:
        models.append(str(matmul_model(tmp_path / "other.onnx", weights[0], input_name="image")))
    assert main(["bench", *models, "--inputs", feed, *FAST]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("qcompiler: error: ")
    assert "Traceback" not in err[0]


def test_inputs_and_calib_are_exclusive(pair, feed_dir, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["bench", str(pair[0]), "--inputs", str(feed_dir / "batch_0.npz"), "--calib", str(feed_dir)])
    assert exit_info.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err


def test_failed_json_write_exits_2_with_one_line_and_leaves_no_file(tmp_path, pair, feed_dir, capsys, monkeypatch):
    out = tmp_path / "bench.json"
    real_replace = os.replace

    def disk_full(source, destination):  # the staged JSON cannot be renamed into place
        if Path(destination) == out:
            raise OSError(28, "No space left on device")
        real_replace(source, destination)

    monkeypatch.setattr(os, "replace", disk_full)
    before = sorted(p.name for p in tmp_path.iterdir())
    assert main(["bench", str(pair[0]), "--inputs", str(feed_dir / "batch_0.npz"), "--no-memory", "-q",
                 "--json", str(out), *FAST]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"qcompiler: error: {out}: cannot write (No space left on device)"]
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # neither the JSON nor its staging file
