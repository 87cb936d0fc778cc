"""Latency-aware placement: int8 region by region, where onnxruntime runs the region faster.

int8 is not faster everywhere. On x86 the large pointwise and dense convolutions and the MatMuls gain,
while depthwise convolutions, small layers between float activations and every Q/DQ transition cost
more than they save; a whole-model decision (all int8 or all float) leaves the gains of a
mobile-style network unused. Placement decides per *region*, hardware-aware mixed precision as HAQ
(Wang et al. 2019) and HAWQ-V3 (Yao et al. 2021) pose it, with the latency of each choice measured on
the machine and thread count the model is compiled for:

1. **Partition** (:func:`partition`). The int8 nodes of the calibrated plan (its layers, the
   activations absorbed into them and the pass-through ops whose inputs and outputs are all quantized)
   are joined through every quantized tensor: a value with a spec is one QuantizeLinear shared by its
   producer and all its readers, so the nodes on both sides of it are int8 together or not at all.
   The connected components are the regions; the Q/DQ pairs at a region's edges are its transitions.
   Regions are separated by float nodes, so keeping one float leaves the others' graphs unchanged.
2. **Cost** (:func:`region_subgraphs`, :func:`compare_all`). Each region is cut out of the float model and
   out of the all-int8 QDQ model (its nodes, their weight and bias DequantizeLinear, the QuantizeLinear
   of its inputs and the Q/DQ of its outputs: the transitions are part of the int8 cost) and both
   subgraphs run in onnxruntime, fed the real intermediate tensors of a calibration feed, in
   alternation (ABBA order, round after round). The test is paired: the per-round log ratio of the
   medians, a trimmed t statistic over rounds (:func:`decide`); measurement stops once it separates the two
   (``|t| >= T_SEPARATED``; after four rounds already when ``|t| >= T_EARLY``), once it cannot in the
   rounds left (``T_FUTILE``) or after ``max_rounds`` (in doubt: the region stays float, no gain was
   shown). Subgraphs are measured rather than modelled: onnxruntime's fusions (QLinearConv, QDQ-aware
   transposes, Conv+activation) decide the cost and no analytic model of them would hold from one
   version to the next; ``benchmarks/placement.py`` measures the prediction error of the additive sum
   against whole-model latency.
3. **Layers alone** (:func:`units`). A region slower in int8 as a whole may hold layers that gain
   alone (a large pointwise convolution among depthwise ones): in the regions that are slower and take
   a noticeable share of the time, each weighted layer (with the activation absorbed after it) is cut
   out with the Q/DQ at its own edges and compared the same way, largest weights first, up to a cap.
4. **Choice** (:func:`choose`). With regions independent, the total latency is the float model's
   plus the sum of the chosen regions' (int8 - float) differences, minimized by choosing exactly the
   regions measured faster in int8; then, in the regions left float, the layers faster alone, largest
   gain first, skipping any that shares a quantized tensor with one chosen (they would form one region
   whose cost is not the sum). The accuracy budget is the one mixed precision already applied:
   placement only returns layers to float, never quantizes a layer the sensitivity search kept float.
5. **Cache** (:class:`LatencyCache`). Every comparison is kept in a JSON file under the key of the
   machine (CPU model, the ISA flags onnxruntime's kernels dispatch on, onnxruntime's version, the
   thread count) and the SHA-256 of the two subgraphs' structure (:func:`structure`: ops, wiring, shapes,
   not names or weight values); a comparison found there is not measured again, so the same cache gives
   the same decision and the same output file byte for byte, and a block repeated through a network
   (a transformer layer, a residual block) is measured once.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import os
import tempfile
import time
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from .bench.session import open_session
from .errors import UserError
from .ir import Model, Node, Value

T_SEPARATED = 4.0
"""|t| of the paired per-round log ratios past which float and int8 count as separated."""

EARLY_ROUNDS, T_EARLY = 4, 12.92
"""A comparison may stop after ``EARLY_ROUNDS`` rounds (two ABBA pairs), before its ``min_rounds``, when
|t| reaches ``T_EARLY``: Student's t at two-sided p = 0.001 with 3 degrees of freedom, a bound strict
enough that the earlier look adds almost no false separations, met by the clear-cut regions (most of
them), whose measurement it shortens by a third."""

T_FUTILE = T_SEPARATED / 2
"""A comparison whose |t| after its ``min_rounds``, projected to ``max_rounds`` (t grows as the square root
of the rounds for a fixed difference), stays under this is futile: it would not separate in the rounds
left, so it stops in doubt (float) rather than spend them; a conditional-power futility rule as group
sequential designs use (Jennison and Turnbull 2000, ch. 10)."""

# -- partition ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Region:
    """A connected int8 subgraph: its layers (what a configuration keeps float, by name) and all its
    nodes (layers, absorbed activations, pass-through ops), in graph order; a unit of a region
    (:func:`units`) names that region as its ``parent``."""

    index: int
    layers: tuple[str, ...]
    nodes: tuple[str, ...]
    parent: int | None = None


def _int8_nodes(model: Model) -> list[Node]:
    """Nodes that run in int8 in the lowered model: the plan's layers and absorbed activations, and the
    pass-through ops whose activation inputs and outputs are all quantized."""
    plan = model.plan

    def quantized(value: Value | None) -> bool:
        return value is None or value.const is not None or value.quant is not None

    return [n for n in model.graph if n in plan.layers or n in plan.absorbed or (
        n.op_type in plan.target.pass_through_ops and all(quantized(v) for v in n.inputs)
        and all(v is not None and v.quant is not None for v in n.outputs))]


def partition(model: Model) -> list[Region]:
    """The regions of a calibrated model (specs set, no Q/DQ yet; nodes uniquely named), in graph order;
    components without a layer of the plan are none (nothing to decide)."""
    members = _int8_nodes(model)
    parent = {n: n for n in members}

    def root(n: Node) -> Node:
        while parent[n] is not n:
            parent[n] = parent[parent[n]]
            n = parent[n]
        return n

    def join(a: Node, b: Node) -> None:
        parent[root(a)] = root(b)

    for value in model.graph.values():
        if value.quant is None or value.const is not None:
            continue
        touching = [n for n in (value.producer(), *value.consumers()) if n in parent]
        for other in touching[1:]:
            join(touching[0], other)
    for node in model.plan.absorbed:  # the layer -> activation edge carries no spec of its own
        producer = node.inputs[0].producer() if node in parent else None
        if producer in parent:
            join(node, producer)
    groups: dict[Node, list[Node]] = {}
    for node in members:
        groups.setdefault(root(node), []).append(node)
    layers = model.plan.layers
    regions = [g for g in groups.values() if any(n in layers for n in g)]
    return [Region(i, tuple(n.name for n in g if n in layers), tuple(n.name for n in g))
            for i, g in enumerate(regions)]


def units(model: Model, regions: Iterable[Region], first_index: int) -> list[Region]:
    """The weighted layers (Conv, Gemm, MatMul with a constant weight) of ``regions`` that have more than
    one, each with the activations absorbed after it, as candidate regions of their own: a region slower
    in int8 as a whole may hold layers that gain alone (with Q/DQ at their own edges, every other node
    of the region float). Numbered from ``first_index``, largest weight first (the most to gain)."""
    from .ops import lookup

    plan, by_name = model.plan, {n.name: n for n in model.graph}
    found = []
    for region in regions:
        weighted = [by_name[n] for n in region.layers if lookup(by_name[n]).role == "layer"
                    and (w := by_name[n].inputs[lookup(by_name[n]).weight_input]) is not None and w.const is not None]
        if len(weighted) < 2:
            continue
        for node in weighted:
            absorbed = [c.name for c in node.outputs[0].consumers() if c in plan.absorbed]
            size = int(node.inputs[lookup(node).weight_input].const.size)
            found.append((-size, len(found), region.index, (node.name, *absorbed)))
    return [Region(first_index + i, names, names, parent) for i, (_, _, parent, names) in enumerate(sorted(found))]


def touching(model: Model, candidates: Iterable[Region]) -> dict[int, set[int]]:
    """Which units share a quantized tensor (one Q/DQ pair): int8 together they would be one region, whose
    cost is not the sum of theirs."""
    owner = {name: u.index for u in candidates for name in u.nodes}
    result: dict[int, set[int]] = {u.index: set() for u in candidates}
    for value in model.graph.values():
        if value.quant is None or value.const is not None:
            continue
        owners = {owner[n.name] for n in (value.producer(), *value.consumers()) if n is not None and n.name in owner}
        for index in owners:
            result[index] |= owners - {index}
    return result


# -- subgraphs ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Subgraph:
    """A region cut out of a model: the ONNX model and the float tensors it reads."""

    proto: onnx.ModelProto
    inputs: tuple[str, ...]


class Indexed:
    """An ONNX model with what cutting regions out of it looks up, indexed once: each value's producer
    and readers, the initializers by name, the values the model returns."""

    def __init__(self, proto: onnx.ModelProto):
        graph = self.graph = proto.graph
        self.proto = proto
        self.producer = {o: n for n in graph.node for o in n.output if o}
        self.readers: dict[str, list[onnx.NodeProto]] = {}
        for node in graph.node:
            for name in node.input:
                self.readers.setdefault(name, []).append(node)
        self.initializers = {t.name: t for t in graph.initializer}
        self.returned = {o.name for o in graph.output}


def _with_transitions(model: Indexed, names: set[str]) -> list[onnx.NodeProto]:
    """The nodes named ``names`` with the Q/DQ around them: DequantizeLinear of their inputs (weights,
    biases, activations) with the QuantizeLinear before those, and QuantizeLinear of their outputs with
    the DequantizeLinear after those."""
    producer, readers = model.producer, model.readers
    core = [n for n in model.graph.node if n.name in names]
    chosen = {id(n) for n in core}
    for node in core:
        for name in node.input:
            dq = producer.get(name)
            if dq is not None and dq.op_type == "DequantizeLinear":
                chosen.add(id(dq))
                q = producer.get(dq.input[0])
                if q is not None and q.op_type == "QuantizeLinear":
                    chosen.add(id(q))
        for name in node.output:
            for q in readers.get(name, []):
                if q.op_type == "QuantizeLinear":
                    chosen.add(id(q))
                    chosen.update(id(dq) for dq in readers.get(q.output[0], []) if dq.op_type == "DequantizeLinear")
    return [n for n in model.graph.node if id(n) in chosen]


def extract(model: Indexed, nodes: list[onnx.NodeProto], types: Mapping[str, int],
            shapes: Mapping[str, tuple[int, ...]]) -> Subgraph:
    """The model of ``nodes`` (in ``model``'s order): graph inputs are the non-constant tensors they read
    and do not produce (``shapes`` gives their shapes), outputs those they produce that anything else
    reads (or the model returns); element types from ``types``."""
    initializers = model.initializers
    produced = {o for n in nodes for o in n.output if o}
    read = [name for n in nodes for name in n.input if name]
    inputs = tuple(dict.fromkeys(x for x in read if x not in produced and x not in initializers))
    inside = {id(n) for n in nodes}
    outputs = [o for n in nodes for o in n.output if o and (
        o in model.returned or any(id(r) not in inside for r in model.readers.get(o, ())))]
    sub = onnx.helper.make_graph(
        list(nodes), "region",
        [onnx.helper.make_tensor_value_info(x, types[x], shapes.get(x)) for x in inputs],
        [onnx.helper.make_tensor_value_info(o, types.get(o, onnx.TensorProto.FLOAT), None) for o in outputs],
        [initializers[x] for x in dict.fromkeys(read) if x in initializers])
    proto = model.proto
    return Subgraph(onnx.helper.make_model(sub, opset_imports=list(proto.opset_import), ir_version=proto.ir_version),
                    inputs)


def region_subgraphs(region: Region, float_model: Indexed, int8_model: Indexed, types: Mapping[str, int],
                     shapes: Mapping[str, tuple[int, ...]]) -> tuple[Subgraph, Subgraph]:
    """(float, int8) subgraphs of ``region``: its nodes in the float model; in the all-int8 QDQ model its
    nodes with their transitions (absorbed activations are gone there)."""
    names = set(region.nodes)
    float_nodes = [n for n in float_model.graph.node if n.name in names]
    return (extract(float_model, float_nodes, types, shapes),
            extract(int8_model, _with_transitions(int8_model, names), types, shapes))


def cut_errors() -> tuple[type[BaseException], ...]:
    """What cutting out or running a region's subgraph may raise (onnxruntime's errors are plain
    ``Exception`` subclasses): such a region is not measured and keeps the compiler's int8."""
    from onnxruntime.capi import onnxruntime_pybind11_state as state

    return (KeyError, ValueError, onnx.checker.ValidationError, state.Fail, state.InvalidGraph,
            state.InvalidArgument, state.NotImplemented, state.RuntimeException)


