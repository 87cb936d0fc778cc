"""The quantization plan: the decisions passes hand to each other, typed, on the model.

``assign-precision`` (or any pass that decides a scheme) starts the plan: the target, the layers that
run quantized, the activations absorbed into the quantization before them (Relu, Clip), the activations
that still need a range (with the :class:`~qcompiler.ir.quant.Scheme` their spec will follow) and the
values that reuse another value's spec (pass-through ops). ``calibrate`` turns pending activations into
specs (:meth:`QuantPlan.set_ranges`); ``insert-qdq`` materializes every spec as Q/DQ and marks the plan
lowered. ``recognize-structure`` records the model's regions and the treatment each gets
(:class:`Region`; transformer blocks, the rest), which region-aware passes read. The plan also keeps
the serialized models that later passes compare against (the float model before quantization, the
original file) and the reports passes write for people (``reports``).

Passes declare which *facts* they need and provide (:data:`FACTS`); a fact is read off the model, so it
survives cloning and is the same whether a pass ran in this pipeline or an earlier one. The
PassManager refuses a pipeline whose order leaves a need unmet before any pass runs.

Entries refer to nodes and values by identity; :meth:`QuantPlan.remapped` carries a plan over to a copy
of the graph (``Model.clone``, ``Model.update_from``), matching values by name and nodes by their first
output's name.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from .quant import QuantSpec, Scheme

if TYPE_CHECKING:
    from ..targets import Target
    from ._core import Model, Node, Value
    from .serde import SavedModel


@dataclass
class Region:
    """Nodes that get one treatment (``"transformer"``, ``"convolutional"``) and why (for the summary)."""

    treatment: str
    reason: str
    nodes: dict[Node, None] = field(default_factory=dict)


@dataclass
class QuantPlan:
    """The quantization decisions of a model (see the module docstring).

    Attributes:
        target: what the model is quantized for; None until a pass starts the plan.
        layers: the nodes that run quantized, in the order they were decided (an ordered set).
        absorbed: activations (Relu, Clip) folded into the output quantization of the layer before.
        pending: activations that need a range, with the scheme their spec will follow.
        dynamic: activations quantized at run time (a dynamic scheme: the scale comes from the tensor
            itself, ``DynamicQuantizeLinear``), which need no range.
        shares: pass-through outputs -> the value whose spec they reuse.
        spans: activations whose range is the union of other values' ranges (a Concat's output: its
            inputs'), in the order they were decided; :meth:`set_ranges` widens them.
        lowered: Q/DQ nodes have been inserted for every spec.
        float_reference: the float model before quantization, kept aside (``keep-float-reference``).
        original_model: the input model before canonicalization, kept aside (``keep-original-model``).
        batchnorm_stats: per-channel (mean, std) of BatchNorm outputs by value name, recorded before folding.
        regions: the model's regions and their treatments (``recognize-structure``); kept by :meth:`start`.
        given: the specs a QDQ input model carried, by value name (``ingest-qdq``; ``keep-qdq-scales``
            applies them); kept by :meth:`start`.
        observed: the smallest and largest value each calibrated activation took, by value name (a
            16-bit spec is made from them: with 65,536 levels the whole range costs less than clipping).
        reports: what passes measured and decided, by pass name, for people and the summary.
    """

    target: Target | None = None
    layers: dict[Node, None] = field(default_factory=dict)
    absorbed: set[Node] = field(default_factory=set)
    pending: dict[Value, Scheme] = field(default_factory=dict)
    dynamic: dict[Value, None] = field(default_factory=dict)
    shares: dict[Value, Value] = field(default_factory=dict)
    spans: dict[Value, list[Value]] = field(default_factory=dict)
    lowered: bool = False
    float_reference: SavedModel | None = None
    original_model: SavedModel | None = None
    batchnorm_stats: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    regions: list[Region] = field(default_factory=list)
    given: dict[str, QuantSpec] = field(default_factory=dict)
    observed: dict[str, tuple[float, float]] = field(default_factory=dict)
    reports: dict[str, Any] = field(default_factory=dict)

    # -- decisions -------------------------------------------------------------------------------
    def start(self, target: Target) -> None:
        """Begin a plan for ``target`` (forgetting earlier decisions, keeping references and reports)."""
        self.target = target
        self.layers.clear()
        self.absorbed.clear()
        self.pending.clear()
        self.dynamic.clear()
        self.shares.clear()
        self.spans.clear()
        self.lowered = False

    def in_region(self, node: Node | None, treatment: str) -> bool:
        """Whether ``node`` lies in a region given ``treatment``."""
        return node is not None and any(node in r.nodes for r in self.regions if r.treatment == treatment)

    def value_in_region(self, value: Value, treatment: str) -> bool:
        """Whether ``value``'s producer or one of its readers lies in a region given ``treatment``."""
        return self.in_region(value.producer(), treatment) or any(
            self.in_region(n, treatment) for n in value.consumers())

    def is_quantized(self, node: Node) -> bool:
        return node in self.layers

    def quantize_node(self, node: Node) -> None:
        self.layers[node] = None

    def absorb(self, node: Node) -> None:
        """Fold ``node`` (an activation right after a quantized layer) into that layer's output quantization."""
        self.absorbed.add(node)

    def needs_range(self, value: Value, scheme: Scheme) -> None:
        """``value`` gets a spec of ``scheme`` once its range is known (unless it shares another's); with a
        dynamic scheme it is quantized at run time instead and needs no range."""
        if value in self.shares:
            return
        if scheme.dynamic:
            self.dynamic[value] = None
        else:
            self.pending[value] = scheme

    def drop_range(self, value: Value) -> None:
        """``value`` is no longer quantized by itself (its reader was absorbed into its quantization)."""
        self.pending.pop(value, None)
        self.dynamic.pop(value, None)

    def share(self, value: Value, source: Value) -> None:
        """``value`` reuses ``source``'s spec (a pass-through op's output)."""
        self.shares[value] = source
        self.pending.pop(value, None)

    def span(self, value: Value, sources: list[Value]) -> None:
        """``value``'s range becomes the union of ``sources``' ranges once they are known (a Concat's output:
        the input with the widest range then has the output's spec, and the kernel copies it unchanged)."""
        self.spans[value] = list(sources)

    def set_ranges(self, ranges: Mapping[Value, tuple[Any, Any]],
                   observed: Mapping[Value, tuple[float, float]] | None = None) -> None:
        """Give every pending activation its spec from its range (the one calibration chose, or the union
        of its :attr:`spans` sources' ranges), then every sharing value its source's spec; ``observed``:
        the extremes each took, kept in :attr:`observed`. A pending activation without a range is an
        error of the caller."""
        self.observed.update({value.name: extremes for value, extremes in (observed or {}).items()})
        missing = [v.name for v in self.pending if v not in ranges]
        if missing:
            raise KeyError(f"no range for pending activation(s) {missing[:5]}")
        ranges = dict(ranges)
        for value, sources in self.spans.items():  # in decision order: a span's source may be an earlier span
            parts = [ranges.get(self.source_of(v)) for v in sources]
            if value in ranges and all(part is not None for part in parts):
                ranges[value] = (min(lo for lo, _ in parts), max(hi for _, hi in parts))
        for value, scheme in self.pending.items():
            lo, hi = ranges[value]
            value.quant = scheme.spec_from_range(lo, hi)
        self.pending.clear()
        for value, source in self.shares.items():
            value.quant = source.quant

    def source_of(self, value: Value) -> Value:
        """The value whose spec ``value`` reuses through pass-through ops (``value`` itself if none)."""
        while value in self.shares:
            value = self.shares[value]
        return value

    # -- carrying the plan to another graph ------------------------------------------------------
    def remapped(self, model: Model) -> QuantPlan:
        """This plan for ``model``, a copy of the graph it was made for (values matched by name,
        nodes by their first output's name; entries with no counterpart are dropped)."""
        values = {v.name: v for v in model.graph.values()}
        nodes = {n.outputs[0].name: n for n in model.graph if n.outputs and n.outputs[0] is not None}

        def node(n: Node) -> Node | None:
            return nodes.get(n.outputs[0].name) if n.outputs and n.outputs[0] is not None else None

        copy = QuantPlan(self.target, lowered=self.lowered, float_reference=self.float_reference,
                         original_model=self.original_model, batchnorm_stats=dict(self.batchnorm_stats),
                         given=dict(self.given), observed=dict(self.observed), reports=dict(self.reports))
        copy.regions = [Region(r.treatment, r.reason, {node(n): None for n in r.nodes if node(n) is not None})
                        for r in self.regions]
        copy.layers = {node(n): None for n in self.layers if node(n) is not None}
        copy.absorbed = {node(n) for n in self.absorbed if node(n) is not None}
        copy.pending = {values[v.name]: s for v, s in self.pending.items() if v.name in values}
        copy.dynamic = {values[v.name]: None for v in self.dynamic if v.name in values}
        copy.shares = {values[v.name]: values[s.name] for v, s in self.shares.items()
                       if v.name in values and s.name in values}
        copy.spans = {values[v.name]: [values[s.name] for s in sources] for v, sources in self.spans.items()
                      if v.name in values and all(s.name in values for s in sources)}
        return copy


FACTS: dict[str, tuple[str, Callable[[Model], bool]]] = {
    "plan": ("a quantization plan (the target, the layers to quantize)", lambda m: m.plan.target is not None),
    "ranges": ("a range for every activation the plan quantizes",
               lambda m: m.plan.target is not None and not m.plan.pending),
    "qdq": ("Q/DQ nodes for the plan's specs", lambda m: m.plan.lowered),
    "float-reference": ("the float model kept for comparison", lambda m: m.plan.float_reference is not None),
    "regions": ("the model's regions and their treatments", lambda m: bool(m.plan.regions)),
}
"""Facts passes need and provide: name -> (what it is, whether a model has it)."""


def facts_of(model: Model) -> set[str]:
    """The facts ``model`` has now."""
    return {name for name, (_, present) in FACTS.items() if present(model)}
