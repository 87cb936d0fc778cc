"""Issue 17's generated-graph campaign: random valid ONNX graphs through canonicalize and every pipeline.

Draws ``--graphs`` models with the hypothesis strategy of ``tests/robustness/graphs.py`` (Conv, MatMul,
Gemm, Add, Mul, Concat, Reshape, Transpose, pooling, activations, LayerNormalization, Softmax, Gather,
Slice, If with captured values; four input interfaces) and checks each with ``check_graph``:
canonicalize keeps the outputs within 1e-4, each quantizing pipeline of ``tests/robustness/variants.py``
(int8, int8 with a sensitivity threshold, int8-transformer, auto, int8-dfq, w4a8, dynamic, weight-only
RTN/MatMulNBits and GPTQ/blocked DequantizeLinear; objective size) ends without an internal error, its
output loads and runs in onnxruntime with all optimizations, and the integer executor under this CPU's
profile equals onnxruntime bit for bit on every quantized activation. Each check runs in a worker
process (``tests/robustness/isolated.py``): a hard crash of onnxruntime is a ``crash`` problem of that
pipeline and the campaign goes on. Nothing is shrunk here: every graph with a problem is saved to
``--work`` (to be reduced into a regression test) and listed.

Per pipeline the JSON reports graphs tried, compiled, refused (with the messages), problems by kind,
the quantized activations compared and the seconds spent. ``--append`` adds to the counts already in ``--json`` (run the
campaign in chunks with different ``--seed``s).

    nice -n 10 python benchmarks/graph_campaign.py --graphs 400 [--seed 0] [--max-ops 8] [--pipelines P ...]
        [--json benchmarks/results/graph_campaign.json] [--work /tmp/graph_campaign] [--append]
    python benchmarks/graph_campaign.py --merge CHUNK.json ... --json benchmarks/results/graph_campaign.json

``--merge`` sums the reports of chunks run side by side (different ``--seed``s, separate ``--json``).
Next to the JSON goes a Markdown summary (per-pipeline table, refusals, findings).
``--recheck MODEL ...`` runs the checks again on graphs a campaign saved (with the feeds saved beside
them), to confirm a fix.
"""

from __future__ import annotations

import argparse
import collections
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import onnx
from hypothesis import HealthCheck, Phase, given, seed, settings

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.robustness: the generator and checks

from tests.robustness.graphs import PIPELINES, check_graph, graphs  # noqa: E402
from tests.robustness.isolated import IsolatedRunner  # noqa: E402


def empty_pipeline() -> dict:
    return {"graphs": 0, "compiled": 0, "refused": {}, "problems": {}, "quantized_compared": 0, "seconds": 0.0}


def merge(reports: list[dict]) -> dict:
    """One report of several chunks: counts summed, chunks and findings concatenated."""
    def add(into: dict, other: dict) -> None:
        for key, value in other.items():
            if isinstance(value, dict):
                add(into.setdefault(key, {}), value)
            elif isinstance(value, list):
                into[key] = into.get(key, []) + value
            else:
                into[key] = round(into.get(key, 0) + value, 1)

    total: dict = {}
    for report in reports:
        add(total, report)
    return total


