"""The Interpreter: runs any model qcompiler reads or writes, float or quantized, node by node.

torch.fx's ``Interpreter`` made concrete for ONNX (see ``anchors-style.md`` C9):

* **Planned once** (``__init__``): the nodes in topological order become :class:`Step` objects, each
  with its kernel resolved from the registry (``(domain, op_type, opset)``, first backend that has it)
  or prepared from ``onnx.reference`` (:mod:`.fallback`), its attributes, and the values that die
  after it. A kernel with a ``prepare`` (see :mod:`qcompiler.kernels.registry`) is specialized for the
  step's constant inputs (initializers that no feed can override), attributes bound. Under a fusing profile (:mod:`.profiles`), a copy of the model gets onnxruntime's Q/DQ
  propagation (:mod:`.propagation`) and its QDQ node units (:mod:`.fusion`) become one step running
  the integer kernel, with the target's accumulation; kernels that take an ``isa`` (Softmax, Erf) get
  the profile's, to reproduce that CPU's MLAS float arithmetic.
* **Run** (:meth:`Interpreter.run`): an environment ``Value -> ndarray`` holds initializers and feeds;
  each step's inputs are looked up, :meth:`Interpreter.run_node` computes its outputs, and values are
  dropped after their last use (``free_dead_values``; graph outputs are kept).
* **Errors name the node**: a kernel failure is re-raised as :class:`ExecutionError` with the step's
  op, name and the nodes it was fused from.
* **Subclasses** override ``run_node`` (see :mod:`.observers`).
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np
from onnx.helper import tensor_dtype_to_np_dtype

from .. import ir
from ..errors import UserError
from ..kernels import DEFAULT_BACKENDS, RUNTIME, KernelNotFound, KernelRegistry, default_registry
from .fallback import reference_kernel
from .fusion import find_fusions
from .propagation import propagate_qdq
from .profiles import Profile, get_profile


class ExecutionError(UserError):
    """A node failed to run; the message names it (op, name, fused nodes) and the cause."""


@dataclass
class Step:
    """One planned kernel call: ``outputs = kernel(*inputs, **attrs)``, covering IR ``nodes``."""

    op: str
    name: str
    kernel: Callable
    inputs: tuple[ir.Value | None, ...]
    outputs: tuple[ir.Value | None, ...]
    attrs: dict
    nodes: tuple[ir.Node, ...]
    source: str  # "kernel" (ours) or "onnx.reference"
    release: tuple[ir.Value, ...] = field(default=())

    def describe(self) -> str:
        text = f"{self.op} node {self.name!r}"
        if len(self.nodes) > 1:
            text += " (fused from " + ", ".join(f"{n.op_type} {n.name!r}" for n in self.nodes) + ")"
        return text


def _accepts(kernel: Callable, keyword: str) -> bool:
    try:
        return keyword in inspect.signature(kernel).parameters
    except (TypeError, ValueError):
        return False


def _accepts_accumulation(kernel: Callable) -> bool:
    return _accepts(kernel, "accumulation")


def _describe_shape(shape: tuple) -> str:
    text = ", ".join("?" if d is None or (isinstance(d, int) and d < 0) else str(d) for d in shape)
    return f"({text},)" if len(shape) == 1 else f"({text})"


def _check_shape(value: ir.Value, array: np.ndarray, symbols: dict[str, tuple[str, int, int]]) -> None:
    """A feed's shape against the graph input's declared one: the rank, every static dimension, and
    dimensions named by the same symbol equal across the inputs (``symbols``: first seen, by symbol)."""
    if value.shape is None:
        return
    expected = _describe_shape(value.shape)
    if len(value.shape) != array.ndim or any(isinstance(d, int) and d >= 0 and d != n
                                             for d, n in zip(value.shape, array.shape)):
        raise UserError(f"input {value.name!r} has shape {tuple(array.shape)}, the model expects {expected}")
    for axis, (dim, size) in enumerate(zip(value.shape, array.shape)):
        if isinstance(dim, str) and dim not in ("", "?"):
            first = symbols.setdefault(dim, (value.name, axis, size))
            if first[2] != size:
                raise UserError(f"input {value.name!r} has size {size} on axis {axis} ({dim!r}) but input "
                                f"{first[0]!r} has size {first[2]} on axis {first[1]}; the model expects them equal")


class Interpreter:
    """Run ``model`` (an IR model or an ONNX file) with numerics ``profile`` (see :mod:`.profiles`).

    ``registry``/``backends`` choose the kernels (jit first, then the numpy reference by default);
    ``free_dead_values=False`` keeps every value of the last run in :attr:`values` (by name).
    """

    def __init__(self, model: ir.Model | str | os.PathLike, *, profile: str | Profile = "simulate",
                 registry: KernelRegistry = default_registry, backends=DEFAULT_BACKENDS,
                 free_dead_values: bool = True):
        model = model if isinstance(model, ir.Model) else ir.load(model)
        self.profile = get_profile(profile)
        self.model = propagate_qdq(model) if self.profile.fuse else model
        self.registry, self.backends = registry, tuple(backends)
        self.free_dead_values = free_dead_values
        graph = self.model.graph
        self.constants = {v: v.const for v in graph.values() if v.const is not None}
        self._fixed = set(self.constants) - set(graph.inputs)
        self.steps = self._plan()
        self.values: dict[str, np.ndarray] = {}

    # -- planning -------------------------------------------------------------------------------
    def _kernel(self, domain: str, op_type: str, node: ir.Node | None) -> tuple[Callable, str, dict]:
        """``(kernel, source, extra attributes)``: ours (with the profile's accumulation and isa where the
        kernel takes them) or ``onnx.reference``'s."""
        opset = self.model.opset_imports.get(domain, 1 if domain else self.model.opset)
        try:
            kernel = self.registry.lookup(domain, op_type, opset, self.backends)
        except KernelNotFound:
            if node is None:
                raise
            return reference_kernel(node, self.model), "onnx.reference", {}
        wanted = 0 if node is None else sum(v is not None for v in node.outputs)
        if wanted > getattr(kernel, "outputs", wanted):  # outputs ours does not compute (MaxPool's Indices)
            return reference_kernel(node, self.model), "onnx.reference", {}
        extra = {}
        if self.profile.accumulation != "exact" and _accepts_accumulation(kernel):
            extra["accumulation"] = self.profile.accumulation
        if self.profile.isa is not None and _accepts(kernel, "isa"):
            extra["isa"] = self.profile.isa
        return kernel, "kernel", extra

    def _plan(self) -> list[Step]:
        graph = self.model.graph
        fusions = find_fusions(self.model) if self.profile.fuse else []
        by_target = {f.target: f for f in fusions}
        absorbed = {n for f in fusions for n in (f.target,) + f.tail}
        steps: list[Step] = []
        for node in graph:
            if node in by_target:
                fusion = by_target[node]
                domain, op_type = fusion.kernel
                kernel, source, extra = self._kernel(domain, op_type, None)
                kernel, attrs = self._prepare(kernel, fusion.inputs, {**fusion.attrs, **extra})
                steps.append(Step(op_type, node.name, kernel, fusion.inputs, fusion.outputs, attrs, fusion.nodes,
                                  source))
            elif node not in absorbed:
                kernel, source, extra = self._kernel(node.domain, node.op_type, node)
                attrs = {**node.attrs, **extra} if source == "kernel" else {}
                inputs = node.inputs + (node.captures if source != "kernel" else ())
                if source == "kernel":
                    kernel, attrs = self._prepare(kernel, inputs, attrs)
                steps.append(Step(node.op_type, node.name, kernel, inputs, node.outputs, attrs, (node,), source))
        steps = self._drop_unused(steps)
        if self.free_dead_values:
            self._schedule_release(steps)
        return steps

    def _prepare(self, kernel: Callable, inputs, attrs: dict) -> tuple[Callable, dict]:
        """The kernel specialized for the constant inputs, if it has a ``prepare`` that covers them."""
        prepare = getattr(kernel, "prepare", None)
        if prepare is None:
            return kernel, attrs
        args = tuple(None if v is None else self.constants[v] if v in self._fixed else RUNTIME for v in inputs)
        prepared = prepare(args, **attrs)
        return (kernel, attrs) if prepared is None else (prepared, {})

    def _drop_unused(self, steps: list[Step]) -> list[Step]:
        """Remove steps none of whose outputs is read (DQs whose only consumers were fused)."""
        needed = set(self.model.graph.outputs)
        kept = []
        for step in reversed(steps):
            if any(v is not None and v in needed for v in step.outputs):
                kept.append(step)
                needed.update(v for v in step.inputs if v is not None)
        return kept[::-1]

    def _schedule_release(self, steps: list[Step]) -> None:
        keep = set(self.model.graph.outputs) | set(self.constants)
        seen: set[ir.Value] = set()
        for step in reversed(steps):
            dying = [v for v in step.inputs if v is not None and v not in seen and v not in keep]
            step.release = tuple(dict.fromkeys(dying))
            seen.update(v for v in step.inputs if v is not None)
            step.release += tuple(v for v in step.outputs if v is not None and v not in seen and v not in keep)

    # -- running --------------------------------------------------------------------------------
    def _feeds(self, feeds: Mapping[str, np.ndarray]) -> dict[ir.Value, np.ndarray]:
        env: dict[ir.Value, np.ndarray] = dict(self.constants)
        symbols: dict[str, tuple[str, int, int]] = {}
        for value in self.model.graph.inputs:
            if value in env and value.name not in feeds:
                continue  # an initializer listed as input, not overridden
            if value.name not in feeds:
                raise UserError(f"missing input {value.name!r}; the model's inputs are "
                                f"{', '.join(v.name for v in self.model.graph.inputs if v not in self.constants)}")
            array = np.asarray(feeds[value.name])
            if value.dtype is not None and array.dtype != tensor_dtype_to_np_dtype(value.dtype):
                raise UserError(f"input {value.name!r} has type {array.dtype}, the model expects "
                                f"{np.dtype(tensor_dtype_to_np_dtype(value.dtype))}")
            _check_shape(value, array, symbols)
            env[value] = array
        unknown = set(feeds) - {v.name for v in self.model.graph.inputs}
        if unknown:
            raise UserError(f"unknown input(s) {', '.join(sorted(unknown))}")
        return env

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The graph outputs (by name) for ``feeds`` (graph input name -> array)."""
        env = self._feeds(feeds)
        with np.errstate(all="ignore"):  # IEEE results (inf, NaN) are the ops' answers, as in onnxruntime
            for step in self.steps:
                args = [env[v] if v is not None else None for v in step.inputs]
                try:
                    results = self.run_node(step, args)
                except UserError:
                    raise
                except Exception as exc:  # noqa: BLE001 - re-raised with the node named
                    raise ExecutionError(f"{step.describe()}: {type(exc).__name__}: {exc}") from exc
                for value, array in zip(step.outputs, results, strict=False):
                    if value is not None:
                        env[value] = array
                for value in step.release:
                    env.pop(value, None)
        if not self.free_dead_values:
            self.values = {v.name: a for v, a in env.items()}
        return {v.name: env[v] for v in self.model.graph.outputs}

    def run_node(self, step: Step, inputs: list) -> tuple[np.ndarray, ...]:
        """Compute one step: the override point for subclasses. Returns the outputs as a tuple."""
        result = step.kernel(*inputs, **step.attrs)
        return result if isinstance(result, tuple) else (result,)
