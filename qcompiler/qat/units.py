"""onnxruntime's fused Q/DQ node units in the fake-quantized torch model.

onnxruntime runs a ``DequantizeLinear -> op -> QuantizeLinear`` unit as one integer kernel where its selection
rules allow (:func:`qcompiler.executor.fusion.find_fusions` applies them), and that kernel does not compute
what the float op followed by the fake quantizer computes. A value near a rounding boundary then lands one
step apart, and later layers carry the difference on. So that what is trained is what is deployed, each
such unit becomes one step of :class:`~.graph.QuantizedModel` that computes the kernel's integers:

* **Integer layers** (Conv, Gemm, MatMul, an attention MatMul of two activations included; onnxruntime's
  QLinearConv, QGemm, QLinearMatMul, MatMulIntegerToFloat): run in torch as the kernel runs them, the layer of
  the integers ``x / s_x`` and ``w / s_w`` plus the int32 bias, then one rescale: by ``s_x · s_w``, or into
  the output quantizer by the float32 multiplier ``s_x · s_w / s_y``. In float32 the integer sums are exact
  while they stay under 2^24, as onnxruntime's int32 accumulation is. Gradients are the float layer's: the
  integers round with the STE, and the scales that divide and rescale are constants here (their gradients
  reach them through the fake quantizers of ``x`` and ``w``, as in the float layer; differentiating both the
  division and the rescale would leave two large terms that cancel up to rounding). The bias adds
  ``fake_bias - fake_bias.detach()`` (zero) divided by ``s_x · s_w`` to the integers, which gives it, and the scales
  through it, the float layer's gradients.
* **Other units** (QLinearAdd, QLinearSoftmax, QLinearGlobalAveragePool): the op runs in float and its
  output quantizer learns from that as before; the forward value is then replaced
  (:func:`~qcompiler.kernels.torch_ops.quantize.straight_through`) by the integers the executor's kernel for
  the fused op computes from the unit's input integers and the current learned scales (MLAS's float
  formula on raw integers for QLinearAdd; the exponential table and truncated output scale for
  QLinearSoftmax; an int32 sum for QLinearGlobalAveragePool). Those kernels run in numpy, outside autograd.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
import torch

from .. import ir
from ..executor.fusion import Fusion, find_fusions
from ..executor.interpreter import Step
from ..kernels import DEFAULT_BACKENDS, default_registry
from ..kernels.torch_ops._common import tensor
from ..kernels.torch_ops.quantize import broadcast, round_ste

if TYPE_CHECKING:
    from .graph import QuantizedModel, QuantizerSite, WeightQuantizer

INTEGER_LAYERS = frozenset({"Conv", "Gemm", "MatMul"})


def fused_units(module: QuantizedModel, index: dict[ir.Node, int], by_output: dict[str, str],
                weight_of_output: dict[str, str], bias_of_output: dict[str, str]) -> dict[int, Step | None]:
    """Step replacements (by index into ``module.interpreter.steps``; None drops a step) that make every unit
    onnxruntime fuses, among those whose quantizers ``module`` trains, one step computing the fused kernel.
    ``by_output``: activation key by DequantizeLinear output name; ``weight_of_output`` / ``bias_of_output``:
    weight and bias quantizer keys by the output of their DequantizeLinear."""
    sites = {site.dequantize.outputs[0].name: site for site in module.sites.values()}
    replacements: dict[int, Step | None] = {}
    for fusion in find_fusions(module.runtime):
        target = fusion.target
        quantize = next((n for n in fusion.tail if n.op_type == "QuantizeLinear"), None)
        site = module.sites.get(quantize)
        if target not in index or (quantize is not None and site is None):
            continue
        step = module.interpreter.steps[index[target]]
        if target.op_type in INTEGER_LAYERS:
            activation = by_output.get(target.inputs[0].name)
            weight = weight_of_output.get(target.inputs[1].name)
            other = by_output.get(target.inputs[1].name) if target.op_type == "MatMul" else None  # attention
            given = target.inputs[2] if len(target.inputs) > 2 else None
            bias = bias_of_output.get(given.name) if given is not None else None
            if (activation is None or (weight is None and other is None) or (given is not None and bias is None)
                    or (weight is not None and not _per_output_channel(target, module.weights[weight], module))):
                continue
            if weight is not None:
                second = (lambda weight=weight: module.weight_scale(weight)), module.weights[weight].axis
            else:
                second = (lambda other=other: module.activation_scale(other)), None
            unit = _integer_layer(module, step, fusion.tail, activation, second, bias, site)
            dropped = fusion.tail + ((given.producer(),) if given is not None else ())
        else:
            inputs = [sites.get(v.name) for v in target.inputs if v is not None]
            if site is None or any(s is None for s in inputs):
                continue
            unit, dropped = _exact_unit(module, step, fusion, inputs, site), fusion.tail
        for node in dropped:
            replacements[index[node]] = None
        replacements[index[target]] = unit
    return replacements


def _per_output_channel(layer: ir.Node, weight: WeightQuantizer, module: QuantizedModel) -> bool:
    """Whether the weight's scale is per tensor or per output channel of ``layer``: it then factors out of
    the integer sum."""
    if weight.block_size:
        return False
    if module.parameters_[f"weight_scale_{weight.key}"].numel() == 1:
        return True
    rank = module.parameters_[f"weight_{weight.key}"].ndim
    expected = {"Conv": 0, "MatMul": rank - 1, "Gemm": 0 if layer.attrs.get("transB", 0) else 1}[layer.op_type]
    return weight.axis is not None and weight.axis % rank == expected


def _integer_layer(module: QuantizedModel, step: Step, tail: tuple[ir.Node, ...], activation: str,
                   second: tuple[Callable[[], torch.Tensor], int | None], bias: str | None,
                   site: QuantizerSite | None) -> Step:
    """``step``'s layer with the ``tail`` onnxruntime absorbs (a redundant Relu / Clip and the output
    QuantizeLinear at ``site``, if any) as one integer layer (module docstring). ``activation``: the key of the
    first input's quantizer; ``second``: the second input's step (a weight's, per output channel, or for an
    attention MatMul another activation's) and its axis."""
    kernel, layer = step.kernel, step.nodes[0]
    (second_scale, axis), channel = second, 1 if layer.op_type == "Conv" else -1

    def run(x, w, **attrs):
        x, w = tensor(x), tensor(w)
        s_x, s_w = module.activation_scale(activation).detach(), second_scale().detach()
        integers = round_ste(x / s_x), round_ste(w / broadcast(s_w, tuple(w.shape), axis, None))
        rescale = s_x * s_w
        if layer.op_type == "MatMul":
            acc = kernel(*integers, **attrs)
        else:
            acc = kernel(*integers, None if bias is None else _integer_bias(module, bias, rescale), **attrs)
        rescale = broadcast(rescale, tuple(acc.shape), channel % acc.ndim, None)
        return acc * rescale if site is None else module.fake_quantize_activation(site, acc, rescale=rescale)

    outputs, nodes = step.outputs, (layer,) + tail
    if site is not None:
        outputs, nodes = site.dequantize.outputs, nodes + (site.dequantize,)
    return Step("IntegerLayer", layer.name, run, step.inputs[:2], outputs, step.attrs, nodes, "kernel")


def _integer_bias(module: QuantizedModel, key: str, rescale: torch.Tensor) -> torch.Tensor:
    """The int32 bias in the integer layer's units, with the float layer's gradients (module docstring)."""
    fake = module.fake_bias(key)
    return module.bias_integers(key).detach().float() + (fake - fake.detach()) / rescale


def _exact_unit(module: QuantizedModel, step: Step, fusion: Fusion, inputs: list[QuantizerSite],
                site: QuantizerSite) -> Step:
    """``step``'s float op, its output quantizer at ``site`` taking its forward value from the fused kernel
    run on the integers of the quantizers at ``inputs`` (module docstring)."""
    domain, op_type = fusion.kernel
    kernel = default_registry.lookup(domain, op_type, module.runtime.opset_imports.get(domain, 1), DEFAULT_BACKENDS)
    readers = {}  # fusion input -> how to obtain it from the unit's float inputs
    for i, source in enumerate(inputs):
        readers[source.dequantize.inputs[0]] = lambda xs, i=i, source=source: _integers(module, source, xs[i])
        readers[source.dequantize.inputs[1]] = lambda xs, key=source.key: _scale(module, key)
    readers[site.quantize.inputs[1]] = lambda xs: _scale(module, site.key)
    arguments = [readers.get(v, lambda xs, v=v: None if v is None else v.const) for v in fusion.inputs]

    def run(*xs, **attrs):
        xs = [tensor(x) for x in xs]
        integers = kernel(*(read(xs) for read in arguments), **fusion.attrs)
        exact = torch.from_numpy(np.asarray(integers, np.float32))
        return module.fake_quantize_activation(site, step.kernel(*xs, **attrs), exact=exact)

    return Step("ExactUnit", step.name, run, step.inputs, site.dequantize.outputs, step.attrs,
                fusion.nodes + (site.dequantize,), "kernel")


def _integers(module: QuantizedModel, site: QuantizerSite, x: torch.Tensor) -> np.ndarray:
    """The stored integers of the quantizer at ``site`` behind its fake-quantized output ``x``."""
    zero = module.activations[site.key].zero_point
    levels = torch.round(x.detach() / module.activation_scale(site.key).detach()).numpy()
    return (levels + zero.astype(np.float32)).astype(zero.dtype)


def _scale(module: QuantizedModel, key: str) -> np.ndarray:
    return module.activation_scale(key).detach().numpy().astype(np.float32)


__all__ = ["INTEGER_LAYERS", "fused_units"]
