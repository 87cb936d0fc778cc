"""The ``qcompiler`` command line.

Subcommands: ``show`` (printed IR and a summary), ``passes`` (registered passes and named pipelines),
``optimize`` (run a pipeline and write the result), ``compile`` (int8 quantization), ``bench`` (latency,
size, memory and output agreement of models), ``run`` (the integer reference executor, optionally
compared with onnxruntime), ``analyze`` (the quantization debugging report). A user mistake prints one line
``qcompiler: error: ...`` and exits with status 2, without a traceback; the input model is never
modified and outputs are written atomically.
"""

from __future__ import annotations

import argparse
import collections
import os
import sys
import time
from pathlib import Path

from . import ir
from .errors import ModelSaveError, PassError, UserError
from .instruments import CheckIdempotent, CheckModifiedFlag, DumpIR, Progress, Timing
from .pass_manager import PassManager, default_registry, load_plugin
from .pipelines import NAMED_PIPELINES, resolve

EXIT_USER_ERROR = 2
EXIT_INTERNAL_ERROR = 1


def _summary(model: ir.Model) -> str:
    graph = model.graph
    lines = [f"model: {len(graph)} nodes, {len(graph.initializers)} initializers, "
             f"{sum(v.const.size for v in graph.initializers.values()):,} parameters"]
    opsets = ", ".join(f"{d or 'ai.onnx'} {v}" for d, v in sorted(model.opset_imports.items()))
    lines.append(f"opsets: {opsets}")
    for title, values in (("inputs", graph.inputs), ("outputs", graph.outputs)):
        lines.append(f"{title}:")
        lines += [f"  {v.name}: {ir.printer.format_type(v)}" for v in values]
    if model.metadata:
        lines.append("metadata: " + ", ".join(sorted(model.metadata)))
    histogram = collections.Counter(n.op_type if not n.domain else f"{n.domain}::{n.op_type}" for n in graph)
    lines.append("ops: " + ", ".join(f"{op} {count}" for op, count in histogram.most_common()))
    return "\n".join(lines)


def cmd_show(args: argparse.Namespace) -> int:
    model = ir.load(args.model)
    print(_summary(model))
    if not args.summary:
        print()
        print(ir.format_model(model))
    return 0


def cmd_passes(args: argparse.Namespace) -> int:
    for module in args.plugin:
        load_plugin(module)
    print("passes:")
    for name in default_registry.names():
        print(f"  {name:<28} {default_registry.get(name).summary()}")
    print("pipelines:")
    for name, function in sorted(NAMED_PIPELINES.items()):
        doc = (function.__doc__ or "").strip().splitlines()
        print(f"  {name:<28} {doc[0] if doc else ''}")
        print(f"  {'':<28} = " + " -> ".join(p.display_name() for p in function()))
    return 0


def check_output_path(model_path: str, output: str, overwrite: bool) -> None:
    """Refuse to write over the input unless asked, and check the output's directory exists."""
    source, target = Path(model_path), Path(output)
    if target.exists() and source.exists() and os.path.samefile(source, target) and not overwrite:
        raise ModelSaveError(f"{output}: is the input model; choose another -o or pass --overwrite")
    if target.is_dir():
        raise ModelSaveError(f"{output}: is a directory, expected a file name")
    directory = target.parent
    if not directory.is_dir():
        raise ModelSaveError(f"{output}: directory {directory} does not exist")
    if not os.access(directory, os.W_OK):
        raise ModelSaveError(f"{output}: directory {directory} is not writable")


def cmd_optimize(args: argparse.Namespace) -> int:
    for module in args.plugin:
        load_plugin(module)
    check_output_path(args.model, args.output, args.overwrite)
    pipeline = resolve(args.pipeline)
    start = time.perf_counter()
    model = ir.load(args.model)
    before = len(model.graph)
    instruments, timing = _run_instruments(args, len(pipeline.passes), model)
    PassManager(pipeline.passes, instruments=instruments, verify=args.verify or pipeline.verify)(model)
    ir.save(model, args.output)
    if args.time_passes:
        print(timing.table(), file=sys.stderr)
    print(f"wrote {args.output}: {before} -> {len(model.graph)} nodes in {time.perf_counter() - start:.2f}s")
    return 0


