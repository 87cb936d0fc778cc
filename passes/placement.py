"""``latency-placement``: keep int8 only the regions onnxruntime runs faster in int8 on this machine.

Runs after calibration (and mixed precision), before ``insert-qdq``: cuts every region of the plan
(``qcompiler.placement``: partition, subgraphs, the paired test, the cache) out of the float and the
all-int8 model, compares them on the real intermediate tensors of the first calibration feed, and
rebuilds the plan with the slower regions' layers in float (the assignment the sensitivity search
uses, so every result is one the compiler could emit). Regions measured alone can each gain and together
not (a large model's isolated subgraphs take more than their share of the whole), and every region kept
float adds Q/DQ transitions they do not see, so what they propose is decided whole, in the same paired
test (``WHOLE_MODEL``), the three models measured in one rotation: the all-int8 model against float, the
placed model against float and against the all-int8 model. The result is the fastest of the three that
separates (``result``: float, int8 or placed), and the latency the report predicts is its whole-model
measurement (the float latency minus the chosen regions' gains is reported beside it as ``additive_ms``).
When the result is float and a float reference was kept before the quantization passes
(``keep-float-reference`` before SmoothQuant, whose unfoldable scales are Muls a float model does not
need), that reference is the model. The measurements go to the latency cache (``cache``; a comparison found
there is reused), the decisions and the predicted latency to ``model.plan.reports["latency_placement"]``;
the compile command prints the per-region table.
"""

from __future__ import annotations

import glob
import time
from dataclasses import asdict, field
from typing import Any


from qcompiler.calibration import model_inputs, open_calibration
from qcompiler.calibration.collect import observing_session
from qcompiler.errors import UserError
from qcompiler.ir import Model, onnxruntime_model, to_proto
from qcompiler.lowering import lower
from qcompiler.pass_manager import Pass, PassResult, register_pass
from qcompiler.scaleout import session_options
from qcompiler.placement import (Comparison, Indexed, LatencyCache, Region, choose, compare_all, cut_errors,
                                 default_cache_path, machine_key, partition, predicted_ms, region_subgraphs,
                                 subgraph_key, touching, units)
from qcompiler.sensitivity import Evaluator, name_nodes

from .latency_guard import restore
from .structure import require_regions


WHOLE_MODEL = {"round_seconds": 0.02, "max_rounds": 16}
"""How the whole models are compared (:func:`qcompiler.placement.compare_all`): rounds of several runs each
steady their medians, and more rounds than a region's give a gain of a few percent the chance to separate."""


def _capture(model: Model, names: list[str], feed: dict) -> dict:
    """The float tensors ``names`` of ``model`` on ``feed`` (graph inputs straight from the feed)."""
    inputs = {v.name for v in model.graph.inputs}
    wanted = [n for n in names if n not in inputs]
    with onnxruntime_model(model, extra_outputs=wanted) as source:
        session = observing_session(source, session_options(), ["CPUExecutionProvider"])  # its outputs: intermediate values
        fed = {k: v for k, v in feed.items() if k in {i.name for i in session.get_inputs()}}
        arrays = dict(zip([o.name for o in session.get_outputs()], session.run(None, fed)))
    return {n: (feed[n] if n in inputs else arrays[n]) for n in names if n in inputs or n in arrays}


def _rejected(regions: list[Region], chosen: list[Region]) -> list[str]:
    """The nodes excluded by name when ``chosen`` run int8: every node of a float region (pass-through ops
    included, so int8 layers alone do not join up through them again) that no chosen region or unit holds."""
    kept = {r.index for r in chosen}
    int8_nodes = {n for r in chosen for n in r.nodes}
    return [name for r in regions if r.index not in kept for name in r.nodes if name not in int8_nodes]


def _describe(region: Region, ops: dict[str, str]) -> str:
    counts: dict[str, int] = {}
    for name in region.layers:
        counts[ops[name]] = counts.get(ops[name], 0) + 1
    return " ".join(f"{n}x{op}" if n > 1 else op for op, n in sorted(counts.items()))


