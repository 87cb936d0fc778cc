"""Lowering a quantization plan to a QDQ graph: Q/DQ insertion, int32 biases, integer weights.

* An activation ``v`` with a spec gets ``q = QuantizeLinear(v, s, zp)``, ``v' = DequantizeLinear(q, s,
  zp)`` right after its producer, and every reader of ``v`` reads ``v'`` (subgraphs that capture ``v``
  too) — one quantizer per tensor, so all readers share one scale, as onnxruntime's fused kernels
  require. When ``v`` is a graph output, ``v'`` takes its name, so the model's interface is unchanged (a graph
  input returned as an output is returned as it is).
* An activation the plan quantizes at run time (a dynamic scheme) gets ``q, s, zp =
  DynamicQuantizeLinear(v)`` and ``v' = DequantizeLinear(q, s, zp)``: uint8, per tensor, the scale
  computed from the tensor itself on every run. Only the quantized layers that read ``v`` read ``v'``;
  other readers (a residual Add, a Shape) keep the float ``v``, as in onnxruntime's dynamic quantizer:
  nothing but the layer's integer kernel gains from the rounding.
* A value a subgraph captures (an implicit input of If/Loop/Scan) that onnxruntime's QDQ propagation
  would reach (``DQ -> Slice/Reshape/Transpose/... -> captured``) gets the pair propagation would have
  inserted, with the DequantizeLinear's scale and zero point, and the subgraph reads its DQ output
  (:func:`guard_captures`): onnxruntime 1.32 aborts the process when it rewires such a capture itself.
* A 16-bit activation spec (int16/uint16) in a model below opset 21 gets ``com.microsoft``'s
  QuantizeLinear/DequantizeLinear, which onnxruntime runs at any opset (ONNX's take 16 bits from 21).
* A weight gets ``DequantizeLinear(QuantizeLinear(W))`` with its axis and block size (the simulation
  form); :func:`fold_quantized_weights` then stores the integers.
* The bias of a quantized Conv or Gemm whose weight is quantized per tensor or per channel becomes
  int32 with ``scale = s_input · s_weight`` (per output channel) and zero point 0, read through a
  DequantizeLinear: the form onnxruntime fuses into QLinearConv / QGemm (Jacob et al. 2018, eq. 7-9).
  The float bias is dropped when nothing else reads it.
* An absorbed activation (Relu, Clip; see ``qcompiler.assignment``) is removed: its input is quantized
  with its output's spec, whose saturation performs the clipping.

The math (specs, integers, bias scales, Q/DQ attributes, the opset each form needs) is
``qcompiler.ir.quant``'s; this module only edits the graph. :func:`lower` runs both steps and verifies
the result, for callers that build trial models outside a pipeline (sensitivity, range search, bias
correction, AdaRound).
"""

from __future__ import annotations

import contextlib
import gc
import threading
from collections.abc import Collection, Iterable, Mapping

import numpy as np
from onnx import TensorProto

from .errors import UnsupportedModelError
from .ir import Graph, Model, Node, QuantSpec, Value, quantize, verify
from .ir.quant import SIXTEEN_BIT, min_opset, qdq_attributes, quantize_biases, spec_of_qdq
from .ir.external_data import release_pages
from .ir.rewrite import bypass_all, insert_after_producer
from .ops import lookup


_PAIR_NAMES = ("_scale", "_zero_point", "_quantized", "_dequantized", "_QuantizeLinear", "_DequantizeLinear")
"""The suffixes of the names a Q/DQ pair takes from its value's name, in the order it takes them."""