# -- measurement -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Comparison:
    """Float against int8 of one region: medians over all runs (ms), the paired per-round statistics
    (mean log ratio float/int8 and its t), the rounds, and the decision."""

    float_ms: float
    int8_ms: float
    log_ratio: float
    t: float
    rounds: int
    int8: bool

    @property
    def gain_ms(self) -> float:
        """Milliseconds saved by running the region in int8 (negative: int8 is slower)."""
        return self.float_ms - self.int8_ms


TRIM = 0.2
"""Share of the per-round log ratios trimmed from each end before :func:`decide` averages them."""


def decide(float_round_ms: list[float], int8_round_ms: list[float]) -> tuple[float, float, bool]:
    """(trimmed mean log ratio, t, separated) of paired per-round medians: the one-sample trimmed t test
    (Tukey and McLaughlin 1963) of ``log(f/q)``. With ``g = floor(TRIM · n)`` of the ``n`` ratios cut from
    each end, ``t`` is the mean of the ``h = n - 2g`` left over its standard error from the winsorized
    variance ``s_w²`` (the cut ratios set to the nearest kept one), ``sqrt((n - 1) s_w² / (h (h - 1)))``.
    A round in which the machine stalled for one of the two models (a virtual CPU taken away for a while)
    gives a ratio far off the others; the plain mean and variance follow it, and a steady gain with two
    such rounds among sixteen may not separate. Up to four rounds nothing is cut. A zero spread with a
    nonzero mean counts as separated."""
    ratios = np.sort(np.log(np.asarray(float_round_ms) / np.asarray(int8_round_ms)))
    n = len(ratios)
    cut = int(TRIM * n) if n > 4 else 0
    kept = n - 2 * cut
    mean = float(ratios[cut:n - cut].mean())
    winsorized = np.clip(ratios, ratios[cut], ratios[n - cut - 1])
    spread = math.sqrt((n - 1) * float(winsorized.var(ddof=1)) / (kept * (kept - 1))) if kept > 1 else math.inf
    t = mean / spread if spread > 0 else (math.copysign(math.inf, mean) if mean else 0.0)
    return mean, t, abs(t) >= T_SEPARATED


