"""Per-layer sensitivity: how much each quantizable layer changes the model's outputs.

A *layer* is a node ``assign-precision`` quantizes that has an int8 kernel of its own (Conv, MatMul,
Gemm, Add, Concat, pooling); pass-through ops and absorbed activations follow the layers around
them. A *configuration* (:class:`Configuration`) is the set of layers kept in float, and the set of
layers whose activations are 16-bit (A16W8: the activation inputs of such a layer get the target's
16-bit scheme over the extremes calibration observed, its weights stay int8). :class:`Evaluator`
builds the model of a configuration by running the project's own precision assignment with the float
layers excluded (so every configuration is one the compiler could emit: no float islands inside an
int8 region), gives each quantized value the spec calibrated for the all-int8 model (ranges come from
the float model, so they do not depend on the configuration), widens the 16-bit ones, inserts Q/DQ and
runs it in onnxruntime with graph optimizations off: the *simulated* (fake-quant) numerics, as ONNX
Runtime's ``qdq_loss_debug`` and AIMET's QuantSim measure them. One configuration costs one onnxruntime
session and one run per feed; results are cached by the set of nodes that end up quantized and the 16-bit
layers among them.

Every session runs on one onnxruntime thread (:data:`qcompiler.scaleout.SESSION_THREADS`: the same
numbers on any machine), and the parallelism comes from evaluating independent configurations at once:
on this process's threads (:class:`~qcompiler.scaleout.ThreadExecutor`, one per usable CPU) or on Ray
workers (:mod:`qcompiler.scaleout.sensitivity`).

Two sensitivities per layer (the two views of AIMET's ``QuantAnalyzer`` per-layer analysis):
``quantized alone`` (every other layer float) and ``float alone`` (every other layer quantized).

The error measures, over ``F`` feeds and the graph outputs ``o`` (arrays flattened and pooled over
the feeds):

* ``nsr`` (noise-to-signal ratio): the mean over outputs of ``||Ŷ_o - Y_o||² / ||Y_o||²``, the
  relative squared error; ``sqnr_db = -10·log10(nsr)`` (Q-Diffusion, ModelOpt and Quark report the
  same quantity as SQNR). 0 exactly when every output is bit-identical.
* ``cosine``: the mean over outputs of the cosine similarity of ``Ŷ_o`` and ``Y_o``.
* ``metric``: a user callback ``metric(reference, outputs) -> float`` (an error: 0 = identical),
  where ``reference`` and ``outputs`` are lists (one per feed) of lists (one per output) of arrays.
"""

from __future__ import annotations

import functools
import glob
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx

from .assignment import assign
from .ir import Model, QuantSpec, SavedModel, Value, to_proto
from .ir.quant import SIXTEEN_BIT
from .scaleout import SESSION_THREADS, ThreadExecutor, session_options, usable_cpus
from .lowering import lower
from .ops import lookup

Outputs = list[list[np.ndarray]]
Metric = Callable[[Outputs, Outputs], float]


def error_measures(reference: Outputs, outputs: Outputs, metric: Metric | None = None) -> dict[str, float]:
    """``nsr``, ``sqnr_db``, ``cosine`` (and ``metric`` when given) of ``outputs`` against ``reference``."""
    ratios, cosines = [], []
    for o in range(len(reference[0])):
        ref = np.concatenate([np.ravel(r[o]).astype(np.float64) for r in reference])
        out = np.concatenate([np.ravel(q[o]).astype(np.float64) for q in outputs])
        energy, noise = float(ref @ ref), float(np.square(out - ref).sum())
        ratios.append(noise / energy if energy > 0 else (0.0 if noise == 0 else math.inf))
        norms = math.sqrt(energy * float(out @ out))
        cosines.append(float(ref @ out) / norms if norms > 0 else float(noise == 0))
    nsr = float(np.mean(ratios))
    result = {"nsr": nsr, "sqnr_db": nsr_db(nsr),
              "cosine": float(np.mean(cosines))}
    if metric is not None:
        result["metric"] = float(metric(reference, outputs))
    return result


def nsr_db(nsr: float) -> float:
    """A noise-to-signal ratio as an SQNR in dB, ``-10 log10(nsr)``; inf when ``nsr`` is 0."""
    return -10.0 * math.log10(nsr) if nsr > 0 else math.inf


