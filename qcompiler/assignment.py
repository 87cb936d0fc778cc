"""Precision assignment: which nodes run in int8, and how each weight is quantized (the plan's start).

The rules follow what the target runs fast (``qcompiler.targets``): a quantized region must be made of
ops the runtime fuses into integer kernels, because every float op inside it costs a
dequantize/quantize round trip. Each op's role, weight input and axis, and runtime fusions are its
descriptor's (:mod:`qcompiler.ops`). So, in topological order:

* a layer (Conv, MatMul, Gemm) with a constant float weight is quantized — it is where the time
  goes and where int8 pays;
* a MatMul of two activations (attention) is quantized, both inputs per tensor;
* any other int8 op of the target (Add, Concat, pooling), and a pass-through op (Reshape, MaxPool,
  ...), is quantized only when every activation input already comes from the quantized region, so it
  extends the region and never starts a float island; a Concat's output range is the union of its
  inputs' (:attr:`qcompiler.ops.OpQuant.output_spans_inputs`), so its widest input passes unchanged;
* an absorbed activation (Relu; Clip with min <= 0 <= max) right after a quantized layer, as its only
  reader, is marked absorbed: the QuantizeLinear of its output saturates exactly as it clips, so
  ``insert-qdq`` removes it.

With ``float_linear_outputs`` the outputs of MatMul and Gemm (the layers with a float-output fusion)
stay float unless an int8 reader needs them: onnxruntime runs ``DequantizeLinear -> MatMul`` with a
float output as ``MatMulIntegerToFloat`` (and Gemm, with its int32 bias, as QGemm with a float
output), so the layer still runs in int8, but the region does not extend through the bias and
residual Adds after it; with ``region`` only for the layers in the plan's regions of that treatment
(``recognize-structure``: the transformer blocks of a model that also has convolutional parts). Not
for a MatMul read by an Add whose input is 2-D or has a fully static shape: onnxruntime 1.32 first
fuses those into a Gemm (MatMulAddFusion, reshaping static 3-D inputs), which then runs in float;
there the output stays quantized. Transformers exported with dynamic batch and sequence axes are not
affected. In transformers these carry the outlier channels of the residual
stream (Bondarenko et al. 2021, "Understanding and Overcoming the
Challenges of Efficient Transformer Quantization"), which one per-tensor 8-bit scale cannot hold:
on MiniLM-L6 quantizing them cost 0.16 of cosine similarity to FP32 (see ``benchmarks/minilm_accuracy.py``).

Weights get the target's weight scheme (symmetric, per channel, or per tensor with ``per_channel=False``;
7-bit where the target asks for reduced range). The decisions go into the model's plan
(:class:`qcompiler.ir.plan.QuantPlan`): the quantized nodes, the absorbed activations, the activations
that need a range (with the target's activation scheme) and the pass-through outputs that share their
input's spec. The ``assign-precision`` pass runs this; the sensitivity analysis runs it again with layers
excluded.
"""

from __future__ import annotations

import fnmatch

import numpy as np
from onnx import TensorProto

from .errors import UnsupportedModelError
from .ir import Model, Node, QuantSpec, Value
from .ir.external_data import release_pages
from .layers import clip_bounds
from .ops import OpQuant, lookup, weight_axis
from .targets import Target

FLOAT_TYPES = (TensorProto.FLOAT,)
"""The float type whose layers are quantized."""

OTHER_FLOAT_TYPES = (TensorProto.FLOAT16, TensorProto.BFLOAT16, TensorProto.DOUBLE)
"""Float types whose layers are not quantized (float16/bfloat16 are upcast first: ``qcompiler.upcast``)."""


def is_float_activation(value: Value | None) -> bool:
    return value is not None and value.const is None and value.dtype in FLOAT_TYPES


