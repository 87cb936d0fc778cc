"""Unchanged results: a baseline qcompiler (a git ref) and the current one compile every model alike.

For every model ``MODELS_DIR/<name>.onnx`` with calibration feeds in ``MODELS_DIR/data/calib_npz/<name>/``
(the realmodels kit's layout, light model-zoo graphs under ``coverage/`` included; ``models.py`` writes the
same layout), and every ``--targets`` x ``--pipelines``, both qcompilers compile it through the command
line with identical arguments::

    python -m qcompiler compile MODEL -o OUT --calib MODELS_DIR/data/calib_npz/<name> \\
        --pipeline P --target T --objective size -q

* baseline: ``--ref`` (default 030e083) taken out of this repository with ``git archive`` and
  ``pip install``-ed into its own venv under ``--work`` (default ``benchmarks/work/check_unchanged``,
  gitignored), with the dependency versions of the current environment as constraints (``pip freeze``),
  so that only qcompiler's own code differs between the two sides;
* new: the qcompiler that ``--python`` (default: this interpreter) imports, normally the current
  checkout installed with ``pip install -e .``. Its path is printed and recorded.

``--objective size`` and a pinned ``--target``, because the default ``--objective latency`` ends with a
latency guard that times float against int8 in onnxruntime and keeps whichever is faster on the
machine and moment of the compile: not deterministic, so two compiles of the same code may differ.
With ``size`` every layer stays as compiled and nothing is timed. ``--target auto`` would probe this
CPU, so the target is named: x86-vnni and x86-avx2 by default (both x86 profiles; they differ in the
weight range, 8-bit vs 7-bit).

Then, for each model / target / pipeline: the QuantizeLinear nodes of both outputs, and both outputs run
in onnxruntime of the current environment (CPU execution provider, one intra-op thread, default graph
optimizations) on EVERY calibration feed of the model; every output of every feed is compared: the
max abs difference must be 0 (NaN where the other has NaN counts as equal; shapes and dtypes must
match). A row is identical when every difference is 0 and the QuantizeLinear counts agree. Also
recorded, for diagnosis only: whether the two files are byte-identical (the refactor may rename or
reorder nodes without changing a result).

The baseline's outputs are cached in ``--work/baseline-<sha>/outputs/<pipeline>/<target>/<name>.onnx``
with a ``.json`` beside each (the compile command, time, the sha256 of the input model and of the
calibration feeds, the baseline venv's package versions): a rerun compiles only the new side, unless
the input, the feeds or the baseline's dependencies changed (``--rebuild`` forces both the venv and
the outputs). The new side's outputs go to ``--work/new/`` and are overwritten on every run.

    python benchmarks/check_unchanged.py [MODELS_DIR] [--ref 030e083] [--targets x86-vnni,x86-avx2]
        [--pipelines int8] [--only PATTERN] [--python PYTHON] [--work DIR] [--results DIR] [--rebuild]

MODELS_DIR defaults to /root/realmodels (the realmodels kit: ``cd ../shared/realmodels && ./fetch.sh
/root/realmodels``). Writes ``RESULTS/check_unchanged.{json,md}`` (``check_unchanged-<pipelines>`` for
other pipelines than ``int8``), RESULTS defaulting to ``benchmarks/results/<cpu>-<cores>c-1t/``.
Exit status 0 when every row is identical, 1 when any differs or fails to compile or to run.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
from compare_quantizers import list_models, quantize_nodes  # noqa: E402  (benchmarks/compare_quantizers.py)

from qcompiler.bench import machine, machine_label  # noqa: E402

DEFAULT_REF = "030e083"
DEFAULT_TARGETS = "x86-vnni,x86-avx2"


# ----------------------------------------------------------------------------------------------------------
# the two qcompilers


def _clean_env() -> dict:
    """The environment of a compile: no PYTHONPATH, and no current directory on sys.path (``-P``)."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env["PYTHONSAFEPATH"] = "1"  # python -m would otherwise import ./qcompiler of the working directory
    return env


def qcompiler_location(python: str, cwd: Path) -> str:
    """Where ``python`` imports qcompiler from (the check that each side runs the code it should)."""
    done = subprocess.run([python, "-c", "import qcompiler; print(qcompiler.__file__)"], cwd=cwd, env=_clean_env(),
                          capture_output=True, text=True, check=True)
    return str(Path(done.stdout.strip()).parent)


def freeze(python: str) -> dict[str, str]:
    """``name -> version`` of the regular (non-editable) distributions of an environment, qcompiler excluded."""
    done = subprocess.run([python, "-m", "pip", "freeze", "--exclude-editable", "--exclude", "onnx-qcompiler"],
                          capture_output=True, text=True, check=True)
    versions = {}
    for line in done.stdout.splitlines():
        name, sep, version = line.partition("==")
        if sep:
            versions[name.strip().lower().replace("_", "-")] = version.strip()
    return versions