def insert_pairs(graph: Graph, domains: Mapping[Value, str]) -> dict[Value, Value]:
    """Insert QuantizeLinear/DequantizeLinear for each value of ``domains`` with its spec (``value.quant``), of
    the domain given (ONNX's or ``com.microsoft``'s, see :func:`qdq_domain`), right after the value's
    producer, and route every reader of the value through the DQ output; returns ``{value: DQ output}``.

    A graph output stays ``value``: the caller hands it to the DQ output (:meth:`Graph.replace_outputs`).
    The names of every pair are taken in one go (:meth:`Graph.unique_names`), in the order in which one
    pair after another would take them, so they are the same.
    """
    names = iter(graph.unique_names([name + suffix for name in [value.name for value in domains]
                                     for suffix in _PAIR_NAMES]))
    restored: dict[Value, Value] = {}
    constants: list[Value] = []
    placements: list[tuple[Node | None, tuple[Node, Node]]] = []
    for value, domain in domains.items():
        spec, readers = value.quant, value.uses()
        scale = Value(next(names), const=np.asarray(spec.scale))
        zero_point = Value(next(names), const=np.asarray(spec.zero_point))
        quantized = Value(next(names), spec.dtype, value.shape)
        output = Value(next(names), value.dtype, value.shape)
        attrs = qdq_attributes(spec)  # each node copies it
        q = Node("QuantizeLinear", (value, scale, zero_point), (quantized,), attrs=attrs, domain=domain,
                 name=next(names))
        dq = Node("DequantizeLinear", (quantized, scale, zero_point), (output,), attrs=attrs, domain=domain,
                  name=next(names))
        output.quant, value.quant = spec, None
        constants += (scale, zero_point)
        placements.append((value.producer(), (q, dq)))  # right after the producer (first for an input)
        value.redirect(readers, output)
        restored[value] = output
    graph.add_initializers(constants)
    graph.insert_after_each(placements)
    return restored


def insert_dynamic(graph: Graph, value: Value, layers: Collection[Node]) -> Value:
    """Insert ``DynamicQuantizeLinear -> DequantizeLinear`` for ``value`` and route its readers among
    ``layers`` (the quantized nodes) through it."""
    readers = [use for use in value.uses() if use.node in layers]
    quantized = Value(graph.unique_name(f"{value.name}_quantized"), TensorProto.UINT8, value.shape)
    scale = Value(graph.unique_name(f"{value.name}_scale"), TensorProto.FLOAT, ())
    zero_point = Value(graph.unique_name(f"{value.name}_zero_point"), TensorProto.UINT8, ())
    restored = Value(graph.unique_name(f"{value.name}_dequantized"), value.dtype, value.shape)
    q = Node("DynamicQuantizeLinear", [value], [quantized, scale, zero_point],
             name=graph.unique_name(f"{value.name}_DynamicQuantizeLinear"))
    dq = Node("DequantizeLinear", [quantized, scale, zero_point], [restored],
              name=graph.unique_name(f"{value.name}_DequantizeLinear"))
    insert_after_producer(graph, value, q, dq)
    value.redirect(readers, restored)
    return restored


def _int32_bias(node: Node) -> tuple[int, QuantSpec, QuantSpec] | None:
    """(bias input index, input spec, weight spec) when ``node``'s bias can become int32: an op with a bias
    input (Conv, Gemm), a constant bias of rank 1 or less, a per-tensor 8-bit input spec and a per-tensor or
    per-channel weight spec. A 16-bit input keeps its float bias: no fused integer kernel reads it, and
    ``s_input · s_weight`` is then so small that a bias of a few units overflows int32."""
    op = lookup(node)
    if op.bias_input is None or len(node.inputs) <= op.bias_input or node.inputs[op.bias_input] is None:
        return None
    x, w, b = node.inputs[0], node.inputs[op.weight_input], node.inputs[op.bias_input]
    x_spec, w_spec = x.quant, w.quant
    if b.const is None or x_spec is None or w_spec is None or b.const.ndim > 1:
        return None
    if x_spec.granularity != "tensor" or w_spec.granularity == "block" or x_spec.dtype in SIXTEEN_BIT:
        return None
    return op.bias_input, x_spec, w_spec


_BIAS_NAMES = ("_quantized", "_scale", "_zero_point", "_dequantized", "_DequantizeLinear")
"""The suffixes of the names an int32 bias takes from the float bias's name, in the order it takes them."""