def write_markdown(report: dict, path: Path) -> None:
    """The report as a table per pipeline, the refusals with their messages, and every finding."""
    chunks = report["chunks"]
    runs = ", ".join(f"{c['seed']}: {c['graphs']}, {c.get('seconds', '?')}" for c in chunks)
    lines = [f"# Generated-graph campaign ({report['graphs']} graphs)", "",
             f"Chunks (seed: graphs, seconds): {runs}; up to {max(c.get('max_ops', 0) for c in chunks)} operators per graph; machine "
             f"{chunks[-1].get('machine', '?')} (shared).", "",
             *[f"- seed {c['seed']}: {c['note']}" for c in chunks if c.get("note")], "",
             f"canonicalize: {report['canonicalize']['graphs']} graphs, problems {report['canonicalize']['problems'] or 'none'}",
             "", "| pipeline | graphs | compiled | refused | problems | quantized activations compared | seconds |",
             "|---|---|---|---|---|---|---|"]
    for name, stats in report["pipelines"].items():
        lines.append(f"| {name} | {stats['graphs']} | {stats['compiled']} | {sum(stats['refused'].values())} | "
                     f"{', '.join(f'{k} {v}' for k, v in stats['problems'].items()) or 0} | "
                     f"{stats['quantized_compared']} | {stats.get('seconds', '')} |")
    lines += ["", "## Refusals (one-line user errors)", ""]
    lines += [f"- {name}, {count} x: `{message}`" for name, stats in report["pipelines"].items()
              for message, count in stats["refused"].items()] or ["none"]
    lines += ["", "## Findings", ""]
    lines += [f"- {f['model']} ({', '.join(f['ops'])}): {f['problems']}" for f in report["findings"]] or ["none"]
    lines += ["", "## Operators drawn", "", ", ".join(f"{op} {n}" for op, n in report["ops"].items())]
    path.with_suffix(".md").write_text("\n".join(lines) + "\n")


def saved_feeds(path: Path) -> list[dict[str, np.ndarray]]:
    """The feeds saved beside a graph (``NAME.npz``, keys ``"i/input"``)."""
    data = np.load(path)
    count = 1 + max(int(k.split("/", 1)[0]) for k in data.files)
    return [{k.split("/", 1)[1]: data[k] for k in data.files if k.startswith(f"{i}/")} for i in range(count)]