def _timed(session, feed: dict[str, np.ndarray], runs: int) -> float:
    """Median milliseconds of ``runs`` runs."""
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        session.run(None, feed)
        times.append(time.perf_counter() - start)
    return float(np.median(times)) * 1000.0


def settled(t: float, rounds: int, min_rounds: int, max_rounds: int) -> bool:
    """Whether a comparison with statistic ``t`` after ``rounds`` rounds stops: separated after at least
    ``min_rounds`` (after ``EARLY_ROUNDS`` already with ``|t| >= T_EARLY``), futile (:data:`T_FUTILE`),
    or ``max_rounds`` reached."""
    if rounds >= max_rounds or (rounds >= min_rounds and abs(t) >= T_SEPARATED):
        return True
    if rounds == EARLY_ROUNDS < min_rounds and abs(t) >= T_EARLY:
        return True
    return rounds >= min_rounds and abs(t) * math.sqrt(max_rounds / rounds) < T_FUTILE


def compare_all(models: tuple[bytes | str, ...], feed: dict[str, np.ndarray], *, threads: int,
                pairs: Iterable[tuple[int, int]] = ((0, 1),), min_rounds: int = 6, max_rounds: int = 10,
                round_seconds: float = 0.005) -> dict[tuple[int, int], Comparison]:
    """Each of ``pairs`` (a, b) of ``models`` compared, a as float and b as int8, all measured in one
    rotation: each round runs every model of an unresolved pair for about ``round_seconds`` (the runs
    that take, by its first timing), in an order that cycles through all permutations (for two models
    ABBA over rounds), so each pair's medians pair up round by round and a model measured for several
    pairs runs once per round, not once per pair. A pair is resolved once :func:`decide` separates it
    after at least ``min_rounds`` rounds, once it is futile or after ``max_rounds`` (:func:`settled`); a
    model in no unresolved pair is not run again. The int8 side wins a pair only when separated and
    faster."""
    pairs = tuple(pairs)
    sessions = [open_session(m, threads) for m in models]
    feeds = [{i.name: feed[i.name] for i in session.get_inputs()} for session in sessions]
    single = []
    for session, fed in zip(sessions, feeds):  # warm-up, untimed: first runs allocate and pick kernels
        for _ in range(3):
            session.run(None, fed)
        single.append(_timed(session, fed, 3))
    runs = [max(1, int(round_seconds * 1000.0 / max(ms, 1e-3))) for ms in single]
    orders = list(itertools.permutations(range(len(models))))
    per_round: list[list[float]] = [[] for _ in models]
    stats = {pair: (0.0, 0.0, False) for pair in pairs}
    rounds = dict.fromkeys(pairs, 0)

    for count in itertools.count():
        unresolved = [pair for pair in pairs if not settled(stats[pair][1], rounds[pair], min_rounds, max_rounds)]
        if not unresolved:
            break
        active = {model for pair in unresolved for model in pair}
        for which in orders[count % len(orders)]:
            if which in active:
                per_round[which].append(_timed(sessions[which], feeds[which], runs[which]))
        for a, b in unresolved:  # both ran in every round so far: their lists are aligned
            rounds[a, b] += 1
            if rounds[a, b] >= 2:
                stats[a, b] = decide(per_round[a], per_round[b])
    return {(a, b): Comparison(float(np.median(per_round[a][:rounds[a, b]])),
                               float(np.median(per_round[b][:rounds[a, b]])), mean, t, rounds[a, b],
                               separated and mean > 0)
            for (a, b), (mean, t, separated) in stats.items()}