def add_int32_biases(graph: Graph, nodes: Iterable[Node]) -> int:
    """Replace the float bias of each quantized op of ``nodes`` that has a bias input (Conv, Gemm) by int32 +
    DequantizeLinear (per-tensor or per-channel weights and a per-tensor input spec); a float bias
    initializer goes when nothing else reads it. Returns how many biases were replaced.

    The integers of every bias come from one :func:`quantize_biases` call and the names are taken in one go
    (:meth:`Graph.unique_names`), in the order in which one bias after another would take them.
    """
    layers = [(node, found) for node in nodes if (found := _int32_bias(node)) is not None]
    biases = [node.inputs[index] for node, (index, _, _) in layers]
    numbers = quantize_biases([(b.const, x_spec, w_spec) for b, (_, (_, x_spec, w_spec)) in zip(biases, layers)])
    names = iter(graph.unique_names([name + suffix for name in [b.name for b in biases] for suffix in _BIAS_NAMES]))
    for (node, (index, _, _)), bias, (integers, scale) in zip(layers, biases, numbers):
        int_bias = Value(next(names), const=integers)
        scale_value = Value(next(names), const=scale)
        zero = Value(next(names), const=np.zeros(scale.shape, np.int32))
        graph.add_initializers((int_bias, scale_value, zero))
        restored = Value(next(names), TensorProto.FLOAT, bias.const.shape)
        dq = Node("DequantizeLinear", (int_bias, scale_value, zero), (restored,), attrs={"axis": 0}, name=next(names))
        graph.insert_before(node, dq)
        node.set_input(index, restored)
        graph.drop_initializer(bias)
    return len(layers)


MS = "com.microsoft"


def qdq_domain(model: Model, spec: QuantSpec) -> str:
    """The domain of ``spec``'s Q/DQ in ``model``: the ONNX one where the model's opset expresses it, else
    ``com.microsoft`` for 16-bit specs per tensor or per axis (onnxruntime's contrib QuantizeLinear /
    DequantizeLinear take int16/uint16 at any opset; ONNX's only from opset 21)."""
    if min_opset(spec) <= model.opset or spec.dtype not in SIXTEEN_BIT or spec.block_size is not None:
        return ""
    return MS


def _check_opset(model: Model, values: list[Value]) -> None:
    """Refuse a spec no ONNX Q/DQ of ``model`` expresses: a float zero point at all, another at a lower opset."""
    for value in values:
        if value.quant.float_zero_point:
            raise UnsupportedModelError(
                f"insert-qdq: {value.name!r} has a float zero point, which only onnxruntime's MatMulNBits "
                "takes (DequantizeLinear's is an integer); run lower-matmulnbits before insert-qdq, or quantize "
                "it with integer zero points")
        needed = min_opset(value.quant)
        if needed > model.opset:
            raise UnsupportedModelError(
                f"insert-qdq: {value.name!r} is quantized as {value.quant.granularity} "
                f"{TensorProto.DataType.Name(value.quant.dtype)}, which needs opset {needed} (the model has "
                f"{model.opset}); run upgrade-opset with target = {needed} before insert-qdq")


@contextlib.contextmanager
def _collector_paused():
    """Run a rewrite that creates many small, long-lived IR objects (a Q/DQ pair is two nodes, four values
    and their tuples and use dicts) with the cyclic garbage collector paused, and put what it made straight
    into the collector's oldest generation.

    CPython's collector is generational: new objects are traversed by a collection of the youngest
    generation, their survivors again by one of the middle generation, and only then do they join the
    oldest, which full collections traverse (scheduled by counts: a full collection waits for ten of the
    middle one and for a quarter of the oldest generation's size in newly promoted objects). Left running,
    the collector's full collections during the rewrite each traversed the whole model again, so the cost
    per node grew with the graph's size; paused, the two young collections afterwards still traversed
    every new object, twice. Instead, the young objects made before the rewrite are collected first (the
    usual promotion, counted towards the next full collection), and afterwards ``gc.freeze()`` then
    ``gc.unfreeze()`` move the rewrite's objects into the oldest generation untraversed. ``gc.freeze()``
    zeroes the counts that schedule collections; with them zeroed after every rewrite no full collection
    came and discarded trial models piled up, so the counts are restored (a collection of the empty young
    generations adds one to the count of the next older one).

    Only in the main thread: the switch is global, and the sensitivity analysis lowers its trial models on
    worker threads, whose rewrites overlap (with each pausing and resuming it, the collector was off most
    of the time). A collector someone else paused, or objects someone else froze, are left alone.
    """
    if not gc.isenabled() or gc.get_freeze_count() or threading.current_thread() is not threading.main_thread():
        yield
        return
    gc.collect(1)
    gc.disable()
    try:
        yield
    finally:
        _, young_collections, middle_collections = gc.get_count()
        gc.freeze()
        gc.unfreeze()
        for _ in range(middle_collections):
            gc.collect(1)
        for _ in range(young_collections):
            gc.collect(0)
        gc.enable()


def insert_qdq(model: Model) -> bool:
    """Materialize the plan's specs as Q/DQ nodes (see the module docstring); True when the graph changed."""
    with _collector_paused():
        return _insert_qdq(model)