def _weighted_eligible(node: Node, op: OpQuant) -> bool:
    """A float activation input and a constant float32 weight of the layout ``op`` describes (or, for
    an op that takes two activations, an activation weight)."""
    x = node.inputs[0]
    w = node.inputs[op.weight_input] if len(node.inputs) > op.weight_input else None
    if not is_float_activation(x) or w is None:
        return False
    if op.two_activations and is_float_activation(w):
        return True
    if w.const is None or w.const.dtype != np.float32:
        return False
    return op.weight_fits(node, w.const)


def _clip_absorbable(node: Node) -> bool:
    """A Relu, or a Clip with constant bounds around 0: a saturating quantizer performs it."""
    bounds = clip_bounds(node)
    return bounds is not None and bounds[0] <= 0 <= bounds[1]


def weight_spec(weight: np.ndarray, axis: int | None, target: Target, reduce_range: bool | None = None) -> QuantSpec:
    """The target's min/max weight spec of a constant weight, per channel along ``axis`` (None: per tensor);
    ``reduce_range``: the reading layers' answer (:meth:`Target.reduces_weight_range`), else the target's."""
    return target.weight_scheme(per_channel=axis is not None, reduce_range=reduce_range).spec_for(weight, axis)


def _becomes_float_gemm(node: Node, op: OpQuant) -> bool:
    """A MatMul read by an Add that onnxruntime fuses into a Gemm before its QDQ fusions (see above)."""
    shape = node.inputs[0].shape
    static = shape is None or len(shape) == 2 or all(isinstance(d, int) for d in shape)
    return op.gemm_with_add and static and any(r.op_type == "Add" for r in node.outputs[0].consumers())


def excluded(node: Node, patterns: list[str]) -> bool:
    """Whether ``node`` is kept float by a pattern: its name (a shell pattern) or its op type."""
    return any(fnmatch.fnmatchcase(node.name, p) or node.op_type == p for p in patterns)


def assign(model: Model, target: Target, exclude: list[str], per_channel: bool,
           float_linear_outputs: bool = False, region: str = "") -> int:
    """Start ``model``'s plan for ``target`` (see the module docstring); returns the number of quantized nodes."""
    plan = model.plan
    plan.start(target)
    activations_scheme = target.activation_scheme
    quantized_values: set[Value] = set()  # activations that will carry a QuantSpec
    for node in model.graph:
        if node.domain not in ("", "ai.onnx") or excluded(node, exclude):
            continue
        op, facts = node.op_type, lookup(node)
        activations = [v for v in node.inputs if is_float_activation(v)]
        float_outputs = False
        if facts.role == "layer" and op in target.int8_ops and _weighted_eligible(node, facts):
            weight = node.inputs[facts.weight_input]
            if weight.const is not None:
                axis = weight_axis(node, weight.const) if per_channel else None
                weight.quant = weight_spec(weight.const, axis, target, target.reduces_weight_range(weight.consumers()))
                release_pages(weight.const)  # a model past memory: not every weight resident at once
            float_outputs = (float_linear_outputs and facts.float_output_fusion is not None
                             and (not region or plan.in_region(node, region))
                             and not _becomes_float_gemm(node, facts))
        elif op in target.absorbed_activations and _clip_absorbable(node):
            source = node.inputs[0]
            producer = source.producer() if source is not None else None
            if producer is None or not plan.is_quantized(producer) or lookup(producer).role != "layer" \
                    or len(source.uses()) != 1 or source in model.graph.outputs:
                continue
            plan.absorb(node)
            plan.drop_range(source)
            quantized_values.discard(source)
        elif op in target.int8_ops or op in target.pass_through_ops:
            if not activations or any(v not in quantized_values for v in activations):
                continue
            if op in target.pass_through_ops:
                plan.share(node.outputs[0], node.inputs[0])
            elif facts.output_spans_inputs:
                plan.span(node.outputs[0], activations)
        else:
            continue
        plan.quantize_node(node)
        for value in [] if node in plan.absorbed else activations:
            plan.needs_range(value, activations_scheme)
            quantized_values.add(value)
        for value in [] if float_outputs else node.outputs:
            if value is not None and value.dtype in FLOAT_TYPES:
                plan.needs_range(value, activations_scheme)
                quantized_values.add(value)
    return len(plan.layers)


