"""Latency-aware placement on real models: the tables of issue 15's acceptance lines 1-5.

For every model of the realmodels kit that has calibration feeds (``MODELS_DIR/<name>.onnx``, coverage
models ``MODELS_DIR/coverage/light_*.onnx``, feeds in ``MODELS_DIR/data/calib_npz/<name>/``), each in a
child process that reports its wall time (``qcompiler.bench.run_child``):

* ``fp32``: the canonicalized float model (``qcompiler optimize``);
* ``default``: today's default before placement, the ``auto`` pipeline with the whole-model latency
  guard (``keep-float-reference`` ... ``latency-guard``), for compile time and accuracy;
* ``placement``: ``qcompiler compile`` (``auto``, objective latency: placement), with a fresh latency
  cache (``WORK/cache/<name>.json``), so its compile time includes measuring every region;
* ``ort``: onnxruntime ``quantize_static`` U8S8, per-channel weights, reduce_range (``quantizers.py``);
* ``reference``: the float graph the placement compile measures against, the ``auto`` pipeline's passes before
  ``assign-precision`` (``canonicalize`` and the float rewrites of the int8 pipelines: one HardSwish, scalar
  affines folded into convolutions), for line 3.

Then, per model:

1. latency of fp32, ort, default and placement on the first calibration feed, in alternation
   (``qcompiler.latency.measure_latencies``, 10 rounds); placement over the faster of fp32 and ort, paired round
   by round (``qcompiler.latency.paired_ratio``), must be <= 1.02 (``reference`` runs in the same alternation);
   and (``--evaluate``) the kit's task metric of default and placement (its ``evaluate.py``);
2. the per-region table of placement (regions, float and int8 ms, the choice) from the compile report;
3. the compile's predicted latency of placement (and the regions' gains summed) against the measured one,
   alone and side by side, and the predicted ratio to the compile's float graph against placement over
   ``reference`` side by side, paired round by round;
4. ``--compiles`` compiles with the cache of the first, while a child process keeps one core busy: the
   SHA-256 of every output and the decision against the idle compile's; and one compile with a fresh
   cache under the same load (its decision against the idle one: what the statistical test alone gives);
5. compile time of placement (fresh cache) against the default's, paired: ``--compile-pairs`` pairs of the
   two compiles one after the other (the first pair is the one above; the order alternates), the ratio the
   median of the pairs' ratios, since this VM's speed changes for minutes at a time and a compile in its
   slow phase takes 1.5x; and of a placement compile, idle, with the cache the first filled (what every later
   compile of the model on this machine pays).

And, for the models where onnxruntime's output was faster in the suite (MiniLM, squeezenet, densenet;
``--gap`` for others): the op types in onnxruntime's integer pattern (every activation input dequantized,
every output quantized) beyond qcompiler's all-int8 output (``--objective size``), and whether those we
never feed integers pay off: onnxruntime's output against onnxruntime's with them left out
(``op_types_to_quantize``), side by side. ``--gap-only`` runs just that analysis (results under
``gap_only``).

    python benchmarks/placement.py [--models-dir /root/realmodels] [--only PATTERNS] [--threads 2]
        [--compiles 5] [--compile-pairs 3] [--no-evaluate] [--gap PATTERNS] [--gap-only] [--work DIR]
        [--results DIR] [--force]

Resumable: each model's entry is written to ``RESULTS/placement_<ISA>.json`` (``avx2``, ``avx512vnni``, ...:
:func:`isa`) when it is done and skipped on the next run (``--force`` measures again). ``RESULTS`` defaults to
``benchmarks/results``; ``placement_<ISA>.md`` holds the tables.
"""

from __future__ import annotations

import argparse
import fnmatch
import hashlib
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

GUARDED = ("digits_cnn", "ocr_cls_ppocr_mobile_v2", "coverage/light_shufflenet", "crepe_tiny")
"""The models today's whole-model guard keeps float (line 2's tables)."""
GAP = "minilm_l6,coverage/light_squeezenet,coverage/light_densenet121"
EVALUATOR = ("/tmp/realmodels-venv/bin/python", "/work/shared/realmodels/evaluate.py")
ROUNDS = 10