def _insert_qdq(model: Model) -> bool:
    graph, plan = model.graph, model.plan
    absorbed = [node for node in graph if node in plan.absorbed]
    for node in absorbed:
        node.inputs[0].quant = node.outputs[0].quant
    changed = bool(bypass_all(graph, absorbed))
    pending = [v for v in graph.values() if v.quant is not None and not _is_restored(v)]
    domains = {value: qdq_domain(model, value.quant) for value in pending}
    _check_opset(model, [value for value in pending if not domains[value]])
    if MS in domains.values():
        model.opset_imports.setdefault(MS, 1)
    restored = insert_pairs(graph, domains)
    inputs = set(graph.inputs)  # an input returned as an output stays the input (its name is the interface)
    graph.replace_outputs({v: restored[v] for v in graph.outputs if v in restored and v not in inputs})
    changed |= bool(guard_captures(graph))
    dynamic = {value: insert_dynamic(graph, value, plan.layers) for value in plan.dynamic}
    changed |= add_int32_biases(graph, [node for node in graph if node in plan.layers]) > 0
    plan.absorbed.clear()
    plan.dynamic.clear()
    plan.lowered = True
    return changed or bool(restored) or bool(dynamic)


def _propagated_from(value: Value) -> Node | None:
    """The DequantizeLinear (scalar constant scale and zero point) whose output reaches ``value`` through
    ops onnxruntime's QDQ propagation crosses (``OpQuant.ort_propagates``, first input), if any."""
    node = value.producer()
    if node is None or not lookup(node).ort_propagates:
        return None
    while node is not None and lookup(node).ort_propagates:
        node = node.inputs[0].producer()
    if node is None or node.op_type != "DequantizeLinear" or node.domain not in ("", "ai.onnx"):
        return None
    params = [v for v in node.inputs[1:3] if v is not None]
    return node if all(v.const is not None and v.const.size == 1 for v in params) else None


def guard_captures(graph: Graph) -> int:
    """Quantize every captured value onnxruntime's QDQ propagation would reach; the number of pairs added.

    onnxruntime's ``QDQPropagationTransformer`` (1.32, every optimization level from basic) copies a
    DequantizeLinear forward across MaxPool/Reshape/Transpose/Squeeze/Unsqueeze/Slice onto every edge
    leaving the op, and rewires each reader by its input index; a subgraph's capture is an implicit input
    whose index lies past the node's explicit inputs, so the session aborts (``std::vector`` index
    assertion) on a valid graph as small as ``Q -> DQ -> Slice -> If`` whose branch reads the Slice's
    output (``tests/robustness/test_regressions.py``). Here the captured value gets that pair (same scale
    and zero point: it changes no value, ``q(dq(x)) == x``) and every reader, the capture included, reads
    its DequantizeLinear; propagation skips an edge that ends in a QuantizeLinear, so it has nothing left
    to rewire. Graph outputs are left alone (propagation stops at them).
    """
    nodes = graph.nodes
    captured = {value for node in nodes for value in node.captures}
    if not captured:
        return 0
    outputs = set(graph.outputs)
    guarded: dict[Value, str] = {}
    for node in nodes:
        for value in node.outputs:
            if value not in captured or value in outputs:
                continue
            source = _propagated_from(value)
            if source is not None:
                value.quant = spec_of_qdq(source)
                guarded[value] = source.domain
    insert_pairs(graph, guarded)
    return len(guarded)


def _is_restored(value: Value) -> bool:
    """A DequantizeLinear output: it already is the quantized form of a value."""
    producer = value.producer()
    return producer is not None and producer.op_type == "DequantizeLinear"


def _foldable(node: Node) -> bool:
    return (node.op_type == "QuantizeLinear" and node.domain in ("", "ai.onnx")
            and all(v is None or v.const is not None for v in node.inputs)
            and len(node.inputs) >= 3 and node.inputs[2] is not None)


def fold_quantized_weights(model: Model) -> bool:
    """Evaluate every QuantizeLinear of constants into an integer initializer; True when any was folded."""
    graph = model.graph
    folded = [node for node in graph if _foldable(node)]
    for node in folded:
        out = node.outputs[0]
        integers = quantize(node.inputs[0].const, spec_of_qdq(node))
        release_pages(node.inputs[0].const)  # a model past memory: the float weights are not all kept resident
        graph.remove(node, safe=False)
        out.const = integers
        out.shape = integers.shape
        graph.add_initializer(out)
        for value in node.inputs:
            if value is not None:
                graph.drop_initializer(value)
    return bool(folded)