DYNAMIC_LAYERS = ("MatMul", "Gemm")
"""The layers dynamic quantization runs in integer kernels: onnxruntime fuses dynamic matrix products into
``DynamicQuantizeMatMul`` / ``MatMulIntegerToFloat``, but has no fused dynamic convolution:
``DynamicQuantizeLinear -> ConvInteger -> Cast -> Mul`` runs slower than the float Conv (onnxruntime 1.32
on PP-OCR's direction classifier; older releases lacked the u8 x s8 ConvInteger kernel altogether)."""


def dynamic_layers(model: Model, exclude: list[str]) -> list[Node]:
    """The layers dynamic int8 quantizes: every MatMul and Gemm with a constant float32 weight (the linear
    layers, attention projections included) that ``exclude`` does not keep float.

    MatMuls of two activations (attention scores) stay float, as in onnxruntime's dynamic quantizer: their
    second input would need a run-time quantization of its own and their kernels gain little. A Conv
    layer that is not excluded is a user error: dynamic quantization has no fast convolution kernel
    (:data:`DYNAMIC_LAYERS`), so the message points to static quantization, or to ``--exclude Conv`` to
    quantize the linear layers alone.
    """
    layers, convolutions = [], []
    for node in model.graph:
        if node.domain not in ("", "ai.onnx") or excluded(node, exclude):
            continue
        facts = lookup(node)
        if facts.role != "layer" or not _weighted_eligible(node, facts):
            continue
        if node.inputs[facts.weight_input].const is None:  # a MatMul of two activations (attention scores)
            continue
        (layers if node.op_type in DYNAMIC_LAYERS else convolutions).append(node)
    if convolutions:
        kinds = sorted({n.op_type for n in convolutions})
        first = convolutions[0]
        raise UnsupportedModelError(
            f"dynamic quantization covers MatMul and Gemm layers only, and the model has {len(convolutions)} "
            f"{'/'.join(kinds)} layer(s) (first: {first.name or first.op_type!r}): onnxruntime has no fast "
            f"dynamic kernel for them (its dynamic ConvInteger runs slower than float). Use static quantization "
            f"(--pipeline int8 with --calib DATA), or keep them float and quantize the MatMul/Gemm layers alone with "
            + " ".join(f"--exclude {k}" for k in kinds))
    return layers


def dynamic_weight_spec(node: Node, target: Target, per_channel: bool) -> QuantSpec:
    """The spec of a dynamic layer's weight: the target's dynamic weight scheme, per output channel or not."""
    weight = node.inputs[lookup(node).weight_input].const
    axis = weight_axis(node, weight) if per_channel else None
    return target.dynamic_weight_scheme(per_channel=axis is not None).spec_for(weight, axis)


def assign_dynamic(model: Model, target: Target, layers: list[Node], per_channel: bool) -> int:
    """Start ``model``'s plan for dynamic quantization of ``layers`` (:func:`dynamic_layers`); returns their number.

    Each layer's weight gets the target's dynamic weight spec (``Target.dynamic_weight_scheme``), and its
    activation input the target's dynamic scheme (``DynamicQuantizeLinear``: uint8, asymmetric, per
    tensor, the range taken from the tensor on every run). Outputs stay float, so nothing needs a range
    and no calibration data is read.
    """
    plan = model.plan
    plan.start(target)
    for node in layers:
        node.inputs[lookup(node).weight_input].quant = dynamic_weight_spec(node, target, per_channel)
        plan.quantize_node(node)
        plan.needs_range(node.inputs[0], target.dynamic_activation_scheme)
    return len(plan.layers)
