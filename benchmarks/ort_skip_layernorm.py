"""onnxruntime's SkipLayerNormalization fusion against the Add + LayerNormalization it replaces, on this CPU.

    python benchmarks/ort_skip_layernorm.py [--shape 8 52 384] [--threads 1 2] [--json F]

onnxruntime's CPU graph optimizer fuses a residual ``Add`` (optionally after a bias ``Add``) and the
``LayerNormalization`` that reads it into ``com.microsoft::SkipLayerNormalization``. This measures one such
block both ways in one run: the same model in two sessions, one with every optimization (fused), one with
``SkipLayerNormFusion`` disabled (``optimization.disable_specified_optimizers``); the sessions alternate,
``--rounds`` rounds of ``--runs`` runs each, and the median per run is reported with the ratio
fused / unfused. A transformer encoder has one such block after attention and one after the MLP of every
layer (MiniLM-L6: 12), so this decides part of a quantized encoder's latency whatever its MatMuls do.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def block(shape: tuple[int, ...], bias: bool) -> bytes:
    """``LayerNormalization(x [+ bias] + skip)`` over the last axis of ``shape``."""
    rng = np.random.default_rng(0)
    width = shape[-1]
    initializers = [numpy_helper.from_array(np.ones(width, np.float32), "gamma"),
                    numpy_helper.from_array(np.zeros(width, np.float32), "beta")]
    nodes, source = [], "x"
    if bias:
        initializers.append(numpy_helper.from_array(rng.standard_normal(width).astype(np.float32), "bias"))
        nodes.append(helper.make_node("Add", ["x", "bias"], ["biased"]))
        source = "biased"
    nodes += [helper.make_node("Add", [source, "skip"], ["sum"]),
              helper.make_node("LayerNormalization", ["sum", "gamma", "beta"], ["y"], axis=-1, epsilon=1e-12)]
    graph = helper.make_graph(nodes, "skip_layernorm",
                              [helper.make_tensor_value_info(n, TensorProto.FLOAT, list(shape)) for n in ("x", "skip")],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, list(shape))], initializers)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


def session(model: bytes, threads: int, fused: bool):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    if not fused:
        options.add_session_config_entry("optimization.disable_specified_optimizers", "SkipLayerNormFusion")
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


def fused_ops(model: bytes, threads: int) -> list[str]:
    """The op types onnxruntime runs after its optimizations (its optimized model written to a scratch file)."""
    import tempfile

    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as scratch:
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.log_severity_level = 3
        options.optimized_model_filepath = str(Path(scratch) / "optimized.onnx")
        ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
        return [n.op_type for n in onnx.load(options.optimized_model_filepath).graph.node]


def measure(shape: tuple[int, ...], bias: bool, threads: int, rounds: int, runs: int) -> dict:
    model = block(shape, bias)
    rng = np.random.default_rng(1)
    feed = {name: rng.standard_normal(shape).astype(np.float32) for name in ("x", "skip")}
    sessions = {"fused": session(model, threads, True), "unfused": session(model, threads, False)}
    outputs = {name: s.run(None, feed)[0] for name, s in sessions.items()}
    times: dict[str, list[float]] = {name: [] for name in sessions}
    for _ in range(rounds):
        for name, s in sessions.items():
            start = time.perf_counter()
            for _ in range(runs):
                s.run(None, feed)
            times[name].append((time.perf_counter() - start) / runs * 1e6)
    fused, unfused = (float(np.median(times[name])) for name in ("fused", "unfused"))
    return {"shape": list(shape), "bias": bias, "threads": threads, "fused_us": round(fused, 1),
            "unfused_us": round(unfused, 1), "fused_over_unfused": round(fused / unfused, 2),
            "fused_ops": fused_ops(model, threads),
            "max_abs_difference": float(np.abs(outputs["fused"] - outputs["unfused"]).max())}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", type=int, nargs="+", default=[8, 52, 384])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    import onnxruntime

    rows = [measure(tuple(args.shape), bias, threads, args.rounds, args.runs)
            for threads in args.threads for bias in (False, True)]
    for row in rows:
        print(f"threads {row['threads']} bias {row['bias']!s:5}: fused {row['fused_us']:8.1f} us  unfused "
              f"{row['unfused_us']:8.1f} us  ratio {row['fused_over_unfused']:.2f}  ({'+'.join(row['fused_ops'])})")
    if args.json:
        report = {"benchmark": "benchmarks/ort_skip_layernorm.py", "onnxruntime": onnxruntime.__version__,
                  "machine": platform.processor() or platform.machine(), "rows": rows}
        args.json.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