def _run_instruments(args: argparse.Namespace, total: int, model: ir.Model | None = None) -> tuple[list, Timing]:
    instruments = [] if args.quiet else [Progress(total)]
    timing = Timing()
    instruments.append(timing)
    if args.dump_ir:
        instruments.append(DumpIR(args.dump_ir, model))
    if getattr(args, "check", False):
        instruments += [CheckModifiedFlag(), CheckIdempotent()]
    return instruments, timing


def cmd_compile(args: argparse.Namespace) -> int:
    from .compiler import compile as compile_model
    from .targets import get_target

    for module in args.plugin:
        load_plugin(module)
    check_output_path(args.model, args.output, args.overwrite)
    target = get_target(args.target)
    start = time.perf_counter()
    model = ir.load(args.model)
    original = ir.load(args.model)  # for the summary's sizes: read now, --overwrite replaces the file
    before = len(model.graph)
    total = len(resolve(args.pipeline, {"target": target.name, "objective": args.objective,
                                          "sensitivity_threshold": args.sensitivity_threshold}).passes)
    instruments, timing = _run_instruments(args, total, model)
    compile_model(model, args.output, calib=args.calib, pipeline=args.pipeline, target=target.name,
                  calibration=args.calibration, percentile=args.percentile, per_tensor=args.per_tensor,
                  exclude=args.exclude, objective=args.objective, threads=args.threads,
                  sensitivity_threshold=args.sensitivity_threshold, instruments=instruments)
    if args.time_passes:
        print(timing.table(), file=sys.stderr)
    quantized = sum(n.op_type == "QuantizeLinear" for n in model.graph)
    check = model.meta.get("check_kernels")
    if check and "skipped" in check:
        print(f"kernels ({check['target']}): {check['skipped']}; not checked against the simulation")
    elif check:
        print(f"kernels ({check['target']}) vs simulation on {check['samples']} feed(s): SQNR "
              f"{float(check['target_sqnr_db']):.1f} dB (exact accumulation {float(check['exact_sqnr_db']):.1f} dB)"
              + (f"; saturation: {len(check['requantized_7bit'])} weight(s) requantized to 7 bits, now "
                 f"{float(check['after']['target_sqnr_db']):.1f} dB" if check.get("requantized_7bit") else ""))
    guard = model.meta.get("latency_guard")
    if guard:
        print(f"latency on this CPU: float {guard['float_ms']:.3g} ms, int8 {guard['int8_ms']:.3g} ms "
              f"({guard['speedup']:.2f}x): kept {guard['kept']}"
              + ("" if guard["kept"] == "int8" else " (use --objective size to keep int8 anyway)"))
    print(_layer_summary(model, args.calib, original))
    print(f"wrote {args.output}: target {target.name}, {before} -> {len(model.graph)} nodes, "
          f"{quantized} quantized activations, {time.perf_counter() - start:.2f}s")
    return 0


def _layer_summary(model: ir.Model, calib: str, original: ir.Model) -> str:
    """The per-layer summary table (``qcompiler.summary``), shapes taken on the first calibration feed."""
    from .calibration import open_calibration
    from .passes.calibrate import model_inputs
    from .summary import format_table, summarize

    feed = next(iter(open_calibration(calib, model_inputs(model))))
    return format_table(summarize(model, feed, original))


def cmd_bench(args: argparse.Namespace) -> int:
    import json

    from .bench import bench, format_table
    from .ir.serde import write_atomically

    if args.json:
        check_output_path(args.models[0], args.json, False)
    say = None if args.quiet else (lambda message: print(f"bench: {message}", file=sys.stderr, flush=True))
    result = bench(args.models, inputs=args.inputs, calib=args.calib, threads=args.threads, runs=args.runs,
                   batch=args.batch, min_seconds=args.min_seconds, memory=not args.no_memory, progress=say)
    print(format_table(result))
    if args.json:
        write_atomically(args.json, json.dumps(result, indent=2) + "\n")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from .executor.run import run_report

    print(run_report(args.model, args.inputs, target=args.target, compare_ort=args.compare_ort))
    return 0