def whole_model_ms(model: bytes | str, feed: dict[str, np.ndarray], *, threads: int, rounds: int = 5,
                   round_seconds: float = 0.1) -> float:
    """Median of per-round medians of one model, after the warm-up :func:`compare_all` gives: one model's
    latency alone (the placement benchmark's check of a compile's prediction), not for decisions."""
    session = open_session(model, threads)
    feed = {i.name: feed[i.name] for i in session.get_inputs()}
    for _ in range(3):
        session.run(None, feed)
    single = _timed(session, feed, 3)
    runs = max(1, int(round_seconds * 1000.0 / max(single, 1e-3)))
    return float(np.median([_timed(session, feed, runs) for _ in range(rounds)]))


# -- cache -------------------------------------------------------------------------------------------
def machine_key(threads: int) -> str:
    """What a timing depends on besides the subgraphs: CPU model, the ISA features onnxruntime's MLAS
    kernels dispatch on (``qcompiler.bench.machine``), onnxruntime's version, intra-op threads (0:
    onnxruntime's default, with the CPU count)."""
    from .bench.report import machine

    info = machine()
    count = f"{threads}" if threads else f"0/{info['cores']}"
    return (f"{info['cpu']} | {'+'.join(info['cpu_features']) or info['system']} | onnxruntime "
            f"{info['onnxruntime']} | threads {count}")