@register_pass("latency-placement")
class LatencyPlacement(Pass):
    """Per region, int8 where it is measured faster than float (see the module docstring)."""

    data: Any = None
    threads: int = 0
    cache: str = ""  # latency cache file; empty: the user's (qcompiler.placement.default_cache_path)
    exclude: list[str] = field(default_factory=list)
    per_channel: bool = True
    float_linear_outputs: bool = False
    region: str = ""  # as assign-precision's
    max_units: int = 8  # layers measured alone, in regions slower in int8 (largest weights first)
    min_share: float = 0.05  # ... in regions that take at least this share of all regions' float time
    idempotent = False
    needs = ("plan", "ranges")

    def requires(self, model: Model) -> None:
        if self.data is None:
            raise UserError("latency-placement: no calibration data given (--calib DIR or a '@calibration' "
                            "resource); the regions are measured on its first feed")
        require_regions(self, model, self.region)

    def _compared(self, cache: LatencyCache, models: tuple, feed: dict, pairs: tuple = ((0, 1),),
                  **how: Any) -> tuple[dict[tuple[int, int], Comparison], str]:
        """(each of ``pairs`` of the ONNX ``models`` compared on ``feed``, where they came from): from the
        cache ("cache", or "repeat" when this compile measured the same structures already) when every
        pair is there, else "measured" now in one rotation (:func:`compare_all`, with ``how``) and each
        pair entered in the cache under the key of its two models."""
        keys = {(a, b): subgraph_key((models[a], models[b]), feed) for a, b in pairs}
        found = {pair: cache.comparison(key) for pair, key in keys.items()}
        if all(c is not None for c in found.values()):
            return found, "repeat" if all(key in cache.new for key in keys.values()) else "cache"
        measured = compare_all(tuple(m.SerializeToString() for m in models), feed, threads=self.threads,
                               pairs=pairs, **how)
        for pair, key in keys.items():
            cache.put_comparison(key, measured[pair])
        return measured, "measured"

    def call(self, model: Model) -> PassResult:
        start = time.perf_counter()
        renamed = name_nodes(model)
        plan = model.plan
        regions = partition(model)
        if not regions:
            return PassResult(model, renamed)
        others = [glob.escape(n.name) for n in model.graph if n.op_type in plan.target.int8_ops and n not in plan.layers]
        evaluator = Evaluator.builder(model, exclude=[*self.exclude, *others], assign_options={
            "target": plan.target, "per_channel": self.per_channel and plan.target.per_channel,
            "float_linear_outputs": self.float_linear_outputs, "region": self.region})
        int8_model = lower(model.clone())
        float_proto, int8_proto = (to_proto(m, interface_symbols_only=True) for m in (evaluator.base, int8_model))
        float_index, int8_index = Indexed(float_proto), Indexed(int8_proto)
        types = {v.name: v.dtype for m in (evaluator.base, int8_model) for v in m.graph.values() if v.dtype}
        feed = next(iter(open_calibration(self.data, model_inputs(model))))
        candidates = units(model, regions, len(regions))
        cuts = {r.index: region_subgraphs(r, float_index, int8_index, types, {}) for r in regions + candidates}
        wanted = list(dict.fromkeys(x for pair in cuts.values() for sub in pair for x in sub.inputs))
        tensors = _capture(evaluator.base, wanted, feed)
        shapes = {k: v.shape for k, v in tensors.items()}
        cache = LatencyCache(self.cache or default_cache_path(), machine_key(self.threads))
        ops = {n.name: n.op_type for n in model.graph}
        comparisons: dict[int, Comparison | None] = {}
        rows: list[dict[str, Any]] = []

        def measure(region: Region) -> None:
            row = {"region": region.index, "parent": region.parent, "layers": len(region.layers),
                   "ops": _describe(region, ops), "first": region.layers[0]}
            try:
                pair = region_subgraphs(region, float_index, int8_index, types, shapes)
                fed = {x: tensors[x] for x in dict.fromkeys(pair[0].inputs + pair[1].inputs)}
                found, row["source"] = self._compared(cache, tuple(p.proto for p in pair), fed)
                comparison = found[0, 1]
            except cut_errors() as exc:
                comparison = None
                row["source"] = f"not measured: {type(exc).__name__}: {str(exc).splitlines()[0][:120]}"
            comparisons[region.index] = comparison
            rows.append({**row, **(asdict(comparison) if comparison else {})})

        for region in regions:
            measure(region)
        # layers alone only where their region is slower in int8 and takes a share of the time worth a search
        regions_ms = sum(c.float_ms for r in regions if (c := comparisons[r.index]) is not None)
        slower = {r.index for r in regions if (c := comparisons[r.index]) is not None and not c.int8
                  and c.float_ms >= self.min_share * regions_ms}
        for unit in [u for u in candidates if u.parent in slower][:self.max_units]:
            measure(unit)
        measured_units = [u for u in candidates if u.index in comparisons]
        chosen = choose(regions, comparisons, measured_units, touching(model, measured_units))
        rejected = _rejected(regions, chosen)
        checked, built, placed_whole = chosen, None, None
        # what the regions measured alone propose must pay off as a whole model: the all-int8 model and the
        # placed one, each against float, and the placed one against the all-int8 one, in one rotation
        if chosen and rejected:
            built = evaluator.build(rejected)
            placed = to_proto(lower(built.clone()), interface_symbols_only=True)
            whole, _ = self._compared(cache, (float_proto, int8_proto, placed), feed, ((0, 1), (0, 2), (1, 2)),
                                      **WHOLE_MODEL)
            whole_model, placed_whole = whole[0, 1], whole[0, 2]
        else:
            whole_model = self._compared(cache, (float_proto, int8_proto), feed, **WHOLE_MODEL)[0][0, 1]
        result = "int8" if whole_model.int8 else "float"
        if placed_whole is not None and placed_whole.int8 and (result == "float" or whole[1, 2].int8):
            result, whole_model = "placed", placed_whole
        if result != "placed":
            chosen, built = (regions if result == "int8" else []), None
            rejected = _rejected(regions, chosen)
        cache.save()
        kept = {r.index for r in chosen}
        for row in rows:
            row["choice"] = "int8" if row["region"] in kept or row["parent"] in kept else "float"
        float_ms = whole_model.float_ms
        plan.reports["latency_placement"] = {
            "machine": cache.machine, "cache": str(cache.path), "float_ms": float_ms, "result": result,
            "predicted_ms": whole_model.int8_ms if result != "float" else float_ms,
            "additive_ms": predicted_ms(float_ms, checked, comparisons), "regions": rows,
            "int8_regions": sum(r.parent is None for r in chosen), "int8_units": sum(r.parent is not None for r in chosen),
            "all_int8": all(r.index in kept for r in regions), "regions_total": len(regions),
            "measured": sum(r["source"] == "measured" for r in rows),
            "whole_model": asdict(whole_model),
            "placed_model": asdict(placed_whole) if placed_whole is not None else None,
            "seconds": time.perf_counter() - start}
        if not rejected:
            return PassResult(model, renamed)
        if not chosen and plan.float_reference is not None:
            restore(model, plan.float_reference, "float reference")
            plan.reports["latency_placement"]["seconds"] = time.perf_counter() - start
            return PassResult(model, True)
        built = built or evaluator.build(rejected)
        expected = {n.name for n in plan.layers} - set(rejected)  # (absorbed activations are layers too)
        if {n.name for n in built.plan.layers} != expected:
            plan.reports["latency_placement"]["rebuilt_layers_differ"] = sorted(
                expected ^ {n.name for n in built.plan.layers})
        built.plan.reports = plan.reports
        built.plan.float_reference, built.plan.original_model = plan.float_reference, plan.original_model
        model.graph, model.plan = built.graph, built.plan
        plan.reports["latency_placement"]["seconds"] = time.perf_counter() - start
        return PassResult(model, True)

