"""``qcompiler compile-many MANIFEST.toml``: models x targets x options -> outputs and one summary table.

The manifest (TOML; paths relative to ``root``, which is relative to the manifest's folder)::

    root = "/root/realmodels"          # default: the manifest's folder
    output_dir = "fleet"               # relative to the manifest's folder (default "compiled")
    targets = ["x86-vnni", "x86-avx2"] # every model, unless it names its own
    pipeline = "int8"                  # default pipeline
    [options]                          # CompileOptions fields for every job
    objective = "size"

    [[models]]
    path = "ocr_rec_ppocrv4.onnx"
    calib = "data/calib_npz/ocr_rec_ppocrv4"
    name = "ocr_rec"                   # default: the file's stem
    pipeline = "int8-transformer"      # optional, per model
    targets = ["x86-avx2"]             # optional, per model
    options = { exclude = ["Softmax"] } # optional, merged over [options]

Every (model, target) is a job: one ``qcompiler.compile`` writing ``<output_dir>/<name>.<target>.onnx``,
run as a task of the executor (Ray workers, or this process one after the other). Each output is
written atomically by the job that made it (``qcompiler.ir.save``: a staging folder, then a rename), so
a job killed mid-write (a worker lost; Ray runs it again) leaves no partial model; its staging folder
is removed when the fleet ends. A job that fails is a row of the table with its error; the others still
run. The table (``summary.md``, and ``summary.json`` with every number) is written atomically last.
"""

from __future__ import annotations

import json
import shutil
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import QcompilerError, UserError
from ..options import CompileOptions
from . import Executor, LocalExecutor

MANIFEST_KEYS = {"root", "output_dir", "targets", "pipeline", "options", "models"}
MODEL_KEYS = {"path", "calib", "name", "pipeline", "targets", "options"}


@dataclass(frozen=True)
class Job:
    """One compile of the fleet."""

    name: str
    model: str
    target: str
    pipeline: str
    output: str
    options: dict[str, Any] = field(default_factory=dict)


def _fail(manifest: Path, message: str) -> UserError:
    return UserError(f"{manifest}: {message}")


def read_manifest(path: str | Path) -> tuple[list[Job], Path]:
    """The jobs of a manifest (every model x its targets) and the output folder; every mistake is a
    :class:`UserError` naming the manifest, the model and the key."""
    manifest = Path(path)
    try:
        document = tomllib.loads(manifest.read_text(encoding="utf-8"))
    except OSError as exc:
        raise _fail(manifest, f"cannot read ({exc.strerror or exc})") from None
    except tomllib.TOMLDecodeError as exc:
        raise _fail(manifest, f"not valid TOML ({exc})") from None
    unknown = set(document) - MANIFEST_KEYS
    if unknown:
        raise _fail(manifest, f"unknown key(s) {', '.join(sorted(unknown))}; expected {', '.join(sorted(MANIFEST_KEYS))}")
    here = manifest.resolve().parent
    root = here / document.get("root", ".")
    output_dir = here / document.get("output_dir", "compiled")
    models = document.get("models")
    if not isinstance(models, list) or not models:
        raise _fail(manifest, "no [[models]] entry")
    jobs, seen = [], set()
    for index, entry in enumerate(models):
        where = f"models[{index}]"
        if not isinstance(entry, dict) or "path" not in entry:
            raise _fail(manifest, f"{where}: needs a path")
        if set(entry) - MODEL_KEYS:
            raise _fail(manifest, f"{where}: unknown key(s) {', '.join(sorted(set(entry) - MODEL_KEYS))}")
        model = root / entry["path"]
        if not model.is_file():
            raise _fail(manifest, f"{where}: no model file {model}")
        options = {**document.get("options", {}), **entry.get("options", {})}
        if "calib" in entry:
            options["calib"] = str(root / entry["calib"])
        if "target" in options:
            raise _fail(manifest, f"{where}: give targets as 'targets = [...]', not as an option")
        try:
            CompileOptions(**options)  # checked now, before any job runs
        except TypeError as exc:
            raise _fail(manifest, f"{where}: {exc}") from None
        except UserError as exc:
            raise _fail(manifest, f"{where}: {exc}") from None
        targets = entry.get("targets", document.get("targets", ["auto"]))
        name = entry.get("name", model.stem)
        for target in targets:
            output = output_dir / f"{name}.{target}.onnx"
            if output in seen:
                raise _fail(manifest, f"{where}: two jobs would write {output}; give the models distinct names")
            seen.add(output)
            jobs.append(Job(name, str(model), target, entry.get("pipeline", document.get("pipeline", "int8")),
                            str(output), {**options, "target": target}))
    return jobs, output_dir