# -- in the child ------------------------------------------------------------------------------------
def compile_job(kind: str, model: str, calib: str, output: str, threads: int, cache: str,
                exclude_ops: list[str] | None = None) -> dict:
    """One compile (run in a child process): see the module docstring for ``kind``."""
    import qcompiler

    if kind == "fp32":
        qcompiler.compile(model, output, pipeline="canonicalize")
        return {}
    if kind == "ort":
        import quantizers

        return quantizers.compile_model("ort_u8s8_rr", model, calib, output, "mse", threads)
    if kind == "ort_without":
        return ort_without(model, calib, output, exclude_ops or [])
    if kind == "size":
        qcompiler.compile(model, output, calib=calib, objective="size")
        return {}
    if kind == "reference":
        from qcompiler import passes as lib
        from qcompiler.options import CompileOptions
        from qcompiler.pipelines import Pipeline, resolve

        resolved = resolve("auto", CompileOptions(calib=calib, threads=threads))
        first = next(i for i, p in enumerate(resolved.passes) if isinstance(p, lib.AssignPrecision))
        qcompiler.compile(model, output, pipeline=Pipeline(resolved.passes[:first], honours=resolved.honours))
        return {}
    if kind == "default":
        from qcompiler import passes as lib
        from qcompiler.options import CompileOptions
        from qcompiler.pipelines import Pipeline, resolve

        resolved = resolve("auto", CompileOptions(calib=calib, objective="size", threads=threads))
        after = next(i for i, p in enumerate(resolved.passes) if isinstance(p, lib.InferShapes)) + 1
        passes = (resolved.passes[:after] + [lib.KeepFloatReference()] + resolved.passes[after:]
                  + [lib.LatencyGuard(data=calib, threads=threads)])
        compiled = qcompiler.compile(model, output, pipeline=Pipeline(passes, honours=resolved.honours))
        return {"guard": compiled.plan.reports.get("latency_guard")}
    compiled = qcompiler.compile(model, output, calib=calib, threads=threads, latency_cache=cache)
    return {"placement": compiled.plan.reports["latency_placement"]}


def ort_without(model: str, calib: str, output: str, exclude_ops: list[str]) -> dict:
    """onnxruntime's U8S8 per-channel output with ``exclude_ops`` left float (``op_types_to_quantize``)."""
    import onnx
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.registry import QDQRegistry
    from quantizers import NpzReader, ort_preprocess

    prepared, done = ort_preprocess(Path(model), Path(output).with_suffix(".pre.onnx"))
    present = {n.op_type for n in onnx.load(str(prepared)).graph.node}
    ops = sorted((set(QDQRegistry) & present) - set(exclude_ops))
    quantize_static(str(prepared), output, NpzReader(Path(calib)), quant_format=QuantFormat.QDQ,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=True,
                    reduce_range=True, op_types_to_quantize=ops)
    for leftover in Path(output).parent.glob(Path(output).stem + ".pre*.onnx"):
        leftover.unlink()
    return {"ort_preprocess": done, "op_types_to_quantize": ops}


# -- in the parent -----------------------------------------------------------------------------------
def run_compile(kind: str, name: str, args: argparse.Namespace, cache: Path | None = None, tag: str = "",
                exclude_ops: list[str] | None = None) -> dict:
    from qcompiler.bench import ChildError, run_child

    model, calib = args.models_dir / f"{name}.onnx", args.models_dir / "data" / "calib_npz" / name
    output = args.work / (tag or kind) / f"{name}.onnx"
    output.parent.mkdir(parents=True, exist_ok=True)
    output.unlink(missing_ok=True)
    print(f"{name}: compile {tag or kind}", file=sys.stderr, flush=True)
    try:
        child = run_child(f"{Path(__file__).resolve()}:compile_job", kind, str(model.resolve()), str(calib.resolve()),
                          str(output.resolve()), args.threads, str(cache or ""), exclude_ops)
    except ChildError as exc:
        return {"error": str(exc)[-400:]}
    return {"compile_s": round(child.seconds, 2), "path": str(output), **child.value,
            "sha256": hashlib.sha256(output.read_bytes()).hexdigest()}


def first_feed(args: argparse.Namespace, name: str) -> dict[str, np.ndarray]:
    calib = args.models_dir / "data" / "calib_npz" / name
    with np.load(sorted(calib.glob("*.npz"))[0]) as data:
        return {key: data[key] for key in data.files}


