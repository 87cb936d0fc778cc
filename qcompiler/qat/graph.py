"""The fake-quantized model in torch: a compiled QDQ model whose quantizers become trainable.

:class:`TorchInterpreter` is the executor's :class:`~qcompiler.executor.Interpreter` with the torch kernel
backend only (no silent fallback to numpy, which would cut autograd): a model with an op the backend lacks
is refused up front with the op types named.

:class:`QuantizedModel` reads what is quantized, and how, from the model's Q/DQ nodes (a model qcompiler
compiled keeps no other record once written) and replaces them by trainable fake quantizers:

* **Weights**: ``DequantizeLinear(integer initializer)`` becomes ``fake_quantize(W, s_w)`` with a float
  latent weight ``W`` (started at the dequantized integers, the PTQ solution) and a step size ``s_w`` per
  channel / block (LSQ). The integer range is the stored type's, narrowed to what the integers use when
  the zero point is 0 (4-bit weights are stored in int8 with values -7..7): the smallest of ternary
  ``[-1, 1]``, 4-bit ``[-7, 7]`` and the 7-bit reduced range ``[-64, 63]`` (x86 without VNNI, where
  full-range weights saturate onnxruntime's int16 pair sums) that holds them; ``{-1, 1}`` alone means
  binary weights.
* **Activations**: a ``QuantizeLinear -> DequantizeLinear`` pair becomes one fake quantizer with a learned
  step (LSQ). Pairs whose scale and zero point initializers hold identical values share one step: the
  compiler gives equal scales to the inputs and outputs of ops that onnxruntime runs on the integers
  (MaxPool, Reshape, Concat, ...), and a written model must keep them equal.
* **Narrow activations**: a ``Clip`` with constant bounds ``(qmin - z) · s`` and ``(qmax - z) · s`` right
  before a QuantizeLinear restricts it to ``[qmin, qmax]`` inside its storage type (4-bit activations in
  uint8, :mod:`.lowbit`); the three nodes become one fake quantizer with that range, the bounds following
  the learned step.
* **int32 biases**: ``DequantizeLinear(int32)`` of a layer becomes ``round(b / (s_x · s_w)) · s_x · s_w``
  with a float bias ``b``, the scale following the layer's learned input and weight steps.
* **Fused units**: where onnxruntime runs a Q/DQ node unit as one integer kernel (QLinearConv, QLinearAdd,
  QLinearSoftmax, ...), the forward computes what that kernel computes (:mod:`.units`): what is trained is
  what is deployed, rounding included.
* **Float kernels**: a decomposed layer normalization (which onnxruntime fuses into one kernel) and Sigmoid
  compute onnxruntime's values, which round otherwise than torch's (:mod:`.float_kernels`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from .. import ir
from ..errors import UserError
from ..executor.interpreter import Interpreter, Step
from ..executor.propagation import propagate_qdq
from ..ir.quant import broadcast_param, dequantize_values, integer_range, spec_of_qdq
from ..kernels import KernelNotFound, default_registry
from ..kernels.torch_ops import BACKEND, registered_ops
from ..kernels.torch_ops._common import tensor
from ..kernels.torch_ops.quantize import (binary_fake_quantize, fake_quantize, lsq_gradient_factor, round_ste,
                                          straight_through)
from .float_kernels import float_kernel_units
from .units import fused_units


RESHAPES = frozenset({"Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity"})
"""Ops that keep the elements and their order: logits reshaped like the probabilities they led to."""


class TorchInterpreter(Interpreter):
    """The interpreter on the torch backend alone; ops without a torch kernel are refused by name."""

    def __init__(self, model: ir.Model, *, free_dead_values: bool = True):
        missing = sorted({f"{n.domain + '::' if n.domain else ''}{n.op_type}" for n in model.graph
                          if not _has_torch_kernel(n, model)})
        if missing:
            raise UserError(f"no torch kernel for {', '.join(missing)}: quantization-aware fine-tuning runs the "
                            f"model in torch, whose backend covers {', '.join(registered_ops())}")
        super().__init__(model, profile="simulate", backends=(BACKEND,), free_dead_values=free_dead_values)

    def replace_steps(self, replacements: dict[int, Step | None]) -> None:
        """Replace (or, for None, drop) the steps at the given indices, then re-plan value lifetimes."""
        self.steps = [replacements.get(i, step) for i, step in enumerate(self.steps) if replacements.get(i, step)]
        if self.free_dead_values:
            self._schedule_release(self.steps)


def _has_torch_kernel(node: ir.Node, model: ir.Model) -> bool:
    opset = model.opset_imports.get(node.domain, 1 if node.domain else model.opset)
    try:
        kernel = default_registry.lookup(node.domain, node.op_type, opset, (BACKEND,))
    except KernelNotFound:
        return False
    return sum(v is not None for v in node.outputs) <= getattr(kernel, "outputs", len(node.outputs))


@dataclass
class WeightQuantizer:
    """A weight ``DequantizeLinear``: its integer initializer, scale and output, and the trained range."""

    key: str
    integers: str  # names of the IR values
    scale: str
    output: str
    zero_point: np.ndarray
    storage: np.dtype
    axis: int | None
    block_size: int | None
    qmin: int
    qmax: int
    binary: bool = False


@dataclass
class ActivationQuantizer:
    """One learned activation step shared by the Q/DQ pairs whose scale initializers hold equal values."""

    key: str
    scales: list[str] = field(default_factory=list)  # every scale initializer of the pairs (Q's and DQ's)
    zero_point: np.ndarray | None = None
    clips: list[tuple[str, str, int, int]] = field(default_factory=list)  # (min, max initializer, qmin, qmax)


@dataclass(frozen=True)
class QuantizerSite:
    """One Q/DQ pair an activation quantizer replaces: the value it reads (before a narrowing Clip) and its
    integer range."""

    quantize: ir.Node
    dequantize: ir.Node
    key: str  # ActivationQuantizer.key
    source: ir.Value
    qmin: int
    qmax: int


@dataclass
class BiasQuantizer:
    """An int32 bias ``DequantizeLinear``: its layer's activation and weight quantizers give its scale."""

    key: str
    integers: str
    scale: str
    output: str
    activation: str  # ActivationQuantizer.key
    weight: str  # WeightQuantizer.key