def run_job(_shared: Any, job: Job) -> dict[str, Any]:
    """One task: compile ``job`` (its output written atomically) and return its row of the table."""
    from ..compiler import compile as compile_model

    start = time.perf_counter()
    row: dict[str, Any] = {"model": job.name, "target": job.target, "pipeline": job.pipeline, "output": job.output,
                           "input_bytes": Path(job.model).stat().st_size}
    try:
        model = compile_model(job.model, job.output, pipeline=job.pipeline, **job.options)
    except QcompilerError as exc:
        return {**row, "status": f"failed: {exc}", "seconds": time.perf_counter() - start}
    guard = model.plan.reports.get("latency_guard", {})
    placed = model.plan.reports.get("latency_placement")
    if placed:  # int8 region by region: "mixed" when some regions went back to float
        kept = ("int8" if placed["all_int8"] else
                "float" if not placed["int8_regions"] + placed["int8_units"] else "mixed")
        guard = {"kept": kept, "speedup": placed["float_ms"] / placed["predicted_ms"]}
    return {**row, "status": "ok", "output_bytes": Path(job.output).stat().st_size,
            "quantized_activations": sum(n.op_type == "QuantizeLinear" for n in model.graph),
            "kept": guard.get("kept", "int8" if any(n.op_type == "DequantizeLinear" for n in model.graph) else "float"),
            "speedup": guard.get("speedup"), "target_resolved": model.plan.target.name if model.plan.target else None,
            "seconds": time.perf_counter() - start}


def format_summary(rows: list[dict[str, Any]]) -> str:
    """The table as Markdown."""
    lines = ["| model | target | pipeline | status | input bytes | output bytes | ratio | Q nodes | kept | s |",
             "|---|---|---|---|---:|---:|---:|---:|---|---:|"]
    for r in rows:
        ok = r["status"] == "ok"
        lines.append(f"| {r['model']} | {r['target']} | {r['pipeline']} | {r['status']} | {r['input_bytes']:,} | "
                     + (f"{r['output_bytes']:,} | {r['input_bytes'] / r['output_bytes']:.2f}x | "
                        f"{r['quantized_activations']} | {r['kept']} | " if ok else " |  |  |  | ")
                     + f"{r['seconds']:.1f} |")
    return "\n".join(lines)


def compile_many(manifest: str | Path, executor: Executor | None = None) -> tuple[list[dict[str, Any]], Path]:
    """Run every job of ``manifest`` on ``executor`` (None: this process); returns the rows and the
    output folder, where ``summary.md`` and ``summary.json`` are written."""
    from ..ir.serde import write_atomically

    jobs, output_dir = read_manifest(manifest)
    output_dir.mkdir(parents=True, exist_ok=True)
    try:
        rows = (executor or LocalExecutor()).map(run_job, jobs)
    finally:
        for job in jobs:  # staging folders of attempts that died mid-write (ir.save's ".<name>.*")
            for stale in output_dir.glob(f".{Path(job.output).name}.*"):
                shutil.rmtree(stale, ignore_errors=True)
    write_atomically(output_dir / "summary.json", json.dumps(rows, indent=1) + "\n")
    write_atomically(output_dir / "summary.md", format_summary(rows) + "\n")
    return rows, output_dir