def side_by_side(paths: dict[str, str], feed: dict, args: argparse.Namespace) -> dict:
    """The models' latencies measured in alternation (``qcompiler.latency.Latency`` by key)."""
    from qcompiler.latency import measure_latencies

    timings = measure_latencies(list(paths.values()), feed, threads=args.threads, runs=max(1, args.runs // ROUNDS),
                                min_seconds=args.seconds, rounds=ROUNDS)
    return dict(zip(paths, timings))


def medians(latencies: dict) -> dict[str, float]:
    return {key: round(t.median_ms, 4) for key, t in latencies.items()}


def int8_op_types(path: str, outputs: bool = True) -> dict[str, int]:
    """Op types of the nodes every activation input of which is dequantized and (``outputs``) every output
    quantized and read by nothing else (onnxruntime's QDQ pattern: what its fusions run on integers), with
    counts; without ``outputs`` also those with float outputs (MatMulIntegerToFloat)."""
    import onnx

    graph = onnx.load(path, load_external_data=False).graph
    constants = {t.name for t in graph.initializer}
    constants |= {n.output[0] for n in graph.node if n.op_type == "DequantizeLinear" and n.input[0] in constants}
    dequantized = {n.output[0] for n in graph.node if n.op_type == "DequantizeLinear" and n.input[0] not in constants}
    readers: dict[str, list[str]] = {}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node.op_type)
    counts: dict[str, int] = {}
    for node in graph.node:
        activations = [x for x in node.input if x and x not in constants]
        if node.op_type in ("QuantizeLinear", "DequantizeLinear") or not activations:
            continue
        if all(x in dequantized for x in activations) and (not outputs or all(
                readers.get(y) and set(readers[y]) == {"QuantizeLinear"} for y in node.output if y)):
            counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return dict(sorted(counts.items()))


def decision(report: dict) -> list[str]:
    """The regions (and layers alone) a placement report keeps int8, by their first layer."""
    return sorted(r["first"] for r in report["regions"] if r["choice"] == "int8")


def evaluate(name: str, folder: Path, args: argparse.Namespace) -> dict:
    """The kit's task metric of the candidate ``folder/<name>.onnx`` (and of FP32)."""
    out = args.work / "eval" / f"{folder.name}-{name.replace('/', '_')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    print(f"{name}: evaluate {folder.name}", file=sys.stderr, flush=True)
    done = subprocess.run([*EVALUATOR, str(args.models_dir), "--cand", str(folder), "--only", name, "--json", str(out),
                           "--threads", str(args.threads)], capture_output=True, text=True)
    if done.returncode or not out.exists():
        return {"error": (done.stderr or done.stdout)[-300:]}
    entry = json.loads(out.read_text())["models"][name]
    return {"metric": entry.get("metric"), "fp32": entry.get("fp32"), "cand": entry.get("cand")}


def reproducibility(name: str, args: argparse.Namespace, cache: Path, idle: dict) -> dict:
    """Line 4: ``--compiles`` compiles with ``cache`` and one with a fresh cache, one core kept busy."""
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        runs = [run_compile("placement", name, args, cache, tag=f"repeat{i}") for i in range(args.compiles)]
        fresh_cache = args.work / "cache" / f"{name.replace('/', '_')}.loaded.json"
        fresh_cache.unlink(missing_ok=True)
        fresh = run_compile("placement", name, args, fresh_cache, tag="loaded")
    finally:
        busy.kill()
        busy.wait()
    ok = [r for r in runs if "error" not in r]
    return {"compiles": len(runs), "errors": len(runs) - len(ok),
            "identical": len({r["sha256"] for r in ok} | {idle["sha256"]}) == 1 and len(ok) == len(runs),
            "same_decision_with_cache": all(decision(r["placement"]) == decision(idle["placement"]) for r in ok),
            "fresh_cache_under_load": {
                "same_decision": decision(fresh["placement"]) == decision(idle["placement"]) if "error" not in fresh
                else None,
                "int8_regions": fresh.get("placement", {}).get("int8_regions"), "compile_s": fresh.get("compile_s")}}