def _narrow_range(integers: np.ndarray, zero_point: np.ndarray, dtype: np.dtype) -> tuple[int, int, bool]:
    """(qmin, qmax, binary) of a stored weight: see the module docstring."""
    lo, hi = integer_range(dtype)
    if np.any(np.asarray(zero_point, np.int64) != 0) or lo >= 0:
        return lo, hi, False
    values = np.asarray(integers, np.int64)
    if values.size and np.all(np.abs(values) == 1):
        return -1, 1, True
    low, high = (int(values.min()), int(values.max())) if values.size else (0, 0)
    for narrow_lo, narrow_hi in ((-1, 1), (-7, 7), (-64, 63)):  # ternary, 4-bit, x86-avx2's 7-bit reduced range
        if narrow_lo <= low and high <= narrow_hi and narrow_hi < hi:
            return narrow_lo, narrow_hi, False
    return lo, hi, False


def _narrowing_clip(quantize: ir.Node, spec) -> tuple[ir.Node, int, int] | None:
    """``(Clip, qmin, qmax)`` when ``quantize`` reads a Clip, read by it alone, whose constant bounds are
    ``(qmin - z) · s`` and ``(qmax - z) · s`` for integers inside the storage range (see the module docstring)."""
    clip = quantize.inputs[0].producer()
    if clip is None or clip.op_type != "Clip" or len(clip.inputs) < 3 or len(quantize.inputs[0].consumers()) != 1:
        return None
    bounds = [v.const if v is not None else None for v in clip.inputs[1:3]]
    if any(b is None for b in bounds):
        return None
    scale, zero = float(np.asarray(spec.scale).reshape(())), float(np.asarray(spec.zero_point).reshape(()))
    levels = [float(np.asarray(b).reshape(())) / scale + zero for b in bounds]
    integers = [round(v) for v in levels]
    if any(abs(v - i) > 1e-3 for v, i in zip(levels, integers, strict=True)) or not (
            spec.qmin <= integers[0] < integers[1] <= spec.qmax):
        return None
    return clip, integers[0], integers[1]


