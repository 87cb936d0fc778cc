"""The ``qcompiler`` command line.

Subcommands: ``show`` (printed IR and a summary), ``passes`` (registered passes and named pipelines),
``optimize`` (run a pipeline and write the result), ``compile`` (int8 quantization), ``bench`` (latency,
size, memory and output agreement of models), ``run`` (the integer reference executor, optionally
compared with onnxruntime), ``analyze`` (the quantization debugging report), ``compile-many`` (a TOML
manifest of models x targets; ``--ray`` runs it, and compile's and analyze's parallel steps, on Ray). A user mistake prints one line
``qcompiler: error: ...`` and exits with status 2, without a traceback; the input model is never
modified and outputs are written atomically.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import sys
import time

from . import ir
from .compiler import check_output_path
from .errors import InternalError, PassError, UserError
from .instruments import CheckIdempotent, CheckModifiedFlag, DumpIR, Progress, Timing
from .ir.serde import serialized_bytes
from .options import CompileOptions, add_arguments
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
    for name, named in sorted(NAMED_PIPELINES.items()):
        print(f"  {name:<28} {named.summary}")
        print(f"  {'':<28} = " + " -> ".join(p.display_name() for p in named.function(CompileOptions())))
    return 0


def cmd_optimize(args: argparse.Namespace) -> int:
    for module in args.plugin:
        load_plugin(module)
    check_output_path(args.model, args.output, args.overwrite)
    pipeline = resolve(args.pipeline)
    start = time.perf_counter()
    model = ir.load(args.model)
    before = len(model.graph)
    instruments, timing = _run_instruments(args, len(pipeline.passes), model)
    with _closing(instruments):
        PassManager(pipeline.passes, instruments=instruments, verify=args.verify or pipeline.verify)(model)
    ir.save(model, args.output)
    if args.time_passes:
        print(timing.table(), file=sys.stderr)
    print(f"wrote {args.output}: {before} -> {len(model.graph)} nodes in {time.perf_counter() - start:.2f}s")
    return 0


@contextlib.contextmanager
def _closing(instruments: list):
    """Close the instruments that draw on the terminal (a progress bar) also when a pass fails, so that the
    error message starts on a line of its own."""
    try:
        yield
    finally:
        for instrument in instruments:
            if hasattr(instrument, "close"):
                instrument.close()


def _run_instruments(args: argparse.Namespace, total: int, model: ir.Model | None = None) -> tuple[list, Timing]:
    instruments = [] if args.quiet else [Progress(total)]
    timing = Timing(memory=args.time_passes)
    instruments.append(timing)
    if args.dump_ir:
        instruments.append(DumpIR(args.dump_ir, model))
    if getattr(args, "check", False):
        instruments += [CheckModifiedFlag(), CheckIdempotent()]
    return instruments, timing


def cmd_compile(args: argparse.Namespace) -> int:
    from .compiler import compile as compile_model

    for module in args.plugin:
        load_plugin(module)
    check_output_path(args.model, args.output, args.overwrite)
    options = CompileOptions.from_args(args)
    resolve(args.pipeline, options)  # options the pipeline does not take are refused before the model is read
    start = time.perf_counter()
    model = ir.load(args.model)
    pipeline = resolve(args.pipeline, options, model.graph)
    original_bytes = serialized_bytes(model)  # for the summary's sizes (not a second copy of the model)
    before = len(model.graph)
    instruments, timing = _run_instruments(args, len(pipeline.passes), model)
    with _closing(instruments):
        compile_model(model, args.output, pipeline=pipeline, options=options, instruments=instruments,
                      overwrite=True, executor=_executor(args))
    if args.time_passes:
        print(timing.table(), file=sys.stderr)
    _print_reports(model)
    weight_only = model.plan.reports.get("weight_only")
    print(describe_weight_only(weight_only, original_bytes, model) if weight_only and "bits" in weight_only else
          _layer_summary(model, options.calib, original_bytes))
    quantized = sum(n.op_type in ("QuantizeLinear", "DynamicQuantizeLinear") for n in model.graph)
    target = model.plan.target.name if model.plan.target is not None else "none"
    print(f"wrote {args.output}: target {target}, {before} -> {len(model.graph)} nodes, "
          f"{quantized} quantized activations, {time.perf_counter() - start:.2f}s")
    return 0


def describe_weight_only(report: dict, before: int, model: ir.Model) -> str:
    """The line a weight-only compile prints instead of the int8 per-layer table (``before``: the input's bytes)."""
    after = serialized_bytes(model)
    blocks = f"blocks of {report['block_size']}" if report["block_size"] else "per output channel"
    written = (f"{report['matmulnbits']} as MatMulNBits, the rest as blocked DequantizeLinear"
               if "matmulnbits" in report else "as blocked DequantizeLinear")
    return (f"weight-only {report['method']}: {report['weights']} weights ({report['parameters']:,} parameters) in "
            f"{report['bits']}-bit {'symmetric' if report['symmetric'] else 'asymmetric'} {blocks}, {written}; "
            f"size {before / 1e6:.1f} MB -> {after / 1e6:.1f} MB ({after / before:.2f}x)")


def _print_reports(model: ir.Model) -> None:
    """The lines a compile prints about what its passes measured and decided."""
    reports = model.plan.reports
    upcast = reports.get("upcast")
    if upcast:
        print(f"upcast: the model computes in {'/'.join(upcast['types'])}; quantized as float32 (compute upcast, "
              f"{upcast['boundary_casts']} Cast(s) keep its inputs' and outputs' types)")
    given = reports.get("ingest_qdq")
    if given:
        kept = reports.get("keep_qdq_scales")
        print(f"qdq input: {given['weights']} dequantized constants and {given['activations']} activation Q/DQ pairs "
              f"taken out ({given['left']} Q/DQ left); "
              + (f"its scales kept on {kept['kept']} values, {len(kept['calibrated'])} calibrated, "
                 f"{kept['given_unused']} of its quantized values left float" if kept else
                 "re-quantized from the recovered float weights (--keep-qdq-scales keeps its scales)"))
    chosen = reports.get("pipeline")
    if chosen:
        print(f"pipeline: {chosen['name']} -> {chosen['chosen']}: {chosen['reason']}")
    for region in reports.get("structure", []):
        print(f"structure: {region['treatment']} treatment for {region['nodes']} nodes ({region['reason']})")
    assigned = reports.get("assign_precision", {})
    for pattern in assigned.get("unmatched_exclude", []):
        print(f"warning: --exclude {pattern!r} matched no node (names are shell patterns; op types match exactly)")
    if assigned.get("other_float_layers"):
        print(f"warning: {len(assigned['other_float_layers'])} layer(s) compute in float16/bfloat16/float64 and stay "
              f"unquantized (qcompiler quantizes float32 layers)")
    screen = reports.get("dynamic_screen")
    if screen:
        low = ", ".join(f"{row['layer']} {row['token_sqnr_db']:.1f} dB" for row in screen["float"][:8])
        more = f" and {len(screen['float']) - 8} more" if len(screen["float"]) > 8 else ""
        print(f"dynamic screen: {len(screen['float'])} of {screen['layers']} linear layers kept float (typical token's "
              f"output SQNR under {screen['min_token_sqnr_db']:g} dB: outlier tokens set the run's range)"
              + (f": {low}{more}" if low else ""))
    check = reports.get("check_kernels")
    if check and "skipped" in check:
        print(f"kernels ({check['target']}): {check['skipped']}; not checked against the simulation")
    elif check:
        print(f"kernels ({check['target']}) vs simulation on {check['samples']} feed(s): SQNR "
              f"{float(check['target_sqnr_db']):.1f} dB (exact accumulation {float(check['exact_sqnr_db']):.1f} dB)"
              + (f"; saturation: {len(check['requantized_7bit'])} weight(s) requantized to 7 bits, now "
                 f"{float(check['after']['target_sqnr_db']):.1f} dB" if check.get("requantized_7bit") else ""))
    placement = reports.get("latency_placement")
    if placement:
        from .placement import format_report

        print(format_report(placement))
    guard = reports.get("latency_guard")
    if guard:
        where = " (first sample of the first feed)" if guard.get("first_sample_only") else ""
        print(f"latency on this CPU{where}: float {guard['float_ms']:.3g} ms, int8 {guard['int8_ms']:.3g} ms "
              f"({guard['speedup']:.2f}x): kept {guard['kept']}"
              + ("" if guard["kept"] == "int8" else " (use --objective size to keep int8 anyway)"))


def _layer_summary(model: ir.Model, calib: object, original_bytes: int) -> str:
    """The per-layer summary table (``qcompiler.summary``), shapes taken on the first calibration feed
    (without calibration data: on random float inputs and zero integer inputs, which are valid token and
    type ids for any embedding table)."""
    import numpy as np

    from .calibration import model_inputs, open_calibration
    from .ir.testing import random_feeds
    from .summary import format_table, summarize

    if calib is not None:
        feed = next(iter(open_calibration(calib, model_inputs(model))))
    else:
        feed = {k: v if np.issubdtype(v.dtype, np.floating) else np.zeros_like(v)
                for k, v in random_feeds(model).items()}
    return format_table(summarize(model, feed, original_bytes))


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
    options = CompileOptions.from_args(args)
    report = analyze(args.model, calibration_source(args.calib), quantized=args.quantized, target=options.target,
                     pipeline=args.pipeline, calibration=options.calibration, per_tensor=options.per_tensor,
                     exclude=options.exclude, progress=say, executor=_executor(args))
    print(format_text(report))
    if args.json:
        write_atomically(args.json, json.dumps(report, indent=1) + "\n")
    if args.html:
        write_atomically(args.html, render(report))
    return 0


def _log_steps(steps: int, lines: int = 20):
    """An ``on_step`` callback that writes about ``lines`` progress lines to stderr: a log's progress bar."""
    started, every = time.perf_counter(), max(1, steps // lines)

    def log(done: int, loss: float) -> None:
        if done % every == 0 or done == steps:
            print(f"finetune: step {done}/{steps}, loss {loss:.5g}, {time.perf_counter() - started:.0f}s",
                  file=sys.stderr, flush=True)

    return log


def cmd_finetune(args: argparse.Namespace) -> int:
    from .progress import is_terminal
    from .qat import finetune

    check_output_path(args.model, args.output, False)
    terminal = is_terminal(sys.stderr)
    result = finetune(args.model, args.output, teacher=args.teacher, data=args.data, steps=args.steps, lr=args.lr,
                      batch=args.batch, seed=args.seed, checkpoint=args.checkpoint, threads=args.threads,
                      weights=args.weights, activation_bits=args.activation_bits, blocks=args.blocks, crop=args.crop,
                      temperature=args.temperature, ctc=args.ctc, freeze=args.freeze_oscillations, ema=args.ema,
                      progress=not args.quiet and terminal,
                      on_step=None if args.quiet or terminal else _log_steps(args.steps))
    if args.blocks:
        print(f"block reconstruction: {len(result.block_ends) + 1} blocks, cut at "
              f"{', '.join(result.block_ends) or '(nowhere: no quantized value the teacher computes too)'}")
        if result.rescaled_ends:
            print(f"not cut at {', '.join(result.rescaled_ends)}: there the quantized model's tensors are the "
                  "teacher's rescaled per channel (cross-layer equalization or SmoothQuant in its compile)")
    print(result.table())
    if result.frozen is not None:
        print(f"oscillating weights frozen: {result.frozen:.2%} of the weights of 4 bits or fewer")
    print(f"wrote {args.output}: {result.steps_run} steps in this run, final loss "
          f"{result.losses[-1] if result.losses else float('nan'):.5g}, {result.seconds:.1f}s")
    return 0


def cmd_compile_many(args: argparse.Namespace) -> int:
    from .scaleout.fleet import compile_many, format_summary

    rows, output_dir = compile_many(args.manifest, _executor(args))
    print(format_summary(rows))
    failed = sum(r["status"] != "ok" for r in rows)
    print(f"{len(rows) - failed}/{len(rows)} compiled into {output_dir}; table: {output_dir / 'summary.md'}")
    return EXIT_INTERNAL_ERROR if failed else 0


def _executor(args: argparse.Namespace):
    """The scale-out executor of ``--ray``/``--workers`` (None: this process; :mod:`qcompiler.scaleout`)."""
    from .scaleout import executor_for

    return executor_for(args.ray, args.workers)


def _scaleout_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ray", metavar="auto|ADDRESS", help="run the parallel steps as tasks of a Ray cluster: auto "
                        "(the running one, else a new local one) or its address; needs "
                        "pip install 'onnx-qcompiler[ray]'. Results are identical to a run without it")
    parser.add_argument("--workers", type=int, metavar="N", help="with --ray: tasks at once (default: the "
                        "cluster's CPUs)")


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

    runner = argparse.ArgumentParser(add_help=False)  # what optimize and compile share: a pipeline run on a file
    runner.add_argument("model")
    runner.add_argument("-o", "--output", required=True, help="output .onnx file")
    runner.add_argument("--plugin", action="append", default=[], metavar="MODULE",
                        help="import MODULE first (it registers passes); repeatable")
    runner.add_argument("--dump-ir", metavar="DIR", help="write the printed IR after every pass into DIR")
    runner.add_argument("--time-passes", action="store_true",
                        help="print the time and peak memory of every pass (the peak counter of the process is "
                        "reset before each pass)")
    runner.add_argument("--overwrite", action="store_true", help="allow -o to be the input file")
    runner.add_argument("-q", "--quiet", action="store_true", help="no progress lines")

    optimize = sub.add_parser("optimize", parents=[runner], help="run a pipeline over a model and write the result")
    optimize.add_argument("--pipeline", default="canonicalize",
                          help="a named pipeline or a TOML pipeline file (default: canonicalize)")
    optimize.add_argument("--verify", choices=("each", "end", "off"), help="when to verify the IR")
    optimize.add_argument("--check", action="store_true",
                          help="also check every pass's modified flag and idempotence (slower)")
    optimize.set_defaults(run=cmd_optimize)

    comp = sub.add_parser("compile", parents=[runner], help="quantize a model (static int8 QDQ by default)")
    comp.add_argument("--pipeline", default="auto", help="a named pipeline or a TOML file (default: auto, the "
                      "transformer treatment in attention blocks and int8 elsewhere)")
    add_arguments(comp)
    _scaleout_arguments(comp)
    comp.set_defaults(run=cmd_compile)

    many = sub.add_parser("compile-many", help="compile models x targets x options from a TOML manifest into "
                          "outputs and one summary table")
    many.add_argument("manifest", metavar="MANIFEST.toml", help="the fleet (see qcompiler.scaleout.fleet)")
    _scaleout_arguments(many)
    many.set_defaults(run=cmd_compile_many)

    tune = sub.add_parser("finetune", help="quantization-aware fine-tuning of a compiled QDQ model against its FP32 "
                          "teacher, on unlabelled data (needs pip install 'onnx-qcompiler[finetune]')")
    tune.add_argument("model", help="the quantized QDQ model qcompiler compiled")
    tune.add_argument("-o", "--output", required=True, help="output .onnx file (the same QDQ form, trained)")
    tune.add_argument("--teacher", required=True, help="the FP32 model the quantized one was compiled from")
    tune.add_argument("--data", required=True, help="a directory of .npz files (keys = input names; the calibration "
                      "data is enough) or one .npz")
    tune.add_argument("--steps", type=int, default=500, help="optimizer steps (default 500)")
    tune.add_argument("--lr", type=float, default=1e-4, help="Adam learning rate, cosine-decayed (default 1e-4)")
    tune.add_argument("--batch", type=int, default=32, help="rows per minibatch (default 32)")
    tune.add_argument("--seed", type=int, default=0, help="minibatch order (default 0)")
    tune.add_argument("--checkpoint", metavar="FILE", help="write a checkpoint there every 50 steps; an existing one "
                      "is resumed")
    tune.add_argument("--weights", choices=("int4", "ternary", "binary"), help="first lower the weights of every "
                      "layer but the first and last to this form")
    tune.add_argument("--activation-bits", type=int, choices=(4,), help="first narrow the activations (all but the "
                      "first layer's input and the last layer's output) to 4 bits, in their 8-bit storage")
    tune.add_argument("--blocks", type=int, default=0, metavar="N", help="block reconstruction (BRECQ): blocks of "
                      "about N layers each learn the teacher's tensor at their end (default 0: the outputs alone)")
    tune.add_argument("--crop", action="append", default=[], metavar="INPUT:AXIS", help="label-free augmentation: "
                      "cut this axis (a text line's width, a sequence's length) to a random window on every step, "
                      "the teacher labelling each window; repeat it for axes cut together")
    tune.add_argument("--temperature", type=float, default=1.0, metavar="T", help="softens the teacher's and the "
                      "student's probabilities of a Softmax output in its KL term (Hinton et al. 2015; default 1)")
    tune.add_argument("--ctc", metavar="OUTPUT[:BLANK]", help="this output holds per-position class probabilities "
                      "read by CTC (blank class 0 unless given): also learn to read the text the teacher reads "
                      "there (sequence-level distillation, label-free)")
    tune.add_argument("--freeze-oscillations", type=float, default=0.0, metavar="F", help="freeze a weight of 4 "
                      "bits or fewer that keeps flipping between two integers, at its average integer, once its flips "
                      "per step exceed a threshold falling from 0.1 to F over the run (Nagel et al. 2022; the paper "
                      "used 0.01 for 4 bits; default 0: off)")
    tune.add_argument("--ema", type=float, default=0.0, metavar="DECAY", help="write the moving average of the "
                      "weights and step sizes over the second half of the run, a <- DECAY a + (1 - DECAY) p after "
                      "each step (0.998 averages over about the last 500 steps; default 0: the last step's)")
    tune.add_argument("--threads", type=int, default=1, help="torch and onnxruntime threads (default 1)")
    tune.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    tune.set_defaults(run=cmd_finetune)

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
    analysis.add_argument("model", help="the FP32 .onnx model, or a QDQ model (analyzed as the float model it "
                          "quantizes, with its own scales)")
    analysis.add_argument("quantized", nargs="?", help="a QDQ model whose kernels to check (default: the all-int8 "
                          "model the analysis builds)")
    analysis.add_argument("--calib", required=True, metavar="DATA",
                          help="calibration data: a directory of .npz files, one .npz, or a glob of .npz files")
    analysis.add_argument("--pipeline", default="int8", help="int8 (default) or int8-transformer: what compile will run")
    add_arguments(analysis, only=("target", "calibration", "per_tensor", "exclude"))
    analysis.add_argument("--html", metavar="OUT.html", help="also write the self-contained HTML report")
    analysis.add_argument("--json", metavar="OUT.json", help="also write the analysis as JSON")
    analysis.add_argument("-q", "--quiet", action="store_true", help="no progress lines")
    _scaleout_arguments(analysis)
    analysis.set_defaults(run=cmd_analyze)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except UserError as exc:
        print(f"qcompiler: error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except (PassError, InternalError) as exc:
        if args.traceback:
            raise
        print(f"qcompiler: internal error: {exc} (for the traceback, run again as "
              f"'qcompiler --traceback {args.command} ...')", file=sys.stderr)
        return EXIT_INTERNAL_ERROR
    except BrokenPipeError:  # output piped into `head` and the like
        sys.stderr.close()
        return 0
    except KeyboardInterrupt:
        print("qcompiler: interrupted", file=sys.stderr)
        return 130