def compile_pairs(name: str, args: argparse.Namespace, entry: dict) -> list[tuple[float, float]]:
    """Line 5: (default, placement with a fresh cache) compile seconds, ``--compile-pairs`` pairs: ``entry``'s
    own, then more with the order alternating (placement first in the second); a failed compile ends them."""
    pairs = [(entry["default"]["compile_s"], entry["placement"]["compile_s"])]
    for i in range(1, args.compile_pairs):
        fresh = args.work / "cache" / f"{name.replace('/', '_')}.timing.json"
        fresh.unlink(missing_ok=True)
        runs = {}
        for kind in ("placement", "default") if i % 2 else ("default", "placement"):
            runs[kind] = run_compile(kind, name, args, fresh if kind == "placement" else None, tag=f"{kind}-timing")
        if any("error" in r for r in runs.values()):
            break
        pairs.append((runs["default"]["compile_s"], runs["placement"]["compile_s"]))
    return pairs


def measure(name: str, args: argparse.Namespace) -> dict:
    cache = args.work / "cache" / f"{name.replace('/', '_')}.json"
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.unlink(missing_ok=True)
    entry = {kind: run_compile(kind, name, args, cache if kind == "placement" else None)
             for kind in ("fp32", "ort", "default", "placement", "reference")}
    ready = {k: v["path"] for k, v in entry.items() if "error" not in v}
    print(f"{name}: latency of {', '.join(ready)}", file=sys.stderr, flush=True)
    from qcompiler.latency import paired_ratio

    feed = first_feed(args, name)
    latencies = side_by_side(ready, feed, args)
    entry["latency_ms"] = medians(latencies)
    entry["latency_rounds_ms"] = {key: [round(x, 4) for x in t.round_ms] for key, t in latencies.items()}
    if {"placement", "fp32", "ort"} <= set(latencies):
        entry["paired_ratio"] = round(paired_ratio(latencies["placement"], [latencies["fp32"], latencies["ort"]]), 4)
    placed = entry["placement"].get("placement")
    if placed:
        from qcompiler.placement import whole_model_ms

        alone = whole_model_ms(ready["placement"], feed, threads=args.threads)
        measured = entry["latency_ms"]["placement"]
        error = lambda ms, truth: round(abs(ms - truth) / truth, 4)  # noqa: E731
        entry["prediction"] = {"predicted_ms": round(placed["predicted_ms"], 4), "alone_ms": round(alone, 4),
                               "alone_error": error(placed["predicted_ms"], alone), "measured_ms": measured,
                               "error": error(placed["predicted_ms"], measured),
                               "additive_ms": round(placed["additive_ms"], 4),
                               "additive_error": error(placed["additive_ms"], measured)}
        ratio = paired_ratio(latencies["placement"], [latencies["reference" if "reference" in latencies else "fp32"]])
        predicted = placed["predicted_ms"] / placed["float_ms"]
        entry["prediction"].update(predicted_ratio=round(predicted, 4), measured_ratio=round(ratio, 4),
                                   ratio_error=error(predicted, ratio))
        if args.compiles:
            entry["reproducibility"] = reproducibility(name, args, cache, entry["placement"])
    if "error" not in entry["default"] and "error" not in entry["placement"]:
        entry["compile_pairs"] = compile_pairs(name, args, entry)
        entry["compile_ratio"] = round(float(np.median([p / d for d, p in entry["compile_pairs"]])), 2)
        default_s = float(np.median([d for d, _ in entry["compile_pairs"]]))
        cached = run_compile("placement", name, args, cache, tag="cached")  # the cache the first compile filled
        if "error" not in cached:
            entry["compile_cached"] = {"compile_s": cached["compile_s"], "identical": cached["sha256"] ==
                                       entry["placement"]["sha256"], "ratio": round(cached["compile_s"] / default_s, 2)}
    if args.evaluate:
        entry["accuracy"] = {kind: evaluate(name, args.work / kind, args) for kind in ("default", "placement")
                             if kind in ready}
    if any(fnmatch.fnmatch(name, p) for p in args.gap.split(",")):
        entry["gap"] = gap(name, args, entry)
    return entry