def structure(model: onnx.ModelProto) -> bytes:
    """What a model's latency depends on: its ops, attributes, wiring, input types and shapes, the types and
    shapes of its initializers and the values of small int64 ones (shapes, axes); not the names, not the
    values of weights, scales or zero points (dense integer and float kernels take the same time
    whatever the numbers), so the repeated blocks of a network share one measurement."""
    ids: dict[str, int] = {}

    def wire(name: str) -> int:
        return ids.setdefault(name, len(ids)) if name else -1

    graph = model.graph
    parts = [repr(sorted((o.domain, o.version) for o in model.opset_import))]
    parts += [f"in {wire(x.name)} {x.type.SerializeToString(deterministic=True).hex()}" for x in graph.input]
    for tensor in graph.initializer:
        small = tensor.data_type == onnx.TensorProto.INT64 and math.prod(tensor.dims) <= 64
        value = onnx.numpy_helper.to_array(tensor).tolist() if small else None
        parts.append(f"init {wire(tensor.name)} {tensor.data_type} {list(tensor.dims)} {value}")
    for node in graph.node:
        attributes = [a.SerializeToString(deterministic=True).hex() for a in node.attribute]
        parts.append(f"{node.domain}:{node.op_type} {[wire(x) for x in node.input]} -> "
                     f"{[wire(y) for y in node.output]} {attributes}")
    parts += [f"out {wire(o.name)}" for o in graph.output]
    return "\n".join(parts).encode()