def resolve_ref(ref: str) -> str:
    return subprocess.run(["git", "-C", str(REPO), "rev-parse", "--verify", f"{ref}^{{commit}}"],
                          capture_output=True, text=True, check=True).stdout.strip()


def baseline_venv(sha: str, work: Path, new_versions: dict[str, str], rebuild: bool) -> tuple[Path, dict]:
    """The baseline's venv (built once per ref): its python and its package versions.

    Rebuilt when ``rebuild`` or when a package it shares with the current environment has another version
    there (a difference in the outputs must come from qcompiler's code, not from onnx or numpy).
    """
    root = work / f"baseline-{sha[:12]}"
    python = root / "venv" / "bin" / "python"
    stamp = root / "venv.json"
    if python.exists() and stamp.exists() and not rebuild:
        versions = json.loads(stamp.read_text())["versions"]
        stale = {k: (v, new_versions[k]) for k, v in versions.items() if k in new_versions and new_versions[k] != v}
        if not stale:
            return python, versions
        print(f"baseline venv: dependency versions differ from the current environment {stale}: rebuilding",
              file=sys.stderr, flush=True)
    print(f"baseline venv: installing qcompiler {sha[:12]} into {root / 'venv'}", file=sys.stderr, flush=True)
    shutil.rmtree(root / "venv", ignore_errors=True)
    shutil.rmtree(root / "src", ignore_errors=True)
    (root / "src").mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(REPO), "archive", "--format=tar", sha], capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(root / "src")], input=archive.stdout, check=True)
    constraints = root / "constraints.txt"
    constraints.write_text("".join(f"{k}=={v}\n" for k, v in sorted(new_versions.items())))
    subprocess.run([sys.executable, "-m", "venv", str(root / "venv")], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                    "-c", str(constraints), str(root / "src")], check=True, env=_clean_env())
    versions = freeze(str(python))
    stamp.write_text(json.dumps({"ref": sha, "versions": versions}, indent=2) + "\n")
    return python, versions


def compile_command(python: str, model: Path, calib: Path, output: Path, pipeline: str, target: str) -> list[str]:
    return [python, "-m", "qcompiler", "compile", str(model), "-o", str(output), "--calib", str(calib),
            "--pipeline", pipeline, "--target", target, "--objective", "size", "-q"]


def run_compile(command: list[str], cwd: Path) -> dict:
    """Run one compile; its wall time, or its error (the last lines of its output)."""
    Path(command[command.index("-o") + 1]).unlink(missing_ok=True)
    start = time.perf_counter()
    done = subprocess.run(command, cwd=cwd, env=_clean_env(), capture_output=True, text=True)
    seconds = round(time.perf_counter() - start, 2)
    if done.returncode:
        tail = (done.stderr or done.stdout).strip().splitlines()[-5:]
        return {"compile_s": seconds, "error": f"exit {done.returncode}: " + " | ".join(tail)[-500:]}
    return {"compile_s": seconds}


def sha256(paths: list[Path]) -> str:
    digest = hashlib.sha256()
    for path in paths:
        digest.update(path.name.encode())
        with open(path, "rb") as stream:
            for block in iter(lambda: stream.read(1 << 22), b""):
                digest.update(block)
    return digest.hexdigest()


def baseline_output(python: Path, versions: dict, sha: str, work: Path, name: str, pipeline: str, target: str,
                    inputs: dict, rebuild: bool) -> tuple[Path, dict]:
    """The baseline's output for one model / target / pipeline: from the cache, or compiled now."""
    output = work / f"baseline-{sha[:12]}" / "outputs" / pipeline / target / f"{name}.onnx"
    stamp = output.with_suffix(".json")
    key = {"ref": sha, "pipeline": pipeline, "target": target, **{k: str(v) for k, v in inputs.items()},
           "venv": hashlib.sha256(json.dumps(versions, sort_keys=True).encode()).hexdigest()}
    if not rebuild and output.exists() and stamp.exists():
        cached = json.loads(stamp.read_text())
        if cached.get("key") == key and "error" not in cached["result"]:
            return output, {**cached["result"], "cached": True}
    output.parent.mkdir(parents=True, exist_ok=True)
    command = compile_command(str(python), inputs["model"], inputs["calib"], output, pipeline, target)
    result = run_compile(command, cwd=work)
    stamp.write_text(json.dumps({"key": key, "command": command, "result": result}, indent=2, default=str) + "\n")
    return output, {**result, "cached": False}


# ----------------------------------------------------------------------------------------------------------
# the comparison