def run_session(model: bytes | str | onnx.ModelProto, feeds: Iterable[dict[str, np.ndarray]],
                simulated: bool = True, threads: int = SESSION_THREADS) -> Outputs:
    """Outputs of ``model`` on every feed; ``simulated`` turns onnxruntime's graph optimizations off,
    so Q/DQ pairs run as written (fake-quant) instead of being fused into integer kernels; ``threads``:
    intra-op threads (0: onnxruntime's default).

    Every array is copied out of onnxruntime's: an output onnxruntime returns is a view on memory the
    session's arena owns, and keeps that arena alive after the session is gone. The sensitivity analysis
    holds the outputs of a whole batch of configurations before it compares them, and held that way they
    kept one arena per configuration alive."""
    import onnxruntime as ort

    options = session_options(threads, optimize=not simulated)
    data = model if isinstance(model, (bytes, str)) else model.SerializeToString()  # str: a path
    session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
    names = {i.name for i in session.get_inputs()}
    return [[np.array(output) if isinstance(output, np.ndarray) else output
             for output in session.run(None, {k: v for k, v in feed.items() if k in names})] for feed in feeds]


def quantizable_layers(model: Model) -> list[str]:
    """Names of the nodes the plan quantizes whose op has an int8 kernel on its target (the layers), in
    graph order."""
    ops = model.plan.target.int8_ops
    return [n.name for n in model.graph if model.plan.is_quantized(n) and n.op_type in ops]


def name_nodes(model: Model) -> bool:
    """Give every node a unique name that is not also an op type (so an exclusion names one node);
    True when a node was renamed."""
    ops = {n.op_type for n in model.graph}
    seen: set[str] = set()
    renamed = False
    for node in model.graph:
        if not node.name or node.name in seen or node.name in ops:
            node.name = model.graph.unique_name(f"{node.op_type}_{len(seen)}")
            renamed = True
        seen.add(node.name)
    return renamed


@dataclass(frozen=True)
class Configuration:
    """The precision of every layer: those in ``float_layers`` stay float, those in ``wide_layers`` read
    16-bit activations (with int8 weights), the others run int8."""

    float_layers: frozenset[str] = frozenset()
    wide_layers: frozenset[str] = frozenset()

    @classmethod
    def of(cls, configuration: Configuration | Iterable[str]) -> Configuration:
        """A :class:`Configuration` as given, or the one that keeps the named layers float."""
        return configuration if isinstance(configuration, Configuration) else cls(frozenset(configuration))


@dataclass
class Evaluation:
    """One evaluated configuration: the layers kept float, the nodes quantized, the error measures, the
    size of the model as the compiler writes it (bytes, integer weights stored) and the layers that read
    16-bit activations."""

    float_layers: frozenset[str]
    quantized_nodes: frozenset[str]
    errors: dict[str, float]
    size: int
    wide_layers: frozenset[str] = frozenset()

    @property
    def configuration(self) -> Configuration:
        return Configuration(self.float_layers, self.wide_layers)


