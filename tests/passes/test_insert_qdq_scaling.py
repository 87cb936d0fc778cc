"""insert-qdq and verify take time linear in the size of the graph, with a small constant (issue 11).

With the nodes in a Python list every insertion searched and shifted the list, and the time per node
of ``benchmarks/insert_qdq_scaling.py``'s ladder was 5.8 times higher at 8k nodes than at 2k; linear
edits keep it within about 1.2x (caches). Issue 11 asks for "flat within 2x", which is the bound.

The constant: on the 2-core AMD EPYC these tests run on, insert-qdq took 136 us of CPU per node at 8k
nodes once linear (nearly idle), and 85-95 us since its constant was cut (shared by other jobs, load
average 20-25). The bound, 150 us, leaves room for a slower or busier machine: it catches anything
quadratic and a gross return of the constant, not a small regression. CPU time, not wall time, so that
waiting for other jobs does not count, and a second and third measurement before failing.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "insert_qdq_scaling.py"
SIZES = (2000, 8000)
FLATNESS = 2.0
"""Bound on the time per node at 8k nodes / at 2k nodes."""
CPU_US_PER_NODE = 150.0
"""Bound on insert-qdq's CPU time per node at 8k nodes (see the module docstring)."""


@pytest.fixture(scope="module")
def scaling():
    spec = importlib.util.spec_from_file_location("bench_insert_qdq_scaling", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_time_per_node_is_small_and_flat_from_2k_to_8k_nodes(scaling):
    best: dict[tuple[str, int], float] = {}

    def ratios() -> dict[str, float]:
        return {step: best[step, SIZES[1]] / best[step, SIZES[0]] for step in ("insert_qdq", "verify")}

    def us_per_node() -> float:
        return best["insert_qdq", SIZES[1]] * 1e6

    for _ in range(3):
        for nodes in SIZES:
            row = scaling.time_insert_qdq(nodes, repeat=1)
            for step in ("insert_qdq", "verify"):
                per_node = row[f"{step}_cpu_s"] / nodes
                best[step, nodes] = min(best.get((step, nodes), per_node), per_node)
        if max(ratios().values()) < FLATNESS and us_per_node() < CPU_US_PER_NODE:
            break
    assert max(ratios().values()) < FLATNESS, f"time per node at {SIZES[1]} / at {SIZES[0]} nodes: {ratios()}"
    assert us_per_node() < CPU_US_PER_NODE, f"insert-qdq at {SIZES[1]} nodes: {us_per_node():.0f} us CPU per node"


def test_the_ladder_is_quantized_everywhere(scaling):
    """The benchmark measures what it says: every activation and weight gets its pair."""
    from collections import Counter

    from qcompiler.ir import verify
    from qcompiler.passes import InsertQDQ

    model = scaling.marked_ladder(40)  # 10 blocks
    InsertQDQ()(model)
    verify(model)
    ops = Counter(node.op_type for node in model.graph)
    # per block: Conv, Relu (removed), MatMul, Add; pairs for w, k, Conv, MatMul, Add outputs; a bias DQ
    assert ops == {"Conv": 10, "MatMul": 10, "Add": 10, "QuantizeLinear": 51, "DequantizeLinear": 61}


def test_a_rewrite_leaves_the_collector_scheduled_as_it_was():
    """insert-qdq puts the objects it made into the collector's oldest generation with ``gc.freeze()``,
    which zeroes the counts that schedule collections; they are restored (a full collection waits for
    ten of the middle generation: zeroed after every rewrite, none came, and discarded trial models
    piled up)."""
    import gc

    from qcompiler.lowering import _collector_paused

    gc.collect()
    for _ in range(3):
        gc.collect(1)  # the oldest generation's count: 3
    with _collector_paused():
        pass
    assert gc.get_count()[2] == 4 and gc.isenabled() and gc.get_freeze_count() == 0  # one more: its own


def test_discarded_models_are_still_collected_when_each_was_lowered(scaling):
    """Lowering one trial model after another, each discarded (a range search, bias correction): full
    collections keep coming, so the cycles of the discarded models are freed."""
    import gc

    from qcompiler.passes import InsertQDQ

    full = []

    def count(phase: str, info: dict) -> None:
        if phase == "stop" and info["generation"] == 2:
            full.append(1)

    gc.callbacks.append(count)
    try:
        for _ in range(12):
            InsertQDQ()(scaling.marked_ladder(2000))
    finally:
        gc.callbacks.remove(count)
    assert full, "no full collection in 12 lowerings of discarded models"