def open_session(path: Path):
    """onnxruntime, CPU execution provider, one intra-op thread, default graph optimizations."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def difference(a: np.ndarray, b: np.ndarray) -> tuple[float, int]:
    """Max abs difference and the number of differing elements (NaN against NaN is equal)."""
    if a.shape != b.shape or a.dtype != b.dtype:
        return float("inf"), max(a.size, b.size)
    if a.dtype.kind not in "fiub":
        differ = a != b
        return (0.0 if not differ.any() else float("inf")), int(differ.sum())
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    both_nan = np.isnan(a64) & np.isnan(b64)
    diff = np.where(both_nan, 0.0, np.abs(a64 - b64))
    diff = np.where(np.isnan(diff), np.inf, diff)  # NaN on one side only
    return (float(diff.max()) if diff.size else 0.0), int((diff != 0).sum())


def compare_outputs(baseline: Path, new: Path, feeds: list[Path]) -> dict:
    """Both models on every feed: per output, the max abs difference and differing elements over all feeds."""
    sessions = [open_session(baseline), open_session(new)]
    names = [[o.name for o in s.get_outputs()] for s in sessions]
    if names[0] != names[1]:
        return {"error": f"outputs differ: {names[0]} vs {names[1]}"}
    outputs = {name: {"max_abs_diff": 0.0, "differing_elements": 0, "elements": 0, "feeds_differing": []}
               for name in names[0]}
    for index, path in enumerate(feeds):
        with np.load(path) as data:
            feed = {key: data[key] for key in data.files}
        results = [s.run(None, feed) for s in sessions]
        for name, a, b in zip(names[0], *results):
            worst, count = difference(np.asarray(a), np.asarray(b))
            entry = outputs[name]
            entry["max_abs_diff"] = max(entry["max_abs_diff"], worst)
            entry["differing_elements"] += count
            entry["elements"] += int(np.asarray(a).size)
            if count:
                entry["feeds_differing"].append(index)
    return {"feeds": len(feeds), "outputs": outputs,
            "max_abs_diff": max((e["max_abs_diff"] for e in outputs.values()), default=0.0)}


def check(name: str, pipeline: str, target: str, args: argparse.Namespace, base: tuple, new_python: str) -> dict:
    model = args.models_dir / f"{name}.onnx"
    calib = args.models_dir / "data" / "calib_npz" / name
    feeds = sorted(calib.glob("*.npz"))
    inputs = {"model": model, "calib": calib, "model_sha256": sha256([model]), "calib_sha256": sha256(feeds)}
    python, versions, sha = base
    entry: dict = {"model": name, "target": target, "pipeline": pipeline}
    print(f"{name} [{pipeline}, {target}]: baseline", file=sys.stderr, flush=True)
    base_out, entry["baseline"] = baseline_output(python, versions, sha, args.work, name, pipeline, target,
                                                  inputs, args.rebuild)
    print(f"{name} [{pipeline}, {target}]: new", file=sys.stderr, flush=True)
    new_out = args.work / "new" / pipeline / target / f"{name}.onnx"
    new_out.parent.mkdir(parents=True, exist_ok=True)
    entry["new"] = run_compile(compile_command(new_python, model, calib, new_out, pipeline, target), cwd=args.work)
    for side, path in (("baseline", base_out), ("new", new_out)):
        if "error" not in entry[side]:
            entry[side]["quantize_nodes"] = quantize_nodes(path)
            entry[side]["size_bytes"] = path.stat().st_size
    if "error" in entry["baseline"] or "error" in entry["new"]:
        entry["identical"] = False
        return entry
    entry["same_bytes"] = sha256([base_out]) == sha256([new_out])
    try:
        entry["comparison"] = compare_outputs(base_out, new_out, feeds)
    except Exception as exc:  # an output onnxruntime rejects is a result: not identical
        entry["comparison"] = {"error": f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:300]}"}
    entry["identical"] = ("error" not in entry["comparison"] and entry["comparison"]["max_abs_diff"] == 0
                          and entry["baseline"]["quantize_nodes"] == entry["new"]["quantize_nodes"])
    return entry


def markdown(results: dict) -> str:
    info = results["machine"]
    lines = [f"`{results['command']}`", "",
             f"baseline {results['baseline']['ref']} ({results['baseline']['sha'][:12]}) vs new "
             f"{results['new']['describe']} ({results['new']['qcompiler']}); {info['cpu']}, onnxruntime "
             f"{info['onnxruntime']} (CPU EP, 1 thread, default optimizations), every calibration feed; "
             f"`--objective size`; wall time {results['wall_s'] / 60:.1f} min; "
             f"{results['identical']} of {len(results['rows'])} identical", "",
             "| model | pipeline | target | feeds | QL baseline | QL new | max abs diff | identical | same bytes |"
             " compile s baseline / new |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for row in results["rows"]:
        comparison = row.get("comparison", {})
        error = row["baseline"].get("error") and f"baseline: {row['baseline']['error']}" or \
            row["new"].get("error") and f"new: {row['new']['error']}" or comparison.get("error")
        diff = f"error: {error[:100]}" if error else f"{comparison['max_abs_diff']:.6g}"
        base_s = f"{row['baseline']['compile_s']:.1f}" + (" (cached)" if row["baseline"].get("cached") else "")
        cells = [row["model"], row["pipeline"], row["target"], str(comparison.get("feeds", "")),
                 str(row["baseline"].get("quantize_nodes", "")), str(row["new"].get("quantize_nodes", "")), diff,
                 "yes" if row["identical"] else "**no**", {True: "yes", False: "no"}.get(row.get("same_bytes"), ""),
                 f"{base_s} / {row['new']['compile_s']:.1f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models_dir", type=Path, nargs="?", default=Path("/root/realmodels"))
    parser.add_argument("--ref", default=DEFAULT_REF, help=f"the baseline's git ref (default {DEFAULT_REF})")
    parser.add_argument("--targets", default=DEFAULT_TARGETS, help=f"comma-separated (default {DEFAULT_TARGETS})")
    parser.add_argument("--pipelines", default="int8", help="comma-separated named pipelines (default int8)")
    parser.add_argument("--only", default="*", help="comma-separated model names or shell patterns")
    parser.add_argument("--python", default=sys.executable, help="the new side's interpreter (default: this one)")
    parser.add_argument("--work", type=Path, default=HERE / "work" / "check_unchanged")
    parser.add_argument("--results", type=Path, help="default: benchmarks/results/<cpu>-<cores>c-1t")
    parser.add_argument("--rebuild", action="store_true", help="rebuild the baseline venv and recompile its outputs")
    args = parser.parse_args()
    args.models_dir, args.work = args.models_dir.resolve(), args.work.resolve()
    names = list_models(args.models_dir, args.only)
    if not names:
        parser.error(f"no model with calibration feeds in {args.models_dir} matches {args.only!r}")
    targets = [t for t in args.targets.split(",") if t]
    pipelines = [p for p in args.pipelines.split(",") if p]
    args.work.mkdir(parents=True, exist_ok=True)
    import onnxruntime

    onnxruntime.set_default_logger_severity(3)
    start = time.perf_counter()
    sha = resolve_ref(args.ref)
    new_versions = freeze(args.python)
    python, versions = baseline_venv(sha, args.work, new_versions, args.rebuild)
    base_location, new_location = qcompiler_location(str(python), args.work), qcompiler_location(args.python, args.work)
    print(f"baseline {args.ref} = {sha[:12]}: {base_location}\nnew: {new_location}", file=sys.stderr, flush=True)
    if Path(new_location).resolve().parent != REPO:
        print(f"note: the new side's qcompiler ({new_location}) is not this checkout's ({REPO})", file=sys.stderr)
    describe = subprocess.run(["git", "-C", str(REPO), "describe", "--always", "--dirty"], capture_output=True,
                              text=True).stdout.strip()
    results = {"command": " ".join(["python", "benchmarks/check_unchanged.py", *sys.argv[1:]]),
               "machine": machine(), "models_dir": str(args.models_dir), "targets": targets, "pipelines": pipelines,
               "objective": "size", "ort_session": {"provider": "CPUExecutionProvider", "intra_op_threads": 1,
                                                    "graph_optimization_level": "default (ORT_ENABLE_ALL)"},
               "baseline": {"ref": args.ref, "sha": sha, "qcompiler": base_location, "python": str(python),
                            "versions": versions},
               "new": {"describe": describe, "qcompiler": new_location, "python": args.python,
                       "versions": {k: new_versions[k] for k in versions if k in new_versions}},
               "rows": []}
    for pipeline in pipelines:
        for name in names:
            for target in targets:
                row = check(name, pipeline, target, args, (python, versions, sha), args.python)
                results["rows"].append(row)
                comparison = row.get("comparison", {})
                print(f"{name} [{pipeline}, {target}]: QL {row['baseline'].get('quantize_nodes')}/"
                      f"{row['new'].get('quantize_nodes')}, max abs diff {comparison.get('max_abs_diff')}, "
                      f"{'identical' if row['identical'] else 'DIFFERENT'}", file=sys.stderr, flush=True)
    results["identical"] = sum(row["identical"] for row in results["rows"])
    results["wall_s"] = round(time.perf_counter() - start, 1)
    folder = args.results or HERE / "results" / machine_label(results["machine"], 1)
    folder.mkdir(parents=True, exist_ok=True)
    stem = "check_unchanged" + ("" if pipelines == ["int8"] else "-" + "-".join(pipelines))
    (folder / f"{stem}.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    (folder / f"{stem}.md").write_text(markdown(results))
    print(markdown(results))
    print(f"wrote {folder}/{stem}.json and .md")
    return 0 if results["identical"] == len(results["rows"]) else 1


if __name__ == "__main__":
    sys.exit(main())