def gap(name: str, args: argparse.Namespace, entry: dict) -> dict:
    """The op types onnxruntime runs in int8 that our all-int8 output leaves float, and their payoff."""
    size = run_compile("size", name, args)
    if "error" in size or "error" in entry["ort"]:
        return {"error": size.get("error") or entry["ort"]["error"]}
    return gap_of(name, args, size["path"], entry["ort"]["path"])


def gap_of(name: str, args: argparse.Namespace, size: str, ort: str) -> dict:
    """:func:`gap` of our all-int8 output ``size`` and onnxruntime's ``ort``: the op types in onnxruntime's
    integer pattern that are not in ours (more than ours by count), and, for those we never feed integers,
    onnxruntime's latency with and without them."""
    ours, theirs = int8_op_types(size), int8_op_types(ort)
    only_ort = {op: n - ours.get(op, 0) for op, n in theirs.items() if n > ours.get(op, 0)}
    never = sorted(set(only_ort) - set(int8_op_types(size, outputs=False)))
    result = {"ours_all_int8": ours, "ort": theirs, "only_ort": only_ort, "left_out": never}
    if never:
        without = run_compile("ort_without", name, args, tag="ort_without", exclude_ops=never)
        if "error" not in without:
            paths = {"ort": ort, "ort_without": without["path"], "size": size}
            result["latency_ms"] = medians(side_by_side(paths, first_feed(args, name), args))
    return result


# -- report ------------------------------------------------------------------------------------------
def _ms(entry: dict, key: str) -> str:
    value = entry.get("latency_ms", {}).get(key)
    return f"{value:.3f}" if value is not None else "-"


def isa(info: dict) -> str:
    """The widest int8-relevant ISA of ``qcompiler.bench.machine``'s features, for the results' file names
    (placement decisions are the machine's: an AVX2 CPU and a VNNI one keep different regions)."""
    return (info["cpu_features"] or [info["system"].split()[-1]])[-1].replace("_", "")


def _score(accuracy: dict, kind: str) -> str:
    cand = (accuracy.get(kind) or {}).get("cand") or {}
    keys = [k for k in ("same_output", "cos_mean", "sqnr_db") if k in cand]
    return " / ".join(f"{cand[k]:.3f}" if isinstance(cand[k], float) else str(cand[k]) for k in keys) or "-"


def _verdict(entry: dict) -> str:
    """Line 1's verdict: the paired ratio <= 1.02, or placement's output is the canonicalized FP32 file byte for
    byte and FP32 the faster (then the ratio only measures the measurement's noise between identical files)."""
    if entry["paired_ratio"] <= 1.02:
        return "yes"
    latency = entry["latency_ms"]
    if entry["placement"].get("sha256") == entry["fp32"].get("sha256") and latency["fp32"] <= latency["ort"]:
        return "yes (the FP32 file)"
    return "NO"