@dataclass
class Evaluator:
    """Builds and evaluates configurations of a calibrated model (see the module docstring).

    Attributes:
        base: the float model (after canonicalization, no specs), every node named.
        specs: the calibrated spec of every value of the all-int8 model, by value name.
        assign_options: ``assign`` keyword arguments (target, per_channel, float_linear_outputs).
        exclude: the user's exclusions (always float).
        feeds: the feeds the error is measured on.
        reference: the float outputs on ``feeds``.
        metric: optional user error callback.
        weights: elements of the constant weight of every weighted node, by node name.
        workers: configurations measured at once on this process's threads when no scale-out executor
            is in scope (default: the CPUs this process may use).
        cache: evaluations by their key (:meth:`key`); keys: that key by
            :class:`Configuration` asked for.
        observed: the extremes calibration observed, by value name (``QuantPlan.observed``): 16-bit specs.
        remote: a scale-out executor's handle on this evaluator's state (:mod:`qcompiler.scaleout.sensitivity`).
    """

    base: Model
    specs: dict[str, QuantSpec]
    assign_options: dict[str, Any]
    exclude: list[str]
    feeds: list[dict[str, np.ndarray]]
    reference: Outputs
    metric: Metric | None = None
    weights: dict[str, int] = field(default_factory=dict)
    workers: int = field(default_factory=usable_cpus)
    cache: dict[tuple[frozenset[str], frozenset[str]], Evaluation] = field(default_factory=dict)
    keys: dict[Configuration, tuple[frozenset[str], frozenset[str]]] = field(default_factory=dict)
    observed: dict[str, tuple[float, float]] = field(default_factory=dict)
    evaluations: int = 0
    remote: Any = field(default=None, repr=False)

    @classmethod
    def from_calibrated(cls, model: Model, feeds: list[dict[str, np.ndarray]], *, assign_options: dict[str, Any],
                        exclude: Iterable[str] = (), reference_model: SavedModel | None = None,
                        metric: Metric | None = None) -> Evaluator:
        """From a model after ``assign-precision`` and calibration (its nodes must be uniquely named,
        see :func:`name_nodes`); the reference outputs are those of ``reference_model`` (the
        original FP32 file) when given, else of the float model."""
        evaluator = cls.builder(model, assign_options=assign_options, exclude=exclude)
        evaluator.feeds, evaluator.metric = feeds, metric
        evaluator.reference = run_session(reference_model.source if reference_model else to_proto(evaluator.base),
                                          feeds)
        return evaluator

    @classmethod
    def builder(cls, model: Model, *, assign_options: dict[str, Any], exclude: Iterable[str] = ()) -> Evaluator:
        """An evaluator that only builds configurations of a calibrated ``model`` (no feeds, no reference
        outputs; latency placement uses it)."""
        specs = {v.name: v.quant for v in model.graph.values() if v.quant is not None}
        base = model.clone()
        for value in base.graph.values():
            value.quant = None
        weights = {n.name: int(n.inputs[1].const.size) for n in base.graph
                   if lookup(n).role == "layer" and len(n.inputs) > 1 and n.inputs[1] is not None
                   and n.inputs[1].const is not None}
        return cls(base, specs, dict(assign_options), list(exclude), [], [], None, weights,
                   observed=dict(model.plan.observed))

    @functools.cached_property
    def threads(self) -> ThreadExecutor:
        """The local path's executor: ``workers`` threads of this process."""
        return ThreadExecutor(self.workers)

    def build(self, configuration: Configuration | Iterable[str]) -> Model:
        """The configuration's model (a :class:`Configuration`, or the layers kept float): assignment with
        the float layers excluded, calibrated specs, the 16-bit ones widened, no Q/DQ yet."""
        configuration = Configuration.of(configuration)
        model = self.base.clone()
        patterns = self.exclude + [glob.escape(name) for name in configuration.float_layers]
        assign(model, exclude=patterns, **self.assign_options)
        ranged = {*model.plan.pending, *model.plan.shares}
        for value in model.graph.values():
            marked = value.quant is not None or value in ranged
            value.quant = self.specs.get(value.name) if marked else None
        model.plan.pending.clear()
        if configuration.wide_layers:
            widen(model, configuration.wide_layers, self.observed)
        return model

    @staticmethod
    def key(model: Model, configuration: Configuration) -> tuple[frozenset[str], frozenset[str]]:
        """What the model :meth:`build` made of ``configuration`` is cached by: (the nodes quantized, the
        quantized ones among the 16-bit layers); two configurations with the same key build the same model."""
        quantized = frozenset(n.name for n in model.plan.layers)
        return quantized, configuration.wide_layers & quantized

    def run(self, model: Model) -> tuple[Outputs, int]:
        """(outputs on the feeds, written size) of a model with specs and no Q/DQ yet (:func:`lower`ed here)."""
        proto = to_proto(lower(model))
        return run_session(proto, self.feeds), proto.ByteSize()

    def measure(self, model: Model) -> tuple[dict[str, float], int]:
        """(error measures, written size) of a model with specs and no Q/DQ yet."""
        outputs, size = self.run(model)
        self.evaluations += 1
        return error_measures(self.reference, outputs, self.metric), size

    def evaluate(self, configuration: Configuration | Iterable[str]) -> Evaluation:
        """Error of the configuration (a :class:`Configuration`, or the layers kept float) against the
        reference (cached by :meth:`key`)."""
        configuration = Configuration.of(configuration)
        key = self.keys.get(configuration)
        if key is None:
            model = self.build(configuration)
            key = self.keys[configuration] = self.key(model, configuration)
            if key not in self.cache:
                self.cache[key] = Evaluation(configuration.float_layers, key[0], *self.measure(model),
                                             configuration.wide_layers)
        cached = self.cache[key]
        return Evaluation(configuration.float_layers, key[0], cached.errors, cached.size, configuration.wide_layers)

    def evaluate_all(self, configurations: Iterable[Configuration | Iterable[str]]) -> list[Evaluation]:
        """:meth:`evaluate` of each configuration, in order. The configurations not known yet are first
        measured all at once, on the workers of the scale-out executor in scope
        (:func:`qcompiler.scaleout.current`) or else on ``workers`` threads of this process, and entered
        in the cache in the order given: the cache, ``evaluations`` and every result are the sequential
        loop's (:mod:`qcompiler.scaleout.sensitivity`)."""
        configurations = [Configuration.of(c) for c in configurations]
        from .scaleout import current
        from .scaleout.sensitivity import prefetch

        executor = current()
        if executor is None and self.workers > 1:
            executor = self.threads
        if executor is not None:
            prefetch(executor, self, configurations)
        return [self.evaluate(c) for c in configurations]