def cmd_analyze(args: argparse.Namespace) -> int:
    import json

    from .analysis import analyze, calibration_source, format_text
    from .ir.serde import write_atomically
    from .report_html import render

    for path in (args.html, args.json):
        if path:
            check_output_path(args.model, path, False)
    say = None if args.quiet else (lambda message: print(f"analyze: {message}", file=sys.stderr, flush=True))
    report = analyze(args.model, calibration_source(args.calib), quantized=args.quantized, target=args.target,
                     pipeline=args.pipeline, calibration=args.calibration, per_tensor=args.per_tensor,
                     exclude=tuple(args.exclude), progress=say)
    print(format_text(report))
    if args.json:
        write_atomically(args.json, json.dumps(report, indent=1) + "\n")
    if args.html:
        write_atomically(args.html, render(report))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="qcompiler", description="A graph-level ONNX quantization compiler.")
    parser.add_argument("--traceback", action="store_true", help="show the full traceback of internal errors")
    sub = parser.add_subparsers(dest="command", required=True)

    show = sub.add_parser("show", help="print a model's IR, op histogram, inputs and outputs")
    show.add_argument("model")
    show.add_argument("--summary", action="store_true", help="only the summary, not every node")
    show.set_defaults(run=cmd_show)

    listing = sub.add_parser("passes", help="list registered passes and named pipelines")
    listing.add_argument("--plugin", action="append", default=[], metavar="MODULE",
                         help="import MODULE first (it registers passes); repeatable")
    listing.set_defaults(run=cmd_passes)

    optimize = sub.add_parser("optimize", help="run a pipeline over a model and write the result")
    optimize.add_argument("model")
    optimize.add_argument("-o", "--output", required=True, help="output .onnx file")
    optimize.add_argument("--pipeline", default="canonicalize",
                          help="a named pipeline or a TOML pipeline file (default: canonicalize)")
    optimize.add_argument("--plugin", action="append", default=[], metavar="MODULE",
                          help="import MODULE first (it registers passes); repeatable")
    optimize.add_argument("--dump-ir", metavar="DIR", help="write the printed IR after every pass into DIR")
    optimize.add_argument("--time-passes", action="store_true", help="print the time of every pass")
    optimize.add_argument("--verify", choices=("each", "end", "off"), help="when to verify the IR")
    optimize.add_argument("--check", action="store_true",
                          help="also check every pass's modified flag and idempotence (slower)")
    optimize.add_argument("--overwrite", action="store_true", help="allow -o to be the input file")
    optimize.add_argument("-q", "--quiet", action="store_true", help="no progress lines")
    optimize.set_defaults(run=cmd_optimize)

    comp = sub.add_parser("compile", help="quantize a model to int8 QDQ with calibration data")
    comp.add_argument("model")
    comp.add_argument("-o", "--output", required=True, help="output .onnx file")
    comp.add_argument("--calib", required=True, metavar="DATA",
                      help="calibration data: a directory of .npz files (keys = input names) or one .npz")
    comp.add_argument("--pipeline", default="int8", help="a named pipeline or a TOML file (default: int8)")
    comp.add_argument("--target", default="auto", help="auto (this CPU), x86-avx2, x86-vnni or arm64")
    comp.add_argument("--calibration", default="mse", choices=("minmax", "percentile", "entropy", "mse"),
                      help="activation range method (default mse: the most accurate on the realmodels set)")
    comp.add_argument("--percentile", type=float, default=99.999, help="for --calibration percentile")
    comp.add_argument("--per-tensor", action="store_true", help="per-tensor instead of per-channel weights")
    comp.add_argument("--exclude", action="append", default=[], metavar="NAME|OPTYPE",
                      help="keep nodes (name, shell pattern) or an op type in float; repeatable")
    comp.add_argument("--objective", default="latency", choices=("latency", "size"),
                      help="latency: keep int8 only if onnxruntime runs it faster here (default); size: always int8")
    comp.add_argument("--threads", type=int, default=0, metavar="N",
                      help="onnxruntime threads the latency guard measures with (default 0: onnxruntime's "
                           "default, one per physical core, as a deployment gets it)")
    comp.add_argument("--sensitivity-threshold", type=float, metavar="T",
                      help="keep in float the layers whose int8 error does not fit T: the mean over outputs of "
                           "||y_int8 - y_fp32||^2 / ||y_fp32||^2 on calibration feeds (0: outputs identical to "
                           "the input model; start with 0.005, an output SQNR of 23 dB); default: all int8")
    comp.add_argument("--plugin", action="append", default=[], metavar="MODULE", help="import MODULE first")
    comp.add_argument("--dump-ir", metavar="DIR", help="write the printed IR after every pass into DIR")
    comp.add_argument("--time-passes", action="store_true", help="print the time of every pass")
    comp.add_argument("--overwrite", action="store_true", help="allow -o to be the input file")
    comp.add_argument("-q", "--quiet", action="store_true", help="no progress lines")
    comp.set_defaults(run=cmd_compile)

    bench = sub.add_parser("bench", help="latency, throughput, size, memory and output agreement of models")
    bench.add_argument("models", nargs="+", metavar="MODEL",
                       help="models to measure; outputs of the others are compared with the first's")
    data = bench.add_mutually_exclusive_group()
    data.add_argument("--inputs", metavar="X.npz", help="one feed (keys = input names); default: random inputs")
    data.add_argument("--calib", metavar="DATA", help="a directory of .npz feeds: agreement over all of them, "
                      "latency on the first")
    bench.add_argument("--threads", type=int, default=2, help="onnxruntime intra-op threads (default 2)")
    bench.add_argument("--runs", type=int, default=30, help="timed runs per model, at least (default 30)")
    bench.add_argument("--min-seconds", type=float, default=1.0,
                       help="timed seconds per model, at least (default 1)")
    bench.add_argument("--batch", type=int, help="rows on the leading axis for latency and throughput "
                       "(the feed's rows repeated or cut; default: as given)")
    bench.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurement")
    bench.add_argument("--json", metavar="OUT", help="also write the results as JSON to OUT")
    bench.add_argument("-q", "--quiet", action="store_true", help="no progress lines")
    bench.set_defaults(run=cmd_bench)

    execute = sub.add_parser("run", help="run a model on the integer reference executor")
    execute.add_argument("model")
    execute.add_argument("--inputs", required=True, metavar="X.npz", help="the feed (keys = input names)")
    execute.add_argument("--target", default="auto",
                         help="numerics profile: auto (this CPU), x86-avx2, x86-vnni, arm64, exact, or simulate "
                              "(the QDQ graph in float)")
    execute.add_argument("--compare-ort", action="store_true",
                         help="also run onnxruntime on this CPU and print the agreement per output")
    execute.set_defaults(run=cmd_run)

    analysis = sub.add_parser("analyze", help="debug a model's quantization: float sanity, weights vs activations, "
                              "per-layer sensitivity and recommended threshold, target kernels, distributions")
    analysis.add_argument("model", help="the FP32 .onnx model")
    analysis.add_argument("quantized", nargs="?", help="a QDQ model whose kernels to check (default: the all-int8 "
                          "model the analysis builds)")
    analysis.add_argument("--calib", required=True, metavar="DATA",
                          help="calibration data: a directory of .npz files, one .npz, or a glob of .npz files")
    analysis.add_argument("--target", default="auto", help="auto (this CPU), x86-avx2, x86-vnni or arm64: the "
                          "compile target and the kernels checked")
    analysis.add_argument("--pipeline", default="int8", help="int8 (default) or int8-transformer: what compile will run")
    analysis.add_argument("--calibration", default="mse", choices=("minmax", "percentile", "entropy", "mse"),
                          help="activation range method, as for compile (default mse)")
    analysis.add_argument("--per-tensor", action="store_true", help="per-tensor instead of per-channel weights")
    analysis.add_argument("--exclude", action="append", default=[], metavar="NAME|OPTYPE",
                          help="keep nodes or an op type in float, as for compile; repeatable")
    analysis.add_argument("--html", metavar="OUT.html", help="also write the self-contained HTML report")
    analysis.add_argument("--json", metavar="OUT.json", help="also write the analysis as JSON")
    analysis.add_argument("-q", "--quiet", action="store_true", help="no progress lines")
    analysis.set_defaults(run=cmd_analyze)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except UserError as exc:
        print(f"qcompiler: error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except PassError as exc:
        if args.traceback:
            raise
        print(f"qcompiler: internal error: {exc} (run with --traceback for details)", file=sys.stderr)
        return EXIT_INTERNAL_ERROR
    except BrokenPipeError:  # output piped into `head` and the like
        sys.stderr.close()
        return 0
    except KeyboardInterrupt:
        print("qcompiler: interrupted", file=sys.stderr)
        return 130
