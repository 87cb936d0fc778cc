"""Peak memory of ``qcompiler optimize`` and ``qcompiler compile`` on a model past protobuf's 2 GB limit.

Builds (once, into WORKDIR) a synthetic deep MLP, ``layers`` blocks of ``MatMul(x, W[width, width]) +
bias -> Relu``, 36 x 4096 x 4096 float32 weights = 2.42 GB by default, written as an ``.onnx`` file with
its weights as external data, streamed one layer at a time (never more than one weight in memory), and a
directory of calibration ``.npz`` batches. Then runs each command as a user would, in a child process,
and reports its peak resident memory (``os.wait4``'s ``ru_maxrss``: the largest RSS the child reached,
file-backed pages included) against the size of the model's tensors, plus wall time, and checks that
the output loads in onnxruntime and agrees with the float model on one calibration feed (cosine).

    python benchmarks/large_model_memory.py [--workdir /tmp/qc-large] [--layers 36] [--width 4096]
        [--json benchmarks/results/large_model_memory.json]
    python benchmarks/large_model_memory.py --model WORK/qwen2.5-coder-1.5b_nokv.onnx --calib CALIB_DIR
        [--pipeline int8] [--only optimize,compile-size] [--json ...]

``--model`` measures a real model with external data instead (``llm_export.py --model qwen2.5-coder-1.5b``
writes the 7.1 GB Qwen2.5-Coder-1.5B); its size is its ``.onnx`` plus data files.

The weights are random (seeded), scaled by 1 / sqrt(width) so the activations stay in range; the point is
the memory, not the accuracy.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np


def build_model(directory: Path, layers: int, width: int, batch: int = 4) -> tuple[Path, Path, int]:
    """Write ``mlp.onnx`` + ``mlp.onnx.data`` and ``calib/*.npz`` into ``directory``; (model, calib, tensor bytes).

    The graph proto refers to the data file; the data is written one weight at a time."""
    from onnx import TensorProto, helper

    directory.mkdir(parents=True, exist_ok=True)
    model_path, data_name = directory / "mlp.onnx", "mlp.onnx.data"
    calib = directory / "calib"
    rng = np.random.default_rng(0)
    initializers, nodes, offset = [], [], 0
    done = directory / "complete"
    with open(directory / data_name, "wb") as stream:
        previous = "x"
        for i in range(layers):
            for name, shape in ((f"w{i}", (width, width)), (f"b{i}", (width,))):
                array = (rng.standard_normal(shape, dtype=np.float32) * np.float32(1.0 / np.sqrt(width) * 1.4))
                padding = -offset % 4096
                stream.write(b"\0" * padding)
                offset += padding
                stream.write(array.tobytes())
                tensor = TensorProto(name=name, data_type=TensorProto.FLOAT, dims=shape,
                                     data_location=TensorProto.EXTERNAL)
                for key, value in (("location", data_name), ("offset", str(offset)), ("length", str(array.nbytes))):
                    tensor.external_data.add(key=key, value=value)
                offset += array.nbytes
                initializers.append(tensor)
                del array
            nodes += [helper.make_node("MatMul", [previous, f"w{i}"], [f"mm{i}"], name=f"matmul{i}"),
                      helper.make_node("Add", [f"mm{i}", f"b{i}"], [f"add{i}"], name=f"add{i}"),
                      helper.make_node("Relu", [f"add{i}"], [f"relu{i}"], name=f"relu{i}")]
            previous = f"relu{i}"
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", width])],
                              [helper.make_tensor_value_info(previous, TensorProto.FLOAT, ["batch", width])],
                              initializer=initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model_path.write_bytes(model.SerializeToString())
    calib.mkdir(exist_ok=True)
    for index in range(4):
        np.savez(calib / f"batch_{index}.npz", x=rng.standard_normal((batch, width), dtype=np.float32))
    done.write_text("")
    return model_path, calib, offset


def run_measured(command: list[str], directory: Path, lines: int = 0) -> dict:
    """Run ``command`` in ``directory`` (not the checkout, whose ``qcompiler`` folder ``python -m`` would
    import instead of the installed package); its peak RSS (MB), wall seconds and exit status, and with
    ``lines`` the last lines of its output."""
    start = time.perf_counter()
    child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=directory)
    output = child.stdout.read()
    _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    result = {"command": " ".join(command), "peak_rss_mb": usage.ru_maxrss / 1024,
              "seconds": round(time.perf_counter() - start, 1), "exit_status": child.returncode}
    if child.returncode != 0:
        result["error"] = output.strip().splitlines()[-1] if output.strip() else ""
    if lines:
        result["output"] = output.strip().splitlines()[-lines:]
    return result


def check_output(reference: Path, candidate: Path, calib: Path) -> float:
    """Cosine between the float model's and the output's outputs on the first calibration batch (both by path)."""
    import onnxruntime as ort

    with np.load(sorted(calib.glob("*.npz"))[0]) as data:
        feed = {k: data[k] for k in data.files}
    outputs = [ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]).run(None, feed)[0].ravel()
               for p in (reference, candidate)]
    a, b = (o.astype(np.float64) for o in outputs)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-30))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/qc-large"))
    parser.add_argument("--layers", type=int, default=36)
    parser.add_argument("--width", type=int, default=4096)
    parser.add_argument("--only", default="optimize,compile-size,compile",
                        help="comma-separated: optimize, compile-size (--objective size), compile (latency guard)")
    parser.add_argument("--model", type=Path, help="a real model with external data instead of the synthetic MLP "
                        "(e.g. llm_export.py's Qwen2.5-Coder-1.5B); needs --calib")
    parser.add_argument("--calib", type=Path, help="calibration .npz directory for --model")
    parser.add_argument("--pipeline", help="the compile runs' --pipeline (default: the compiler's default)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if args.model:
        model, calib = args.model.resolve(), args.calib.resolve()
        directory = (args.workdir / model.stem).resolve()
        directory.mkdir(parents=True, exist_ok=True)
        tensor_bytes = sum(f.stat().st_size for f in model.parent.glob(f"{model.name}*"))  # the .onnx and its data
        title = f"{model.name} (its .onnx and external data)"
    else:
        directory = (args.workdir / f"mlp_{args.layers}x{args.width}").resolve()
        model, calib = directory / "mlp.onnx", directory / "calib"
        tensor_bytes = (args.layers * (args.width * args.width + args.width)) * 4
        if not (directory / "complete").exists():
            model, calib, _ = build_model(directory, args.layers, args.width)
        title = f"MLP {args.layers} x MatMul[{args.width}x{args.width}] + Add + Relu, float32"
    qcompiler = [sys.executable, "-m", "qcompiler"]
    pipeline = ["--pipeline", args.pipeline] if args.pipeline else []
    runs = {
        "optimize": qcompiler + ["optimize", str(model), "-o", str(directory / "out.optimize.onnx"), "-q"],
        "compile-size": qcompiler + ["compile", str(model), "-o", str(directory / "out.size.onnx"), "--calib",
                                     str(calib), "--calibration", "minmax", "--objective", "size", "-q", *pipeline],
        "compile": qcompiler + ["compile", str(model), "-o", str(directory / "out.latency.onnx"), "--calib",
                                str(calib), "--calibration", "minmax", "-q", *pipeline],
    }
    outputs = {"optimize": "out.optimize.onnx", "compile-size": "out.size.onnx", "compile": "out.latency.onnx"}
    results = {"model": title, "pipeline": args.pipeline or "default",
               "tensor_bytes": tensor_bytes, "machine": platform.processor() or platform.machine(),
               "note": "peak RSS of the child process (ru_maxrss); shared machine", "runs": {}}
    print(f"model: {results['model']}, {tensor_bytes / 1e9:.2f} GB of tensors")
    for name in args.only.split(","):
        result = run_measured(runs[name], directory)
        result["peak_rss_over_model"] = round(result["peak_rss_mb"] * 2**20 / tensor_bytes, 3)
        if result["exit_status"] == 0:
            result["cosine_to_float"] = round(check_output(model, directory / outputs[name], calib), 5)
        results["runs"][name] = result
        print(f"{name:<13} peak RSS {result['peak_rss_mb']:8.0f} MB = {result['peak_rss_over_model']:.2f} x model, "
              f"{result['seconds']:6.1f} s, exit {result['exit_status']}"
              + (f", cosine {result['cosine_to_float']}" if "cosine_to_float" in result else "")
              + (f": {result['error']}" if "error" in result else ""), flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