def recheck(paths: list[Path]) -> None:
    """``check_graph`` on saved graphs, with the feeds saved beside them, else 4 standard-normal feeds for
    their (static) inputs."""
    from onnx import helper

    rng = np.random.default_rng(0)
    runner = IsolatedRunner()
    for path in paths:
        proto = onnx.load(str(path))
        if path.with_suffix(".npz").exists():
            findings = check_graph(proto, saved_feeds(path.with_suffix(".npz")), runner=runner)
            print(f"{path} (saved feeds): {len(findings.problems)} problem(s), {len(findings.refusals)} refusal(s) "
                  f"{[(p, k, m.strip().splitlines()[-1][:200]) for p, k, m in findings.problems]}", flush=True)
            continue
        shapes = {i.name: ([d.dim_value for d in i.type.tensor_type.shape.dim], i.type.tensor_type.elem_type)
                  for i in proto.graph.input}
        feeds = [{name: (rng.integers(0, 2, shape) if dtype == onnx.TensorProto.INT64 else rng.standard_normal(shape))
                  .astype(helper.tensor_dtype_to_np_dtype(dtype)) for name, (shape, dtype) in shapes.items()}
                 for _ in range(4)]
        findings = check_graph(proto, feeds, runner=runner)
        print(f"{path}: {len(findings.problems)} problem(s), {len(findings.refusals)} refusal(s) "
              f"{[(p, k, m.strip().splitlines()[-1][:200]) for p, k, m in findings.problems]}", flush=True)
    runner.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--graphs", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-ops", type=int, default=8)
    parser.add_argument("--json", type=Path, default=Path("benchmarks/results/graph_campaign.json"))
    parser.add_argument("--work", type=Path, default=Path("/tmp/graph_campaign"))
    parser.add_argument("--pipelines", nargs="+", default=list(PIPELINES), choices=list(PIPELINES))
    parser.add_argument("--append", action="store_true")
    parser.add_argument("--merge", nargs="+", type=Path, help="sum these chunk reports into --json and stop")
    parser.add_argument("--recheck", nargs="+", type=Path, help="check these saved graphs again and stop")
    args = parser.parse_args()
    if args.recheck:
        recheck(args.recheck)
        return
    if args.merge:
        merged = merge([json.loads(p.read_text()) for p in args.merge])
        merged["ops"] = dict(collections.Counter(merged["ops"]).most_common())
        args.json.write_text(json.dumps(merged, indent=1))
        write_markdown(merged, args.json)
        return
    args.work.mkdir(parents=True, exist_ok=True)
    report = json.loads(args.json.read_text()) if args.append and args.json.exists() else {
        "graphs": 0, "chunks": [], "canonicalize": {"graphs": 0, "problems": {}},
        "pipelines": {}, "ops": {}, "findings": []}
    for name in args.pipelines:
        report["pipelines"].setdefault(name, empty_pipeline())
    ops = collections.Counter(report["ops"])
    current = args.work / f"current_seed{args.seed}.onnx"
    start = time.perf_counter()
    count = 0
    chunk = {"seed": args.seed, "graphs": 0, "max_ops": args.max_ops, "pipelines": args.pipelines,
             "date": time.strftime("%Y-%m-%d %H:%M"), "machine": platform.processor() or platform.machine()}
    report["chunks"].append(chunk)  # kept up to date, so a chunk stopped early still says what it ran

    @seed(args.seed)
    @settings(max_examples=args.graphs, deadline=None, database=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(graphs(max_ops=args.max_ops))
    def campaign(case):
        nonlocal count
        proto, feeds = case
        count += 1
        chunk["graphs"] = count
        report["graphs"] += 1
        ops.update(n.op_type for n in proto.graph.node)
        onnx.save(proto, str(current))  # the graph being checked, on disk while it is
        np.savez(current.with_suffix(".npz"),
                 **{f"{i}/{k}": v for i, feed in enumerate(feeds) for k, v in feed.items()})
        findings = check_graph(proto, feeds, tuple(args.pipelines), runner=runner)
        report["canonicalize"]["graphs"] += 1
        for name in args.pipelines:
            stats = report["pipelines"][name]
            stats["graphs"] += 1
            stats["seconds"] = round(stats.get("seconds", 0.0) + findings.seconds.get(name, 0.0), 1)
            refused = [m for p, m in findings.refusals if p == name]
            broken = [k for p, k, _ in findings.problems if p == name]
            for message in refused:
                stats["refused"][message] = stats["refused"].get(message, 0) + 1
            for kind in broken:
                stats["problems"][kind] = stats["problems"].get(kind, 0) + 1
            stats["compiled"] += not refused and not any(k in ("exception", "multi-line user error", "crash")
                                                         for k in broken)
            stats["quantized_compared"] += findings.compared.get(name, 0)
        for name, kind, _ in findings.problems:
            if name == "canonicalize":
                report["canonicalize"]["problems"][kind] = report["canonicalize"]["problems"].get(kind, 0) + 1
        if findings.problems:
            path = args.work / f"seed{args.seed}_graph{count}.onnx"
            onnx.save(proto, str(path))
            np.savez(path.with_suffix(".npz"),
                     **{f"{i}/{k}": v for i, feed in enumerate(feeds) for k, v in feed.items()})
            report["findings"].append({"model": str(path), "ops": sorted({n.op_type for n in proto.graph.node}),
                                       "problems": [[p, k, m.strip().splitlines()[-1][:400]]
                                                    for p, k, m in findings.problems]})
            print(f"graph {count}: {findings.problems[0][0]} {findings.problems[0][1]}: "
                  f"{findings.problems[0][2].strip().splitlines()[-1][:300]}", flush=True)
        if count % 25 == 0:
            print(f"{count} graphs, {time.perf_counter() - start:.0f} s", flush=True)
            save()

    def save():
        report["ops"] = dict(ops.most_common())
        chunk["seconds"] = round(time.perf_counter() - start, 1)
        args.json.write_text(json.dumps(report, indent=1))
        write_markdown(report, args.json)

    runner = IsolatedRunner()
    campaign()
    runner.close()
    current.unlink(missing_ok=True)
    current.with_suffix(".npz").unlink(missing_ok=True)
    save()
    print(json.dumps({k: {"graphs": v["graphs"], "compiled": v["compiled"], "problems": v["problems"],
                          "seconds": v["seconds"]}
                      for k, v in report["pipelines"].items()}, indent=1))


if __name__ == "__main__":
    main()