def _integer_dtype(value: ir.Value) -> np.dtype:
    return np.asarray(value.const).dtype


class QuantizedModel(torch.nn.Module):
    """``model`` (an IR model with constant-scale Q/DQ) as a torch module with trainable quantizers.

    ``forward(feeds)`` takes numpy feeds (graph input name -> array) and returns the graph outputs as
    tensors. Parameters: ``weight_<i>`` / ``weight_scale_<i>``, ``activation_scale_<i>``, ``bias_<i>``.

    It runs ``runtime``: the model as onnxruntime runs it, with its QDQ propagation applied
    (:func:`~qcompiler.executor.propagation.propagate_qdq`: ``Softmax -> Reshape -> Q`` gains a Q/DQ pair
    after the Softmax, which onnxruntime then fuses into QLinearSoftmax). The pairs it inserts read the
    scale and zero point initializers of the pairs they copy, so they share those quantizers' steps;
    :mod:`.export` writes the trained values into ``model``, by initializer name.
    """

    def __init__(self, model: ir.Model):
        super().__init__()
        self.model = model
        self.runtime = propagate_qdq(model)
        self.interpreter = TorchInterpreter(self.runtime)
        self.parameters_ = torch.nn.ParameterDict()
        self.weights: dict[str, WeightQuantizer] = {}
        self.activations: dict[str, ActivationQuantizer] = {}
        self.biases: dict[str, BiasQuantizer] = {}
        self.sites: dict[ir.Node, QuantizerSite] = {}  # by QuantizeLinear node
        self.record: dict[str, torch.Tensor] | None = None  # when a dict: integer activations by Q output name
        self.cuts: frozenset[str] = frozenset()  # values whose quantizer ends a block (:mod:`.blocks`)
        self.taps: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}  # at each cut: (q, low, high)
        self.logits: dict[str, torch.Tensor] = {}  # by graph output: the input of the Softmax that computes it
        self._build()
        self._tap_logits()

    # -- reading the quantizers -----------------------------------------------------------------
    def _build(self) -> None:
        index = {step.nodes[0]: i for i, step in enumerate(self.interpreter.steps) if len(step.nodes) == 1}
        replacements: dict[int, Step | None] = {}
        by_output: dict[str, str] = {}  # DQ output name -> activation key (for biases)
        weight_of_output: dict[str, str] = {}
        ties: dict[tuple, ActivationQuantizer] = {}
        for node in self.runtime.graph:
            if node.op_type != "DequantizeLinear" or node not in index:
                continue
            data, scale, zero = (list(node.inputs) + [None])[:3]
            if data is None or data.const is None or scale.const is None or data in self.runtime.graph.inputs:
                continue
            if np.asarray(data.const).dtype == np.int32:
                continue  # biases, once their layers' quantizers are known
            spec = spec_of_qdq(node)
            qmin, qmax, binary = _narrow_range(data.const, spec.zero_point, _integer_dtype(data))
            key = f"{len(self.weights)}"
            quantizer = WeightQuantizer(key, data.name, scale.name, node.outputs[0].name,
                                        np.asarray(spec.zero_point), _integer_dtype(data), spec.axis, spec.block_size,
                                        qmin, qmax, binary)
            float_weight = dequantize_values(np.asarray(data.const), _broadcast_np(spec.scale, data.const.shape, spec),
                                             _broadcast_np(spec.zero_point, data.const.shape, spec), np.float32)
            self.parameters_[f"weight_{key}"] = torch.nn.Parameter(torch.from_numpy(float_weight.copy()))
            self.parameters_[f"weight_scale_{key}"] = torch.nn.Parameter(
                torch.from_numpy(np.asarray(scale.const, np.float32).copy()))
            self.weights[key] = quantizer
            weight_of_output[quantizer.output] = key
            replacements[index[node]] = self._weight_step(node, quantizer)
        for node in self.runtime.graph:
            if node.op_type != "QuantizeLinear" or node not in index:
                continue
            pair = self._pair(node)
            if pair is None:
                continue
            spec = spec_of_qdq(node)
            if spec.axis is not None:
                continue  # per-channel activations: left as they are (not what the compiler writes)
            tie = (np.asarray(spec.scale, np.float32).tobytes(), np.asarray(spec.zero_point).tobytes(),
                   np.asarray(spec.zero_point).dtype.str)
            quantizer = ties.get(tie)
            if quantizer is None:
                quantizer = ActivationQuantizer(f"{len(ties)}", zero_point=np.asarray(spec.zero_point))
                ties[tie] = quantizer
                self.activations[quantizer.key] = quantizer
                self.parameters_[f"activation_scale_{quantizer.key}"] = torch.nn.Parameter(
                    torch.tensor(float(np.asarray(spec.scale).reshape(())), dtype=torch.float32))
            quantizer.scales += [node.inputs[1].name, pair.inputs[1].name]
            clip, (qmin, qmax) = _narrowing_clip(node, spec), (spec.qmin, spec.qmax)
            source = node.inputs[0]
            if clip is not None and clip[0] in index:
                qmin, qmax = clip[1], clip[2]
                clip_node = clip[0]
                quantizer.clips.append((clip_node.inputs[1].name, clip_node.inputs[2].name, qmin, qmax))
                source = clip_node.inputs[0]
                replacements[index[clip_node]] = None
            by_output[pair.outputs[0].name] = quantizer.key
            self.sites[node] = QuantizerSite(node, pair, quantizer.key, source, qmin, qmax)
            replacements[index[node]] = self._activation_step(self.sites[node])
            replacements[index[pair]] = None
        bias_of_output: dict[str, str] = {}
        for node in self.runtime.graph:
            if node.op_type != "DequantizeLinear" or node not in index or node.inputs[0].const is None:
                continue
            if np.asarray(node.inputs[0].const).dtype != np.int32:
                continue
            bias = self._bias(node, by_output, weight_of_output)
            if bias is not None:
                replacements[index[node]] = self._bias_step(node, bias)
                bias_of_output[bias.output] = bias.key
        replacements.update(fused_units(self, index, by_output, weight_of_output, bias_of_output))
        replacements.update(float_kernel_units(self.model, self.runtime, self.interpreter.steps, index))
        self.interpreter.replace_steps(replacements)

    def _tap_logits(self) -> None:
        """Make every graph output computed by a Softmax over its last axis (then, perhaps, only reshaped:
        canonicalization writes a Softmax over a middle axis as Flatten, Softmax, Reshape) record that
        Softmax's input, the logits, in :attr:`logits` on each forward pass, in the output's shape (when the
        last axis is the output's: a reshape that keeps it keeps every row): distillation compares
        distributions through them."""
        steps = {step.nodes[0]: step for step in self.interpreter.steps if len(step.nodes) == 1}
        for output in self.runtime.graph.outputs:
            node = output.producer()
            while node is not None and node.op_type in RESHAPES:
                node = node.inputs[0].producer()
            if node is None or node.op_type != "Softmax" or node not in steps:
                continue
            rank = node.outputs[0].shape and len(node.outputs[0].shape)
            if node.attrs.get("axis", -1 if self.runtime.opset >= 13 else 1) in (-1, (rank or 0) - 1):
                steps[node].kernel = self._recording(steps[node].kernel, output.name)

    def _recording(self, kernel, name: str):
        def run(x, **attrs):
            self.logits[name] = x if isinstance(x, torch.Tensor) else torch.from_numpy(np.asarray(x))
            return kernel(x, **attrs)

        return run

    def _pair(self, quantize: ir.Node) -> ir.Node | None:
        """The DequantizeLinear that alone reads ``quantize``'s output with the same scale and zero point."""
        output = quantize.outputs[0]
        readers = output.consumers()
        if len(readers) != 1 or output in self.runtime.graph.outputs or readers[0].op_type != "DequantizeLinear":
            return None
        dq = readers[0]
        if dq.inputs[1].const is None or len(dq.inputs) < 3 or dq.inputs[2] is None or dq.inputs[2].const is None:
            return None
        if quantize.inputs[1].const is None or len(quantize.inputs) < 3 or quantize.inputs[2] is None:
            return None
        same = (np.array_equal(dq.inputs[1].const, quantize.inputs[1].const)
                and np.array_equal(dq.inputs[2].const, quantize.inputs[2].const))
        return dq if same else None

    def _bias(self, node: ir.Node, by_output, weight_of_output) -> BiasQuantizer | None:
        output = node.outputs[0]
        layers = [n for n in output.consumers() if n.op_type in ("Conv", "Gemm") and len(n.inputs) > 2
                  and n.inputs[2] is output]
        if len(layers) != 1 or len(output.consumers()) != 1:
            return None
        x, w = layers[0].inputs[0], layers[0].inputs[1]
        if x is None or w is None or x.name not in by_output or w.name not in weight_of_output:
            return None
        key = f"{len(self.biases)}"
        integers, scale = node.inputs[0], node.inputs[1]
        self.parameters_[f"bias_{key}"] = torch.nn.Parameter(torch.from_numpy(
            (np.asarray(integers.const, np.float64) * np.asarray(scale.const, np.float64)).astype(np.float32)))
        quantizer = BiasQuantizer(key, integers.name, scale.name, output.name, by_output[x.name],
                                  weight_of_output[w.name])
        self.biases[key] = quantizer
        return quantizer

    # -- the fake-quantized steps ---------------------------------------------------------------
    def weight_scale(self, key: str) -> torch.Tensor:
        return self.parameters_[f"weight_scale_{key}"].abs().clamp_min(1e-12)

    def activation_scale(self, key: str) -> torch.Tensor:
        return self.parameters_[f"activation_scale_{key}"].abs().clamp_min(1e-12)

    def fake_weight(self, key: str) -> torch.Tensor:
        q = self.weights[key]
        weight, scale = self.parameters_[f"weight_{key}"], self.weight_scale(key)
        if q.binary:
            return binary_fake_quantize(weight, scale, axis=q.axis or 0)
        per_step = weight.numel() // max(1, scale.numel())
        factor = lsq_gradient_factor(per_step, q.qmax - int(np.asarray(q.zero_point).reshape(-1)[0]))
        return fake_quantize(weight, scale, q.zero_point.astype(np.float32), q.qmin, q.qmax, axis=q.axis,
                             block_size=q.block_size, grad_factor=factor)

    def _weight_step(self, node: ir.Node, quantizer: WeightQuantizer) -> Step:
        return Step("FakeQuantizeWeight", node.name, lambda: self.fake_weight(quantizer.key), (), node.outputs, {},
                    (node,), "kernel")

    def _activation_step(self, site: QuantizerSite) -> Step:
        return Step("FakeQuantize", site.quantize.name, lambda x: self.fake_quantize_activation(site, tensor(x)),
                    (site.source,), site.dequantize.outputs, {}, (site.quantize, site.dequantize), "kernel")

    def fake_quantize_activation(self, site: QuantizerSite, x: torch.Tensor, *, rescale: torch.Tensor | None = None,
                                 exact: torch.Tensor | None = None) -> torch.Tensor:
        """The fake quantizer at ``site`` on ``x`` (an integer layer's accumulator when ``rescale`` is given:
        :func:`~qcompiler.kernels.torch_ops.quantize.fake_quantize`), recording its integers when asked and
        tapping it where a block ends. ``exact``: the integers an onnxruntime kernel computes here, which
        replace the quantizer's forward value while its gradients stay (:mod:`.units`)."""
        zero = float(np.asarray(self.activations[site.key].zero_point).reshape(()))
        scale = self.activation_scale(site.key)
        features = x[0].numel() if x.ndim > 1 else x.numel()
        factor = lsq_gradient_factor(features, int(site.qmax - zero))

        def quantize(x):
            y = fake_quantize(x, scale, np.float32(zero), site.qmin, site.qmax, grad_factor=factor, rescale=rescale)
            return y if exact is None else straight_through(y, (exact - zero) * scale.detach())

        y = quantize(x)
        if self.record is not None:
            self.record[site.quantize.outputs[0].name] = torch.round(y.detach() / scale.detach()) + zero
        if site.source.name in self.cuts:  # the block ends here: the next one reads q without a way back
            bound = scale.detach()
            self.taps[site.source.name] = (y, (site.qmin - zero) * bound, (site.qmax - zero) * bound)
            y = quantize(x.detach())
        return y

    def bias_scale(self, key: str) -> torch.Tensor:
        """``s_x · s_w`` per output channel, in float64 as :func:`qcompiler.ir.quant.quantize_biases` computes it."""
        bias = self.biases[key]
        product = self.activation_scale(bias.activation).double() * self.weight_scale(bias.weight).double().reshape(-1)
        return product

    def bias_integers(self, key: str) -> torch.Tensor:
        """The int32 bias (as float64, with the STE): ``round(b / (s_x · s_w))``."""
        return round_ste(self.parameters_[f"bias_{key}"].double() / self.bias_scale(key))

    def fake_bias(self, key: str) -> torch.Tensor:
        """``round(b / s) · s`` for ``s = s_x · s_w``: forward, the value onnxruntime dequantizes (float32
        integers times the float32 scale); backward, the float64 product's gradient. Its two terms for ``s``
        (through the product, and through the integers by the STE) nearly cancel, so they meet at the one
        float64 ``s`` and leave it as their small difference: added up in float32 at the step sizes, their
        rounding error is as large as the difference itself."""
        scale = self.bias_scale(key)
        integers = round_ste(self.parameters_[f"bias_{key}"].double() / scale)
        return straight_through((integers * scale).float(), integers.detach().float() * scale.detach().float())

    def _bias_step(self, node: ir.Node, quantizer: BiasQuantizer) -> Step:
        return Step("FakeQuantizeBias", node.name, lambda: self.fake_bias(quantizer.key), (), node.outputs, {},
                    (node,), "kernel")

    # -- running --------------------------------------------------------------------------------
    def forward(self, feeds: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
        self.taps, self.logits = {}, {}
        outputs = {name: value if isinstance(value, torch.Tensor) else torch.as_tensor(np.asarray(value))
                   for name, value in self.interpreter.run(feeds).items()}
        self.logits = {name: z.reshape(outputs[name].shape) for name, z in self.logits.items()  # rows stay rows
                       if z.shape[-1:] == outputs[name].shape[-1:] and z.numel() == outputs[name].numel()}
        return outputs

    def recorded(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The integer activations (by QuantizeLinear output name, those of :attr:`model`: not the pairs
        :attr:`runtime` adds) of one forward pass without gradients."""
        written = {node.outputs[0].name for node in self.model.graph if node.op_type == "QuantizeLinear"}
        self.record = {}
        try:
            with torch.no_grad():
                self.forward(feeds)
            return {name: q.numpy() for name, q in self.record.items() if name in written}
        finally:
            self.record = None


def _broadcast_np(param, shape, spec) -> np.ndarray:
    return broadcast_param(np.asarray(param), tuple(shape), spec.axis, spec.block_size)


def parameter_groups(module: QuantizedModel) -> tuple[list[torch.nn.Parameter], list[torch.nn.Parameter]]:
    """(weights and biases, step sizes): the optimizer gives step sizes their own learning rate."""
    steps = [p for name, p in module.parameters_.items() if "scale" in name]
    others = [p for name, p in module.parameters_.items() if "scale" not in name]
    return others, steps


__all__ = ["ActivationQuantizer", "BiasQuantizer", "QuantizedModel", "TorchInterpreter", "WeightQuantizer",
           "parameter_groups"]