def _dynamic_matmul_unit(node: Node) -> tuple[Node, Node, Node] | None:
    """``(activation DQ, DynamicQuantizeLinear, weight DQ)`` when ``node`` is a MatMul reading a dynamic
    activation and a constant integer weight quantized per tensor or per column."""
    if node.op_type != "MatMul" or node.domain not in ("", "ai.onnx"):
        return None
    dq_x, dq_w = (v.producer() for v in node.inputs[:2])
    if dq_x is None or dq_w is None or dq_x.op_type != "DequantizeLinear" or dq_w.op_type != "DequantizeLinear":
        return None
    dql = dq_x.inputs[0].producer()
    if dql is None or dql.op_type != "DynamicQuantizeLinear" or len(dq_x.inputs) < 3 or len(dq_w.inputs) < 3:
        return None
    weight, scale, zero_point = dq_w.inputs[:3]
    if any(v is None or v.const is None for v in (weight, scale, zero_point)) or weight.const.ndim != 2:
        return None
    if scale.const.size > 1 and dq_w.attrs.get("axis", 1) % 2 != 1:
        return None
    return dq_x, dql, dq_w


def lower_dynamic_matmuls(model: Model) -> int:
    """Write each dynamic MatMul unit ``DynamicQuantizeLinear -> DequantizeLinear -> MatMul <-
    DequantizeLinear(W)`` in integer operators: ``Y = Cast(MatMulInteger(q_x, W_q, zp_x, zp_w)) · (s_x ·
    s_w)``, the form onnxruntime's dynamic quantizer writes and fuses (with a following bias Add) into
    ``DynamicQuantizeMatMul`` / ``MatMulIntegerToFloat``. In the QDQ form onnxruntime first fuses a 2-D
    ``MatMul + Add`` into a float Gemm, which then dequantizes its weight on every run. Returns the number
    of units rewritten; the activation DQs nothing else reads are removed."""
    graph = model.graph
    units = [(node, unit) for node in graph if (unit := _dynamic_matmul_unit(node)) is not None]
    for matmul, (dq_x, dql, dq_w) in units:
        q, s, zp = dql.outputs
        name = matmul.name or graph.unique_name("matmul")
        output = matmul.outputs[0]
        integer = Node("MatMulInteger", [q, dq_w.inputs[0], zp, dq_w.inputs[2]], 1,
                       name=graph.unique_name(f"{name}_MatMulInteger"))
        cast = Node("Cast", [integer.outputs[0]], 1, attrs={"to": TensorProto.FLOAT},
                    name=graph.unique_name(f"{name}_Cast"))
        scales = Node("Mul", [s, dq_w.inputs[1]], 1, name=graph.unique_name(f"{name}_scales"))
        scaled = Node("Mul", [cast.outputs[0], scales.outputs[0]], 1, name=graph.unique_name(f"{name}_scaled"))
        for node, suffix, dtype in ((integer, "int32", TensorProto.INT32), (cast, "float", TensorProto.FLOAT),
                                    (scales, "scales", TensorProto.FLOAT)):
            node.outputs[0].name = graph.unique_name(f"{output.name}_{suffix}")
            node.outputs[0].dtype = dtype
        integer.outputs[0].shape = cast.outputs[0].shape = output.shape
        graph.insert_before(matmul, integer, cast, scales, scaled)
        graph.substitute(output, scaled.outputs[0])
        graph.remove(matmul)
        integer.name = matmul.name or integer.name  # the layer keeps its name (summaries, --exclude)
        for dq in (dq_x, dq_w):
            if not dq.outputs[0].uses() and dq.outputs[0] not in graph.outputs:
                graph.remove(dq)
    graph.remove_unused_initializers()
    return len(units)


def lower(model: Model, *, fold: bool = True) -> Model:
    """``model`` (plan and specs, no Q/DQ yet) as the compiler writes it: Q/DQ inserted, weights stored as
    integers (unless ``fold`` is False: then ``DequantizeLinear(QuantizeLinear(W))``), the IR verified."""
    insert_qdq(model)
    if fold:
        fold_quantized_weights(model)
    verify(model)
    return model
