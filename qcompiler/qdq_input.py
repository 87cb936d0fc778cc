"""QDQ models as input: the float model and the specs a quantized (QDQ-format) model carries.

A model quantized elsewhere (onnxruntime's ``quantize_static``, a quantization-aware training export,
an earlier ``qcompiler compile``) holds its decisions as QuantizeLinear/DequantizeLinear nodes with
constant scales and zero points. :func:`recover_float` takes them out:

* a DequantizeLinear of a constant integer tensor (a weight, an int32 bias) becomes the float constant
  it computes, under the DequantizeLinear output's name; its spec is kept (not an int32 bias's: the
  bias is requantized from the input and weight scales, as for any model);
* a QuantizeLinear -> DequantizeLinear pair with the same spec on an activation ``x`` is bypassed (its
  readers read ``x``) and ``x``'s spec is kept; a pair whose zero point is the integer minimum clamps
  at zero and at the top of its range (a ReLU or Clip absorbed into the quantization, as qcompiler and
  onnxruntime absorb them: onnxruntime drops a HardSwish's Clip(0, 6)), so a Clip to that range takes its
  place unless ``x`` is non-negative by construction;
* anything else (a DequantizeLinear of an integer input, a QuantizeLinear read by integer ops) stays and
  is counted.

The kept specs go to the plan (``QuantPlan.given``, by value name). ``compile`` then quantizes the
recovered float model as usual (placement, calibration, int32 biases, folded weights), and with
``keep_qdq_scales`` the ``keep-qdq-scales`` pass gives every value that has a given spec that spec
instead of the calibrated one (:func:`apply_given_specs`): a QAT result keeps its scales while the
placement is qcompiler's. ``analyze`` of a QDQ model analyzes the recovered float model in the
configuration the input model had.
"""

from __future__ import annotations

import numpy as np
from onnx import TensorProto

from .ir import Model, Node, QuantSpec, Value
from .ir.rewrite import insert_after_producer
from .ir.quant import dequantize, spec_of_qdq, storage_dtype

_DOMAINS = ("", "ai.onnx", "com.microsoft")


def _constant_parameters(node: Node) -> bool:
    """A Q/DQ node whose scale and zero point (when given) are constants."""
    inputs = node.inputs
    return (len(inputs) >= 2 and inputs[1] is not None and inputs[1].const is not None
            and (len(inputs) < 3 or inputs[2] is None or inputs[2].const is not None))


def recover_float(model: Model) -> dict:
    """Take the Q/DQ nodes out of ``model`` in place (module docstring); the specs go to ``model.plan.given``.

    Returns ``{"weights": n, "activations": n, "left": n}`` (constants dequantized, activation pairs
    bypassed, Q/DQ nodes left in place).
    """
    graph, given = model.graph, model.plan.given
    weights = activations = 0
    removed: list[Node] = []
    clamped: dict = {}  # activation -> the Clip output that replaces its clamping pairs (one per activation)
    returned = set(graph.outputs)
    for node in graph:
        if node.op_type != "DequantizeLinear" or node.domain not in _DOMAINS or not _constant_parameters(node):
            continue
        source, result = node.inputs[0], node.outputs[0]
        if source.const is not None:
            spec = spec_of_qdq(node)
            graph.remove(node, safe=False)
            result.const = dequantize(source.const, spec)
            result.dtype, result.shape = TensorProto.FLOAT, result.const.shape
            graph.add_initializer(result)
            if spec.dtype != TensorProto.INT32:
                given[result.name] = spec
            weights += 1
            continue
        quantizer = source.producer()
        if quantizer is None or quantizer.op_type != "QuantizeLinear" or quantizer.domain not in _DOMAINS \
                or not _constant_parameters(quantizer) or spec_of_qdq(quantizer) != spec_of_qdq(node):
            continue
        x, spec = quantizer.inputs[0], spec_of_qdq(quantizer)
        if _clamps_at_zero(spec, x):
            x = clamped[x] if x in clamped else clamped.setdefault(x, _clamp(graph, x, spec))
        if result in returned:
            if x in returned or any(v is x for v in graph.inputs) or x.const is not None:
                continue  # the output cannot take x's place: keep the pair
            graph.replace_output(result, x)
            returned = set(graph.outputs)
        result.replace_all_uses_with(x)
        given.setdefault(x.name, spec)
        removed.append(node)
        activations += 1
    graph.remove(removed)
    unread = [n for n in graph if n.op_type == "QuantizeLinear" and n.domain in _DOMAINS
              and not n.outputs[0].uses() and n.outputs[0] not in returned]
    graph.remove(unread)
    graph.remove_unused_initializers()
    left = sum(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in graph)
    return {"weights": weights, "activations": activations, "left": left}


def _clamps_at_zero(spec: QuantSpec, x) -> bool:
    """A per-tensor pair whose zero point is the integer minimum clamps at 0 (a ReLU absorbed into it), on
    a value not already made non-negative by its producer."""
    producer = x.producer()
    return (spec.axis is None and int(np.asarray(spec.zero_point)) == spec.qmin
            and (producer is None or producer.op_type not in _NON_NEGATIVE))


_NON_NEGATIVE = ("Relu", "Sigmoid", "Softmax", "Abs", "Sqrt", "Exp")


def _clamp(graph, x, spec: QuantSpec):
    """A Clip of ``x`` to the range ``spec`` represents, [0, hi], inserted right after its producer: the
    ReLU or Clip (a HardSwish's Clip(0, 6)) the quantizer absorbed into the pair."""
    lo, hi = dequantize(np.array([spec.qmin, spec.qmax], storage_dtype(spec.dtype)), spec)
    bounds = [Value(graph.unique_name(x.name + suffix), const=np.array(v, np.float32)) for suffix, v in
              (("_min", lo), ("_max", hi))]
    for bound in bounds:
        graph.add_initializer(bound)
    out = Value(graph.unique_name(x.name + "_clamped"), x.dtype, x.shape)
    insert_after_producer(graph, x, Node("Clip", [x, *bounds], [out], name=graph.unique_name(x.name + "_clamp")))
    return out


def apply_given_specs(model: Model) -> dict:
    """Give every value the plan quantizes that has a given spec that spec (weights only where the
    layout fits: same axis and channel count), then every sharing value its source's spec again.

    Returns ``{"kept": n, "calibrated": [names], "given_unused": n, "refused": [names]}``: specs kept,
    values quantized here with no given spec (calibrated as usual), given specs of values left float
    here, given weight specs whose layout does not fit the weight as it is now.
    """
    plan, given = model.plan, model.plan.given
    kept, calibrated, refused, used = 0, [], [], set()
    for value in model.graph.values():
        if value.quant is None or value in plan.shares:
            continue
        spec = given.get(value.name)
        if spec is None:
            calibrated.append(value.name)
            continue
        used.add(value.name)
        if value.const is not None and not _fits(spec, value.const):
            refused.append(value.name)
            continue
        value.quant = spec
        kept += 1
    for value, source in plan.shares.items():
        value.quant = source.quant
    return {"kept": kept, "calibrated": calibrated, "given_unused": len(set(given) - used), "refused": refused}


def _fits(spec: QuantSpec, weight: np.ndarray) -> bool:
    if spec.block_size:
        return False
    if spec.axis is None:
        return spec.scale.size == 1
    axis = spec.axis % weight.ndim if weight.ndim else 0
    return weight.ndim > 0 and spec.scale.size == weight.shape[axis]