def layer_sensitivity(evaluator: Evaluator, layers: list[str], both: bool = True) -> dict[str, dict[str, Any]]:
    """Per layer: the errors with the layer ``quantized_alone`` and (``both``) with it ``float_alone``."""
    everything = frozenset(layers)
    configurations = [c for name in layers for c in ([everything - {name}, {name}] if both else [everything - {name}])]
    evaluations = iter(evaluator.evaluate_all(configurations))
    result: dict[str, dict[str, Any]] = {}
    for name in layers:
        record = {"quantized_alone": next(evaluations).errors}
        if both:
            record["float_alone"] = next(evaluations).errors
        result[name] = record
    return result


def widen(model: Model, layers: Iterable[str], observed: dict[str, tuple[float, float]]) -> list[Value]:
    """Give the activations the quantized ``layers`` of ``model`` read (and the values sharing their spec
    through pass-through ops) a 16-bit spec: the target's ``wide_activation_scheme`` over the extremes
    calibration observed (with 65,536 levels the whole range costs less than any clipping), or over the
    8-bit spec's range where none was observed. Returns the values widened (one quantizer per tensor: a
    value read by an int8 layer too is 16-bit for both).

    A weight the target limits to 7 bits (u8·s8 pairs that saturate an int16) gets all 8 bits over the
    same range when only widened layers read it: no u8·s8 kernel reads a 16-bit activation."""
    plan, names = model.plan, set(layers)
    nodes = [node for node in model.graph if node.name in names and plan.is_quantized(node)]
    for node in nodes:
        index = lookup(node).weight_input
        weight = node.inputs[index] if index is not None and index < len(node.inputs) else None
        if weight is not None and weight.quant is not None and plan.target.reduces_weight_range([node]) \
                and all(use.node.name in names for use in weight.uses()):
            spec = weight.quant
            reach = np.abs(spec.scale) * (spec.qmax // 2)  # a 7-bit symmetric grid reaches qmax // 2 steps
            weight.quant = QuantSpec.from_range(-reach, reach, spec.dtype, symmetric=True, axis=spec.axis)
    roots: dict[Value, None] = {}
    for node in nodes:
        for value in node.inputs:
            if value is not None and value.const is None and value.quant is not None:
                roots[plan.source_of(value)] = None
    sharing: dict[Value, list[Value]] = {}
    for value in plan.shares:
        sharing.setdefault(plan.source_of(value), []).append(value)
    scheme = plan.target.wide_activation_scheme
    widened = []
    for root in roots:
        if root.quant.dtype in SIXTEEN_BIT:
            continue
        lo, hi = observed.get(root.name) or root.quant.float_range()
        spec = scheme.spec_from_range(lo, hi)
        for value in (root, *sharing.get(root, ())):
            if value.quant is not None:
                value.quant = spec
                widened.append(value)
    return widened