def markdown(results: dict) -> str:
    models = results["models"]
    lines = [f"# Latency-aware placement ({results['machine']['cpu']}, {results['threads']} threads, onnxruntime "
             f"{results['machine']['onnxruntime']})", "", *([results["note"], ""] if results.get("note") else []),
             "## Line 1: latency against the faster of FP32 and onnxruntime U8S8 (ms, side by side)", "",
             "medians of all runs; placement / best: the median over rounds of placement's latency over the "
             "faster model's of fp32 and ort (by their own paired ratio) in the same round "
             "(`qcompiler.latency.paired_ratio`)", "",
             "| model | fp32 | ort u8s8 | default (guard) | placement | placement / best | <= 1.02 | default acc "
             "(same / cos / sqnr) | placement acc |", "|---|---|---|---|---|---|---|---|---|"]
    for name, e in models.items():
        ratio = e.get("paired_ratio")
        lines.append(f"| {name} | {_ms(e, 'fp32')} | {_ms(e, 'ort')} | {_ms(e, 'default')} | {_ms(e, 'placement')} | "
                     f"{ratio:.3f} | {_verdict(e)} | {_score(e.get('accuracy', {}), 'default')} | "
                     f"{_score(e.get('accuracy', {}), 'placement')} |" if ratio else f"| {name} | failed |||||||")
    lines += ["", "## Line 2: regions of the models the whole-model guard keeps float", ""]
    for name in GUARDED:
        placed = models.get(name, {}).get("placement", {}).get("placement")
        if not placed:
            continue
        lines += [f"### {name}", "", "| region | layers | float ms | int8 ms | gain ms | t | rounds | choice |",
                  "|---|---|---|---|---|---|---|---|"]
        for r in placed["regions"]:
            if "float_ms" not in r:
                lines.append(f"| {r['region']} {r['first']} ({r['ops']}) | {r['layers']} | - | - | - | - | - | "
                             f"{r['choice']} ({r['source']}) |")
                continue
            where = r["region"] if r.get("parent") is None else f"{r['region']} (alone, in {r['parent']})"
            lines.append(f"| {where} {r['first']} ({r['ops']}) | {r['layers']} | {r['float_ms']:.4f} | "
                         f"{r['int8_ms']:.4f} | {r['float_ms'] - r['int8_ms']:+.4f} | {r['t']:+.1f} | {r['rounds']} | "
                         f"{r['choice']} |")
        lat, whole = models[name]["latency_ms"], placed.get("whole_model")
        lines += ["", f"{placed['int8_regions']}/{placed['regions_total']} regions int8, {placed['int8_units']} "
                  f"layer(s) int8 alone; whole model: fp32 "
                  f"{lat.get('fp32')} ms, placement {lat.get('placement')} ms "
                  f"({lat['fp32'] / lat['placement']:.2f}x)" if "placement" in lat else "", ""]
        if whole:
            from qcompiler.placement import WHOLE_RESULTS

            lines += [f"As whole models in the compile: {WHOLE_RESULTS[placed['result']]} (float "
                      f"{whole['float_ms']:.3f} ms, {'placed' if placed['result'] == 'placed' else 'all-int8'} "
                      f"{whole['int8_ms']:.3f} ms, mean log ratio {whole['log_ratio']:+.3f}, t {whole['t']:+.1f}, "
                      f"{whole['rounds']} rounds)", ""]
        mixed = placed.get("placed_model")
        if mixed and placed["result"] != "placed":
            lines += [f"The regions faster alone, placed together in the model: float {mixed['float_ms']:.3f} ms, "
                      f"placed {mixed['int8_ms']:.3f} ms (t {mixed['t']:+.1f}): "
                      + ("faster than float, not than all-int8" if mixed["int8"] else "not faster than float"), ""]
    lines += ["## Line 3: predicted against measured latency of the placed model", "",
              "predicted: the compile's latency of the chosen configuration (the placed model measured whole in "
              "the compile's check, or the float model's where every region stays float); alone: the placed model "
              "measured by itself after the compile (`qcompiler.placement.whole_model_ms`); side by side: line 1's "
              "alternation of the models; additive: the float latency minus the chosen regions' gains as the "
              "regions measured alone, against side by side; ratio: the compile's predicted latency over its float "
              "latency against placement over the same float graph (`reference`: the auto pipeline before "
              "assign-precision) side by side, paired round by round (what a VM whose speed changes for seconds "
              "at a time does not move)", "",
              "| model | predicted ms | alone ms | error | side by side ms | error | additive ms | error | "
              "predicted ratio | measured ratio | error |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {n} | {p['predicted_ms']:.3f} | {p['alone_ms']:.3f} | {p['alone_error']:.1%} | "
              f"{p['measured_ms']:.3f} | {p['error']:.1%} | {p['additive_ms']:.3f} | {p['additive_error']:.1%} | "
              f"{p['predicted_ratio']:.3f} | {p['measured_ratio']:.3f} | {p['ratio_error']:.1%} |"
              .replace("%", " %") for n, e in models.items() if (p := e.get("prediction"))]
    lines += ["", "## Line 4: compiles with the cache while one core is kept busy", "",
              "| model | compiles | byte-identical | same decision (cache) | fresh cache under load: same decision |",
              "|---|---|---|---|---|"]
    lines += [f"| {n} | {r['compiles']} | {r['identical']} | {r['same_decision_with_cache']} | "
              f"{r['fresh_cache_under_load']['same_decision']} |"
              for n, e in models.items() if (r := e.get("reproducibility"))]
    lines += ["", "## Line 5: compile time (s; placement with a fresh cache, then again with the cache it filled)",
              "", "default and placement: the medians of the pairs of compiles run one after the other; ratio: the "
              "median of the pairs' ratios", "",
              "| model | pairs | default (guard) | placement | ratio | placement, cache filled | ratio | same output |",
              "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {n} | {len(t)} | {float(np.median([d for d, _ in t])):.2f} | "
              f"{float(np.median([q for _, q in t])):.2f} | {e['compile_ratio']} | "
              f"{c.get('compile_s', '')} | {c.get('ratio', '')} | {c.get('identical', '')} |"
              for n, e in models.items() if "compile_ratio" in e for c in [e.get("compile_cached", {})]
              for t in [e.get("compile_pairs") or [(e["default"]["compile_s"], e["placement"]["compile_s"])]]]
    lines += ["", "## Ops onnxruntime runs in int8 that qcompiler leaves float", "",
              "| model | more in onnxruntime's integer pattern (count) | left out | ort ms | ort without them ms | our "
              "all-int8 ms |", "|---|---|---|---|---|---|"]
    gaps = {**{n: e["gap"] for n, e in models.items() if "gap" in e}, **results.get("gap_only", {})}
    for n, g in gaps.items():
        if "error" not in g:
            lat = g.get("latency_ms", {})
            lines.append(f"| {n} | {', '.join(f'{k} {v}' for k, v in g['only_ort'].items()) or '(none)'} | "
                         f"{', '.join(g.get('left_out', [])) or '-'} | {lat.get('ort', '-')} | "
                         f"{lat.get('ort_without', '-')} | {lat.get('size', '-')} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    from compare_quantizers import list_models

    from qcompiler.bench import machine

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models-dir", type=Path, default=Path("/root/realmodels"))
    parser.add_argument("--only", default="*", help="comma-separated model names or shell patterns")
    parser.add_argument("--threads", type=int, default=2, help="onnxruntime intra-op threads everywhere")
    parser.add_argument("--runs", type=int, default=30, help="timed runs per model, at least")
    parser.add_argument("--seconds", type=float, default=3.0, help="timed seconds per model, at least")
    parser.add_argument("--compiles", type=int, default=5, help="line 4: compiles with the cache (0: skip)")
    parser.add_argument("--compile-pairs", type=int, default=3, help="line 5: default and placement compiles, paired")
    parser.add_argument("--gap", default=GAP, help="models (patterns) of the onnxruntime op-gap analysis")
    parser.add_argument("--gap-only", action="store_true", help="only the op-gap analysis of the --gap models")
    parser.add_argument("--no-evaluate", dest="evaluate", action="store_false", help="skip the task metrics")
    parser.add_argument("--work", type=Path, default=Path.home() / ".cache" / "qcompiler-bench" / "placement")
    parser.add_argument("--results", type=Path, default=HERE / "results")
    parser.add_argument("--force", action="store_true", help="measure models already in the results again")
    args = parser.parse_args()
    names = list_models(args.models_dir, args.only)
    if not names:
        parser.error(f"no model with calibration feeds in {args.models_dir} matches {args.only!r}")
    args.results.mkdir(parents=True, exist_ok=True)
    info = machine()
    path = args.results / f"placement_{isa(info)}.json"
    report = path.with_suffix(".md")
    results = json.loads(path.read_text()) if path.exists() else {}
    same_machine = all(results.get("machine", {}).get(k) == info[k] for k in ("cpu", "cpu_features"))
    if results.get("threads") != args.threads or not same_machine:
        results = {"machine": info, "threads": args.threads, "models": {}}  # another machine: start over
    if args.gap_only:
        for name in [n for n in names if any(fnmatch.fnmatch(n, p) for p in args.gap.split(","))]:
            results.setdefault("gap_only", {})[name] = gap(name, args, {"ort": run_compile("ort", name, args)})
            path.write_text(json.dumps(results, indent=1) + "\n")
            report.write_text(markdown(results))
        names = []
    for name in names:
        if name in results["models"] and not args.force:
            print(f"{name}: already measured (--force to measure again)", file=sys.stderr)
            continue
        start = time.perf_counter()
        results["models"][name] = {**measure(name, args), "wall_s": round(time.perf_counter() - start, 1)}
        path.write_text(json.dumps(results, indent=1) + "\n")
        report.write_text(markdown(results))
    print(markdown(results))
    print(f"wrote {path} and {report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
