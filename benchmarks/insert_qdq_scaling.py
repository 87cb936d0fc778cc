"""How ``insert-qdq`` and ``verify`` scale with the number of nodes: the time per node should be flat.

A synthetic ladder of ``Conv -> Relu -> MatMul -> Add`` blocks (the Add reads the block's input, a
residual), marked by ``assign-precision`` for x86-vnni; every value it marks gets a spec from a fixed
range (a stand-in for calibration, which is not what is measured). Then, on a fresh model per run,
``InsertQDQ`` and ``verify`` are timed separately, in wall and in CPU time (the steadier number on a
machine shared with other jobs); the best of ``--repeat`` runs is reported. Every
activation gets a QuantizeLinear/DequantizeLinear pair after its producer, every weight one at the
front of the graph, every Conv bias an int32 DequantizeLinear, and every Relu is removed: the edits
that were quadratic when the graph kept its nodes in a Python list.

    python benchmarks/insert_qdq_scaling.py [--nodes 2000 4000 8000 16000] [--repeat 3] [--json out.json]

``tests/passes/test_insert_qdq_scaling.py`` imports this file to hold the scaling to a bound.
"""

from __future__ import annotations

import argparse
import gc
import json
import time
from pathlib import Path

import numpy as np
from onnx import TensorProto

from qcompiler.ir import Graph, Model, Node, Value, verify
from qcompiler.pass_manager import PassManager
from qcompiler.passes import AssignPrecision, InsertQDQ

CHANNELS = 4
NODES_PER_BLOCK = 4


def ladder(nodes: int, seed: int = 0) -> Model:
    """A float model of ``nodes // 4`` blocks ``h' = MatMul(Relu(Conv(h, w, b)), k) + h``."""
    rng = np.random.default_rng(seed)
    graph = Graph("ladder")
    shape = (1, CHANNELS, 4, CHANNELS)
    h = Value("x", TensorProto.FLOAT, shape)
    graph.inputs.append(h)

    def weight(name: str, dims: tuple[int, ...]) -> Value:
        return graph.add_initializer(Value(name, const=rng.standard_normal(dims).astype(np.float32)))

    for i in range(nodes // NODES_PER_BLOCK):
        conv, relu, matmul, add = (Value(f"{op}{i}", TensorProto.FLOAT, shape) for op in ("c", "r", "m", "h"))
        graph.append(
            Node("Conv", [h, weight(f"w{i}", (CHANNELS, CHANNELS, 1, 1)), weight(f"b{i}", (CHANNELS,))], [conv],
                 name=f"conv{i}"),
            Node("Relu", [conv], [relu], name=f"relu{i}"),
            Node("MatMul", [relu, weight(f"k{i}", (CHANNELS, CHANNELS))], [matmul], name=f"matmul{i}"),
            Node("Add", [matmul, h], [add], name=f"add{i}"))
        h = add
    graph.outputs.append(h)
    return Model(graph, {"": 13})


def marked_ladder(nodes: int) -> Model:
    """:func:`ladder` after ``assign-precision``, every marked activation with a spec of range [-4, 4]."""
    model = ladder(nodes)
    PassManager([AssignPrecision(target="x86-vnni")], verify="off")(model)
    model.plan.set_ranges({value: (-4.0, 4.0) for value in model.plan.pending})
    return model


def time_insert_qdq(nodes: int, repeat: int = 3) -> dict:
    """Best-of-``repeat`` wall and CPU seconds of InsertQDQ in a PassManager and of verify, a fresh
    :func:`marked_ladder` each."""
    best: dict[str, float] = {}
    for _ in range(repeat):
        model = marked_ladder(nodes)
        gc.collect()
        marks = [(time.perf_counter(), time.process_time())]
        PassManager([InsertQDQ()], verify="off")(model)  # as a pipeline runs it
        marks.append((time.perf_counter(), time.process_time()))
        verify(model)
        marks.append((time.perf_counter(), time.process_time()))
        for step, (before, after) in zip(("insert_qdq", "verify"), zip(marks, marks[1:])):
            for clock, start, end in zip(("s", "cpu_s"), before, after):
                key = f"{step}_{clock}"
                best[key] = min(best.get(key, float("inf")), end - start)
    per_node = {f"{step}_cpu_us_per_node": round(best[f"{step}_cpu_s"] / nodes * 1e6, 1)
                for step in ("insert_qdq", "verify")}
    seconds = {key: round(value, 4) for key, value in best.items()}
    return {"nodes": nodes, "nodes_after": len(model.graph), **seconds, **per_node}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, nargs="+", default=[2000, 4000, 8000, 16000])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    header = ["nodes", "after", "insert-qdq s", "cpu s", "cpu µs/node", "verify s", "cpu s", "cpu µs/node"]
    print("  ".join(f"{h:>11}" for h in header))
    rows = []
    for nodes in args.nodes:
        row = time_insert_qdq(nodes, args.repeat)
        rows.append(row)
        cells = [row["nodes"], row["nodes_after"]] + [
            row[f"{step}_{column}"] for step in ("insert_qdq", "verify") for column in ("s", "cpu_s", "cpu_us_per_node")]
        print("  ".join(f"{c:>11}" if isinstance(c, int) else f"{c:>11.3f}" if c < 10 else f"{c:>11.1f}" for c in cells),
              flush=True)
    if args.json:
        from qcompiler.bench import machine

        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"machine": machine(), "repeat": args.repeat, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
