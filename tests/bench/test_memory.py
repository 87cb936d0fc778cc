"""Peak memory of a child process is measured, not estimated: allocations of known size show up."""

from __future__ import annotations

from pathlib import Path

import pytest

from qcompiler.bench import ChildError, run_child

MB = 2**20


def ones(megabytes: int):
    """``numpy.ones`` of ``megabytes`` MiB of float64: allocated and written, so every page is resident."""
    return run_child("numpy:ones", megabytes * MB // 8)


def test_child_allocation_is_measured_and_grows_with_its_size():
    small, large = ones(64), ones(256)
    assert small.peak_mb >= 64 and large.peak_mb >= 256
    # above what the interpreter held before the call: the allocation (the start may include a few
    # pages the allocator hands back later, hence 2 % of slack)
    assert small.peak_mb - small.start_mb >= 0.98 * 64
    assert large.peak_mb - large.start_mb >= 0.98 * 256
    assert large.peak_mb - small.peak_mb >= 256 - 64 - 8  # the difference is the allocation, within noise
    assert small.peak_mb < 64 + 200  # a fresh interpreter with numpy: the parent's memory is not counted


def test_untouched_allocation_is_not_resident():
    """``numpy.zeros`` maps zero pages lazily: resident size hardly moves, as the OS reports it."""
    lazy = run_child("numpy:zeros", 256 * MB // 8)
    assert lazy.peak_mb - lazy.start_mb < 32


def test_file_target_runs_without_importing_its_package(tmp_path: Path):
    script = tmp_path / "work.py"
    script.write_text("import sys\n\ndef modules(prefix):\n"
                      "    return sorted(m for m in sys.modules if m.startswith(prefix))\n")
    child = run_child(f"{script}:modules", "qcompiler")
    assert child.value == []
    assert child.seconds > 0


def test_failing_child_raises_with_its_last_error_line(tmp_path: Path):
    script = tmp_path / "fail.py"
    script.write_text("def boom():\n    raise ValueError('no luck')\n")
    with pytest.raises(ChildError, match="ValueError: no luck"):
        run_child(f"{script}:boom")