def subgraph_key(models: Iterable[onnx.ModelProto], feed: Mapping[str, np.ndarray]) -> str:
    """SHA-256 of the :func:`structure` of the models (a region's float and int8 subgraphs, or a whole
    model) and of the shapes they are fed."""
    digest = hashlib.sha256()
    for model in models:
        digest.update(structure(model))
    digest.update(repr(sorted((tuple(v.shape), str(v.dtype)) for v in feed.values())).encode())
    return digest.hexdigest()


class LatencyCache:
    """Comparisons by machine key and subgraph key, in a JSON file (None: in memory only).

    The file is read when the cache is made and written (atomically, merged with what another process
    wrote meanwhile) by :meth:`save`.
    """

    def __init__(self, path: str | os.PathLike | None, machine: str):
        self.path = Path(path) if path is not None else None
        self.machine = machine
        self.entries: dict[str, dict[str, Any]] = self._read().get(machine, {})
        self.new: dict[str, dict[str, Any]] = {}

    def _read(self) -> dict[str, dict[str, dict[str, Any]]]:
        if self.path is None or not self.path.exists():
            return {}
        try:
            document = json.loads(self.path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise UserError(f"--latency-cache {self.path}: not a latency cache this compiler wrote ({exc}); "
                            "remove it or name another file") from None
        if not isinstance(document, dict) or document.get("format") != "qcompiler-latency-cache/1":
            raise UserError(f"--latency-cache {self.path}: not a latency cache this compiler wrote (no "
                            "'format': 'qcompiler-latency-cache/1'); remove it or name another file")
        return document.get("machines", {})

    def get(self, key: str) -> dict[str, Any] | None:
        return self.entries.get(key)

    def put(self, key: str, entry: dict[str, Any]) -> None:
        self.entries[key] = self.new[key] = entry

    def comparison(self, key: str) -> Comparison | None:
        entry = self.get(key)
        return Comparison(**entry) if entry is not None else None

    def put_comparison(self, key: str, comparison: Comparison) -> None:
        self.put(key, asdict(comparison))

    def save(self) -> None:
        if self.path is None or not self.new:
            return
        machines = self._read()
        machines.setdefault(self.machine, {}).update(self.new)
        document = {"format": "qcompiler-latency-cache/1", "machines": machines}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle, scratch = tempfile.mkstemp(prefix=self.path.name, dir=self.path.parent)
        with os.fdopen(handle, "w") as stream:
            json.dump(document, stream, indent=1, sort_keys=True)
        os.replace(scratch, self.path)
        self.new = {}


def default_cache_path() -> Path:
    """Where compiles keep their measurements when ``--latency-cache`` is not given:
    ``$XDG_CACHE_HOME/qcompiler/latency-cache.json`` (``~/.cache`` without it)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "qcompiler" / "latency-cache.json"


# -- choice ------------------------------------------------------------------------------------------
def choose(regions: Iterable[Region], comparisons: Mapping[int, Comparison | None],
           candidates: Iterable[Region] = (), touches: Mapping[int, set[int]] | None = None) -> list[Region]:
    """The regions that run in int8: those measured faster in int8 (separated from float); a region
    with no comparison (it could not be cut out and measured) keeps the compiler's int8. Then, within the
    regions left float, the ``candidates`` (:func:`units`) measured faster, largest gain first, each
    only if it touches none chosen before (:func:`touching`), so that the gains add up."""
    chosen = [r for r in regions if comparisons.get(r.index) is None or comparisons[r.index].int8]
    kept = {r.index for r in chosen}
    faster = [u for u in candidates if u.parent not in kept and (c := comparisons.get(u.index)) is not None and c.int8]
    taken: set[int] = set()
    for unit in sorted(faster, key=lambda u: (-comparisons[u.index].gain_ms, u.index)):
        if not (touches or {}).get(unit.index, set()) & taken:
            taken.add(unit.index)
            chosen.append(unit)
    return chosen


def predicted_ms(float_ms: float, regions: Iterable[Region], comparisons: Mapping[int, Comparison | None]) -> float:
    """The additive prediction: the float model's latency plus each int8 region's (int8 - float)."""
    return float_ms - sum(c.gain_ms for r in regions if (c := comparisons.get(r.index)) is not None)


def format_report(report: Mapping[str, Any]) -> str:
    """The per-region table a compile prints (``latency-placement``'s report)."""
    rows = [("region", "layers", "float ms", "int8 ms", "gain ms", "t", "rounds", "choice", "source")]
    for r in report["regions"]:
        measured = "float_ms" in r
        where = f"{r['region']}" if r.get("parent") is None else f"  {r['region']} (alone, in {r['parent']})"
        rows.append((f"{where} {r['first'][:28]} ({r['ops'][:32]})", str(r["layers"]),
                     f"{r['float_ms']:.4f}" if measured else "-", f"{r['int8_ms']:.4f}" if measured else "-",
                     f"{r['float_ms'] - r['int8_ms']:+.4f}" if measured else "-",
                     f"{r['t']:+.1f}" if measured else "-", str(r.get("rounds", "-")), r["choice"],
                     r["source"]))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) if i < 7 else c for i, (c, w) in
                       enumerate(zip(row, widths))).rstrip() for row in rows]
    float_ms, predicted = report["float_ms"], report["predicted_ms"]
    additive = f" (the regions' gains summed: {report['additive_ms']:.3g} ms)" if "additive_ms" in report else ""
    lines.append(f"latency placement ({report['machine']}): {report['int8_regions']}/{report['regions_total']} "
                 f"regions int8, {report['int8_units']} layer(s) int8 alone; predicted {predicted:.3g} ms{additive} vs "
                 f"float {float_ms:.3g} ms ({float_ms / predicted:.2f}x); {report['measured']} measured, the rest "
                 f"repeats of those (same structure) or from {report['cache']}")
    whole = report.get("whole_model")
    if whole:
        lines.append(f"as whole models: {WHOLE_RESULTS[report['result']]}: float {whole['float_ms']:.3g} ms, "
                     f"{'placed' if report['result'] == 'placed' else 'all-int8'} {whole['int8_ms']:.3g} ms "
                     f"(t {whole['t']:+.1f})")
    return "\n".join(lines)


WHOLE_RESULTS = {"float": "neither the all-int8 nor the placed model is faster than float, every region stays float",
                 "int8": "the all-int8 model is the fastest, every region int8",
                 "placed": "the placed model is faster than float and than the all-int8 model"}
"""What ``latency-placement`` decided as whole models (its report's ``result``), in words."""
