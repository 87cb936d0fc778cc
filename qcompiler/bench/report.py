"""The machine a benchmark ran on, and the readable table of a ``qcompiler bench`` result.

The table prints the numbers of the JSON result as they are stored there (already rounded), so the
two always agree.
"""

from __future__ import annotations

import os
import platform
import re
from pathlib import Path

CPU_FEATURES = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8", "asimddp", "i8mm")


def machine() -> dict:
    """CPU model, logical cores, the int8-relevant CPU features, onnxruntime, Python and OS."""
    import onnxruntime

    name, flags = platform.processor() or platform.machine(), set()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and name in ("", platform.machine(), platform.processor()):
                name = value.strip()
            elif key.strip() in ("flags", "Features") and not flags:
                flags = set(value.split())
    return {"cpu": name, "cores": os.cpu_count(), "cpu_features": [f for f in CPU_FEATURES if f in flags],
            "onnxruntime": onnxruntime.__version__, "python": platform.python_version(),
            "system": f"{platform.system()} {platform.machine()}"}


def machine_label(info: dict, threads: int) -> str:
    """A folder name for results of this machine: CPU model, cores and threads (e.g. amd-epyc-2c-2t)."""
    cpu = re.sub(r"\((r|tm)\)|\bcpu\b|\bprocessor\b|@.*", "", info["cpu"].lower())
    cpu = re.sub(r"[^a-z0-9]+", "-", cpu).strip("-") or "cpu"
    return f"{cpu}-{info['cores']}c-{threads}t"


def _number(value, digits: int | None = None) -> str:
    if value is None:
        return "-"
    return f"{value:.{digits}f}" if digits is not None else f"{value:g}"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    line = lambda cells: "  ".join(c.ljust(w) if i == 0 else c.rjust(w)  # noqa: E731
                                   for i, (c, w) in enumerate(zip(cells, widths))).rstrip()
    return [line(header), line(["-" * w for w in widths])] + [line(r) for r in rows]


def format_table(result: dict) -> str:
    """The result of :func:`qcompiler.bench.bench` as text: one row per model, then agreement rows."""
    models = result["models"]
    lines = [f"{result['machine']['cpu']}, onnxruntime {result['machine']['onnxruntime']}, "
             f"{result['threads']} thread(s), batch {result['batch']}, inputs: {result['inputs']}",
             "latency: 1 warm-up run, then the models in alternation (3 rounds); ms over all runs", ""]
    rows = []
    for entry in models:
        latency, memory = entry["latency_ms"], entry["memory_mb"] or {}
        rows.append([entry["model"], _number(entry["size_mb"], 3), _number(latency["median"], 4),
                     _number(latency["p90"], 4), _number(latency["min"], 4), str(latency["runs"]),
                     _number(entry["throughput_per_s"], 1), _number(entry["speedup"], 3),
                     _number(memory.get("peak"), 1), _number(memory.get("session"), 1)])
    lines += _table(["model", "size MB", "median ms", "p90 ms", "min ms", "runs", "items/s", "speedup",
                     "peak MB", "session MB"], rows)
    compared = [(entry["model"], output, numbers) for entry in models[1:]
                for output, numbers in (entry["agreement"] or {}).items()]
    if compared:
        lines += ["", f"agreement with {models[0]['model']} (SQNR '-' = identical outputs):"]
        lines += _table(["model", "output", "SQNR dB", "cos mean", "cos min", "top-1", "max abs"],
                        [[model, output, _number(n["sqnr_db"], 2), _number(n["cos_mean"], 6),
                          _number(n["cos_min"], 6), _number(n["top1"], 4), _number(n["max_abs"])]
                         for model, output, n in compared])
    return "\n".join(lines)
