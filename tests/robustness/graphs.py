"""Random valid ONNX graphs (a hypothesis strategy) and the checks every pipeline must pass on them.

:func:`graphs` draws a model and its calibration feeds. It starts from one of four interfaces (an
image ``[N, C, H, W]``, a sequence ``[N, T, D]``, a vector ``[N, D]``, or int64 token ids looked up in
an embedding table) and appends 1 to ``max_ops`` operators, each on tensors drawn from those built so
far, from the set the compiler quantizes and passes through: Conv (1d and 2d, grouped, depthwise,
strided, dilated), MatMul (constant weight on either side, or activation x activation as in
attention), Gemm (transA/transB, alpha/beta), Add/Mul (same shape or
broadcast constant), Concat, Reshape, Flatten, Transpose, MaxPool/AveragePool/GlobalAveragePool,
Relu/Sigmoid/Tanh/LeakyRelu/Clip/HardSigmoid/HardSwish, LayerNormalization, Softmax, Gather, Slice,
If whose branches read captured outer values, and what canonicalize rewrites (BatchNormalization,
Identity, Dropout, Sum, Constant, the HardSwish pattern). Shapes are tracked statically (batch 2), weights
come from a drawn seed, and the graph returns its last tensor and up to two others.

:func:`check_graph` compiles one graph with ``canonicalize`` and every quantizing pipeline of
:data:`PIPELINES` (int8, int8 with a sensitivity threshold, int8-transformer, auto, int8-dfq, w4a8,
weight-only RTN and GPTQ, dynamic with Conv kept float) and returns what went wrong (empty when nothing did):

* ``canonicalize`` keeps every output within ``1e-4`` of the input model's (relative to the output's
  largest magnitude, onnxruntime without optimizations on both);
* a pipeline ends without an exception other than a one-line :class:`~qcompiler.errors.UserError`
  (refusals are returned as ``refusals`` for the caller to judge);
* onnxruntime loads the compiled model (all graph optimizations) and runs it;
* the integer executor under this CPU's profile (:func:`qcompiler.targets.detect_target`) equals
  onnxruntime bit for bit on every quantized activation (the output of every QuantizeLinear and
  DynamicQuantizeLinear, exposed as a graph output) on two feeds, as
  ``tests/executor/test_vs_onnxruntime.py`` compares whole models.

With a ``runner`` (:class:`~.isolated.IsolatedRunner`) each check runs in a worker process, so a hard
crash of onnxruntime (an abort no ``except`` catches) is a ``crash`` problem of that pipeline.

Used by ``tests/robustness/test_generated_graphs.py`` (a seeded subset) and
``benchmarks/graph_campaign.py`` (the long campaign).
"""

from __future__ import annotations

import copy
import time
import traceback
from dataclasses import dataclass, field

import numpy as np
import onnx
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from .isolated import Crashed
from .variants import PIPELINES as VARIANT_PIPELINES
from .variants import resolve_pipeline

PIPELINES: dict[str, dict] = {
    **{name: options for name, options in VARIANT_PIPELINES.items() if name != "dynamic"},
    "dynamic-exclude-conv": {"pipeline": "dynamic", "exclude": ("Conv",)},
}
"""The interface variants' pipelines, with ``dynamic`` told to keep Conv float (``--exclude Conv``): it
refuses a model with a Conv otherwise (a user error the variants list), and most generated graphs have one."""

OPSET = 17
BATCH = 2
FEEDS = 4  # calibrate-search holds out every 4th feed

@dataclass
class Builder:
    """The graph under construction: nodes, initializers, and the float tensors with their shapes."""

    rng: np.random.Generator
    nodes: list = field(default_factory=list)
    initializers: list = field(default_factory=list)
    tensors: dict[str, tuple[int, ...]] = field(default_factory=dict)
    count: int = 0

    def name(self, stem: str) -> str:
        self.count += 1
        return f"{stem}{self.count}"

    def const(self, array: np.ndarray, stem: str = "c") -> str:
        name = self.name(stem)
        self.initializers.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def weight(self, shape: tuple[int, ...], fan_in: int) -> str:
        return self.const(self.rng.normal(0, 1 / np.sqrt(fan_in), shape).astype(np.float32), "w")

    def add(self, op: str, inputs: list[str], shape: tuple[int, ...], **attrs) -> str:
        out = self.name(op.lower() + "_")
        self.nodes.append(helper.make_node(op, inputs, [out], name=out, **attrs))
        self.tensors[out] = tuple(shape)
        return out


def _ranked(builder: Builder, ranks: tuple[int, ...]) -> list[str]:
    return [t for t, s in builder.tensors.items() if len(s) in ranks]


def _conv(draw, b: Builder, x: str) -> str:
    """Conv2d on ``[N, C, H, W]`` (grouped, depthwise, strided, dilated) or Conv1d on ``[N, C, L]``."""
    n, c, *spatial = b.tensors[x]
    smallest = min(spatial)
    k = draw(st.sampled_from([1, 3] if smallest >= 3 else [1]))
    dilation = draw(st.sampled_from([1, 2] if k == 3 and smallest >= 5 else [1]))
    stride = draw(st.sampled_from([1, 2] if smallest >= 4 else [1]))
    pad = draw(st.sampled_from([0, dilation * (k // 2)]))
    depthwise = c > 1 and draw(st.booleans())
    out = c if depthwise else draw(st.integers(1, 8))
    group = c if depthwise else 1
    rank = len(spatial)
    inputs = [x, b.weight((out, c // group, *[k] * rank), c // group * k ** rank)]
    if draw(st.booleans()):
        inputs.append(b.const(b.rng.normal(0, 0.1, out).astype(np.float32), "b"))
    extent = dilation * (k - 1) + 1
    shape = (n, out, *[(d + 2 * pad - extent) // stride + 1 for d in spatial])
    return b.add("Conv", inputs, shape, kernel_shape=[k] * rank, strides=[stride] * rank, pads=[pad] * 2 * rank,
                 dilations=[dilation] * rank, group=group)


def _matmul(draw, b: Builder, x: str) -> str:
    shape = b.tensors[x]
    same = [t for t, s in b.tensors.items() if s == shape]
    if len(shape) == 3 and draw(st.booleans()):  # attention-like: x @ other^T
        other = draw(st.sampled_from(same))
        transposed = b.add("Transpose", [other], (shape[0], shape[2], shape[1]), perm=[0, 2, 1])
        return b.add("MatMul", [x, transposed], (shape[0], shape[1], shape[1]))
    out = draw(st.integers(1, 12))
    if len(shape) == 3 and draw(st.booleans()):  # constant on the left: W [out, T] @ x [N, T, D]
        return b.add("MatMul", [b.weight((out, shape[1]), shape[1]), x], (shape[0], out, shape[2]))
    return b.add("MatMul", [x, b.weight((shape[-1], out), shape[-1])], (*shape[:-1], out))


def _gemm(draw, b: Builder, x: str) -> str:
    n, d = b.tensors[x]
    out = draw(st.integers(1, 12))
    trans_b = draw(st.sampled_from([0, 1]))
    alpha, beta = draw(st.sampled_from([(1.0, 1.0), (0.5, 2.0)]))
    if draw(st.booleans()):  # x transposed first, read back with transA
        x = b.add("Transpose", [x], (d, n), perm=[1, 0])
        inputs = [x, b.weight((out, d) if trans_b else (d, out), d)]
        attrs = {"transA": 1}
    else:
        inputs = [x, b.weight((out, d) if trans_b else (d, out), d)]
        attrs = {}
    if draw(st.booleans()):
        inputs.append(b.const(b.rng.normal(0, 0.1, out).astype(np.float32), "b"))
    return b.add("Gemm", inputs, (n, out), transB=trans_b, alpha=alpha, beta=beta, **attrs)


def _binary(draw, b: Builder, x: str) -> str:
    shape = b.tensors[x]
    op = draw(st.sampled_from(["Add", "Mul"]))
    kind = draw(st.sampled_from(["tensor", "vector", "scalar"]))
    if kind == "tensor":
        other = draw(st.sampled_from([t for t, s in b.tensors.items() if s == shape]))
    elif kind == "vector":
        other = b.const(b.rng.normal(1 if op == "Mul" else 0, 0.5, shape[-1]).astype(np.float32))
    else:
        other = b.const(np.float32(b.rng.normal(1 if op == "Mul" else 0, 0.5)))
    inputs = [x, other] if draw(st.booleans()) else [other, x]
    return b.add(op, inputs, shape)


def _concat(draw, b: Builder, x: str) -> str:
    shape = b.tensors[x]
    axis = draw(st.integers(1, len(shape) - 1))
    same = [t for t, s in b.tensors.items() if s == shape]
    others = draw(st.lists(st.sampled_from(same), min_size=1, max_size=2))
    out = list(shape)
    out[axis] *= 1 + len(others)
    return b.add("Concat", [x, *others], out, axis=axis)


def _reshape(draw, b: Builder, x: str) -> str:
    shape = b.tensors[x]
    size = int(np.prod(shape[1:]))
    if len(shape) == 2 and size > 1 and draw(st.booleans()):
        divisors = [d for d in range(2, size + 1) if size % d == 0]
        rows = draw(st.sampled_from(divisors))
        target = (shape[0], rows, size // rows)
    elif len(shape) > 2 and draw(st.booleans()):
        return b.add("Flatten", [x], (shape[0], size), axis=1)
    else:
        target = (shape[0], size)
    spec = list(target)
    if draw(st.booleans()):
        spec[-1] = -1
    return b.add("Reshape", [x, b.const(np.array(spec, np.int64), "shape")], target)


def _transpose(draw, b: Builder, x: str) -> str:
    shape = b.tensors[x]
    perm = [0] + draw(st.permutations(list(range(1, len(shape)))))
    return b.add("Transpose", [x], [shape[p] for p in perm], perm=perm)


def _pool(draw, b: Builder, x: str) -> str:
    n, c, h, w = b.tensors[x]
    op = draw(st.sampled_from(["MaxPool", "AveragePool", "GlobalAveragePool"]))
    if op == "GlobalAveragePool":
        return b.add(op, [x], (n, c, 1, 1))
    if min(h, w) >= 2 and draw(st.booleans()):
        return b.add(op, [x], (n, c, h // 2, w // 2), kernel_shape=[2, 2], strides=[2, 2])
    return b.add(op, [x], (n, c, h, w), kernel_shape=[3, 3], pads=[1, 1, 1, 1])


def _activation(draw, b: Builder, x: str) -> str:
    shape = b.tensors[x]
    op = draw(st.sampled_from(["Relu", "Sigmoid", "Tanh", "LeakyRelu", "Clip", "HardSigmoid", "HardSwish",
                               "Softmax", "LayerNormalization"]))
    if op == "Clip":
        return b.add(op, [x, b.const(np.float32(0)), b.const(np.float32(6))], shape)
    if op == "LeakyRelu":
        return b.add(op, [x], shape, alpha=0.1)
    if op == "Softmax":
        return b.add(op, [x], shape, axis=-1)
    if op == "LayerNormalization":
        d = shape[-1]
        scale = b.const(b.rng.normal(1, 0.2, d).astype(np.float32), "gamma")
        bias = b.const(b.rng.normal(0, 0.2, d).astype(np.float32), "beta")
        return b.add(op, [x, scale, bias], shape, axis=-1, epsilon=1e-5)
    return b.add(op, [x], shape)


def _gather(draw, b: Builder, x: str) -> str:
    shape = b.tensors[x]
    axis = draw(st.integers(1, len(shape) - 1))
    indices = draw(st.lists(st.integers(0, shape[axis] - 1), min_size=1, max_size=4))
    out = list(shape)
    out[axis] = len(indices)
    return b.add("Gather", [x, b.const(np.array(indices, np.int64), "idx")], out, axis=axis)


def _slice(draw, b: Builder, x: str) -> str:
    shape = b.tensors[x]
    axis = draw(st.integers(1, len(shape) - 1))
    start = draw(st.integers(0, shape[axis] - 1))
    end = draw(st.integers(start + 1, shape[axis]))
    step = draw(st.sampled_from([1, 2]))
    out = list(shape)
    out[axis] = len(range(start, end, step))
    inputs = [x, *(b.const(np.array([v], np.int64), "s") for v in (start, end, axis, step))]
    return b.add("Slice", inputs, out)


def _if(draw, b: Builder, x: str) -> str:
    """``If(mean(x) > t)``: the then-branch scales the captured ``x``, the else-branch reads a second
    captured tensor (or ``x``) through Relu and an Add of a constant."""
    shape = b.tensors[x]
    other = draw(st.sampled_from([t for t, s in b.tensors.items() if s == shape]))
    mean = b.add("ReduceMean", [x], (), keepdims=0)
    cond = b.name("cond")
    b.nodes.append(helper.make_node("Greater", [mean, b.const(np.float32(draw(st.sampled_from([-0.1, 0.0, 0.1]))))],
                                    [cond], name=cond))
    out = b.name("if_")
    then_out, else_out, relu = b.name("then_"), b.name("else_"), b.name("relu_")
    then_graph = helper.make_graph(
        [helper.make_node("Mul", [x, b.const(np.float32(1.5))], [then_out])], b.name("then"), [],
        [helper.make_tensor_value_info(then_out, TensorProto.FLOAT, shape)])
    else_graph = helper.make_graph(
        [helper.make_node("Relu", [other], [relu]),
         helper.make_node("Add", [relu, b.const(np.float32(-0.25))], [else_out])], b.name("else"), [],
        [helper.make_tensor_value_info(else_out, TensorProto.FLOAT, shape)])
    b.nodes.append(helper.make_node("If", [cond], [out], name=out, then_branch=then_graph, else_branch=else_graph))
    b.tensors[out] = tuple(shape)
    return out


def _canonicalized(draw, b: Builder, x: str) -> str:
    """What ``canonicalize`` rewrites: BatchNormalization (folded into a Conv/Gemm before it), Identity,
    inference Dropout, Sum, a Constant node, and HardSwish written as ``x * HardSigmoid(x)``."""
    shape = b.tensors[x]
    op = draw(st.sampled_from(["BatchNormalization", "Identity", "Dropout", "Sum", "Constant", "HardSwishPattern"]))
    if op == "BatchNormalization":
        c = shape[1]
        stats = [b.const(b.rng.normal(1, 0.2, c).astype(np.float32), "bn_scale"),
                 b.const(b.rng.normal(0, 0.2, c).astype(np.float32), "bn_bias"),
                 b.const(b.rng.normal(0, 0.2, c).astype(np.float32), "bn_mean"),
                 b.const(b.rng.uniform(0.5, 2, c).astype(np.float32), "bn_var")]
        return b.add(op, [x, *stats], shape, epsilon=1e-5)
    if op == "Sum":
        others = draw(st.lists(st.sampled_from([t for t, s in b.tensors.items() if s == shape]), min_size=1,
                               max_size=2))
        return b.add(op, [x, *others], shape)
    if op == "Constant":
        value = b.name("constant_")
        b.nodes.append(helper.make_node("Constant", [], [value], name=value, value=numpy_helper.from_array(
            b.rng.normal(0, 1, shape[-1]).astype(np.float32))))
        return b.add("Add", [x, value], shape)
    if op == "HardSwishPattern":
        gate = b.add("HardSigmoid", [x], shape, alpha=1 / 6, beta=0.5)
        return b.add("Mul", [x, gate], shape)
    return b.add(op, [x], shape)


OPS = {  # operator builder -> the ranks of the tensors it applies to
    _conv: (3, 4), _matmul: (2, 3), _gemm: (2,), _binary: (2, 3, 4), _concat: (2, 3, 4), _reshape: (2, 3, 4),
    _transpose: (3, 4), _pool: (4,), _activation: (2, 3, 4), _gather: (2, 3, 4), _slice: (2, 3, 4),
    _if: (2, 3, 4), _canonicalized: (2, 3, 4),
}
WEIGHT = {_conv: 3, _matmul: 3, _gemm: 3}  # the quantized ops are drawn three times as often as the others


@st.composite
def graphs(draw, max_ops: int = 8) -> tuple[onnx.ModelProto, list[dict[str, np.ndarray]]]:
    """A random valid model (see the module docstring) and ``FEEDS`` calibration feeds for it."""
    seed = draw(st.integers(0, 2 ** 32 - 1))
    b = Builder(np.random.default_rng(seed))
    interface = draw(st.sampled_from(["image", "sequence", "vector", "tokens"]))
    if interface == "image":
        shape = (BATCH, draw(st.integers(1, 6)), draw(st.integers(1, 9)), draw(st.integers(1, 9)))
    elif interface == "vector":
        shape = (BATCH, draw(st.integers(1, 16)))
    else:
        shape = (BATCH, draw(st.integers(1, 6)), draw(st.integers(1, 12)))
    inputs = []
    if interface == "tokens":
        vocabulary = draw(st.integers(2, 20))
        inputs.append(helper.make_tensor_value_info("ids", TensorProto.INT64, shape[:2]))
        table = b.const(b.rng.normal(0, 1, (vocabulary, shape[2])).astype(np.float32), "embedding")
        b.add("Gather", [table, "ids"], shape)
    else:
        inputs.append(helper.make_tensor_value_info("x", TensorProto.FLOAT, shape))
        b.tensors["x"] = shape
    last = next(reversed(b.tensors))
    for _ in range(draw(st.integers(1, max_ops))):
        choices = [op for op, ranks in OPS.items() for _ in range(WEIGHT.get(op, 1)) if _ranked(b, ranks)]
        op = draw(st.sampled_from(choices))
        start = draw(st.sampled_from([last] if len(b.tensors[last]) in OPS[op] else _ranked(b, OPS[op])))
        last = op(draw, b, start)
    produced = [t for t in b.tensors if t not in ("x",)]
    extra = draw(st.lists(st.sampled_from(produced), max_size=2, unique=True))
    outputs = [helper.make_tensor_value_info(t, TensorProto.FLOAT, b.tensors[t]) for t in dict.fromkeys([last, *extra])]
    graph = helper.make_graph(b.nodes, "generated", inputs, outputs, b.initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    scale = draw(st.sampled_from([0.0, 0.1, 1.0, 10.0, 1000.0]))  # 0: a constant input, zero ranges
    rng = np.random.default_rng(seed + 1)
    if interface == "tokens":
        feeds = [{"ids": rng.integers(0, vocabulary, shape[:2]).astype(np.int64)} for _ in range(FEEDS)]
    else:
        feeds = [{"x": (scale * rng.standard_normal(shape)).astype(np.float32)} for _ in range(FEEDS)]
    return model, feeds


@dataclass
class Findings:
    """What :func:`check_graph` found: ``problems`` (bugs: each ``(pipeline, kind, message)``) and
    ``refusals`` (one-line user errors, ``(pipeline, message)``), and how many quantized activations
    the executor was compared on per pipeline."""

    problems: list[tuple[str, str, str]] = field(default_factory=list)
    refusals: list[tuple[str, str]] = field(default_factory=list)
    compared: dict[str, int] = field(default_factory=dict)  # pipeline -> quantized activations compared
    seconds: dict[str, float] = field(default_factory=dict)  # pipeline (or "canonicalize") -> wall time


def _ort(model_or_bytes, feed, optimize: bool) -> dict[str, np.ndarray]:
    from qcompiler.executor.agreement import run_onnxruntime

    return run_onnxruntime(model_or_bytes, feed, optimize=optimize)


def check_canonicalize(proto: onnx.ModelProto, feeds, findings: Findings) -> None:
    import qcompiler
    from qcompiler import ir

    try:
        model = qcompiler.compile(ir.from_proto(copy.deepcopy(proto)), None, pipeline="canonicalize")
        before, after = _ort(proto.SerializeToString(), feeds[0], False), _ort(model, feeds[0], False)
    except Exception:  # noqa: BLE001 - canonicalize refuses nothing valid: every exception is a bug
        findings.problems.append(("canonicalize", "exception", traceback.format_exc(limit=-3)))
        return
    for name, expected in before.items():
        got = after.get(name)
        if got is None or got.shape != expected.shape:
            findings.problems.append(("canonicalize", "output", f"{name}: missing or reshaped"))
        elif np.abs(got - expected).max(initial=0) > 1e-4 * max(1.0, np.abs(expected).max(initial=0)):
            findings.problems.append(("canonicalize", "numerics",
                                      f"{name}: max |diff| {np.abs(got - expected).max():.3g}"))


def check_pipeline(proto: onnx.ModelProto, feeds, name: str, options: dict, findings: Findings) -> None:
    import qcompiler
    from qcompiler import ir
    from qcompiler.errors import UserError
    from qcompiler.executor import Interpreter
    from qcompiler.executor.agreement import expose_quantized_outputs
    from qcompiler.targets import detect_target

    try:
        pipeline, compile_options = resolve_pipeline(options, feeds)
        model = qcompiler.compile(ir.from_proto(copy.deepcopy(proto)), None, pipeline=pipeline,
                                  options=compile_options)
    except UserError as exc:
        message = str(exc).strip()
        if "\n" in message:
            findings.problems.append((name, "multi-line user error", message))
        else:
            findings.refusals.append((name, message))
        return
    except Exception:  # noqa: BLE001 - every other exception is a bug
        findings.problems.append((name, "exception", traceback.format_exc(limit=-3)))
        return
    try:
        probe = expose_quantized_outputs(model, every=True)
        dynamic = [n.outputs[0] for n in probe.graph if n.op_type == "DynamicQuantizeLinear"]
        probe.graph.outputs.extend(v for v in dynamic if v not in probe.graph.outputs)
        data = ir.to_proto(probe).SerializeToString()
        expected = [o.name for o in proto.graph.output]
        reference = _ort(data, feeds[0], True)
        if list(reference)[:len(expected)] != expected:
            findings.problems.append((name, "interface", f"outputs {expected} -> {list(reference)}"))
    except Exception:  # noqa: BLE001
        findings.problems.append((name, "onnxruntime", traceback.format_exc(limit=-2)))
        return
    quantized = [n.outputs[0].name for n in model.graph if n.op_type in ("QuantizeLinear", "DynamicQuantizeLinear")
                 and n.outputs[0].const is None and n.outputs[0].name in reference]
    findings.compared[name] = len(quantized)
    if not quantized:
        return
    try:
        interpreter = Interpreter(probe, profile=detect_target().name)
        for feed in feeds[:2]:
            ours, theirs = interpreter.run(feed), _ort(data, feed, True)
            for q in quantized:
                if not np.array_equal(ours[q], theirs[q]):
                    diff = np.abs(ours[q].astype(np.int64) - theirs[q].astype(np.int64))
                    findings.problems.append((name, "executor", f"{q}: {int((diff > 0).sum())} of {diff.size} "
                                              f"differ, max {int(diff.max())} LSB"))
                    return
    except Exception:  # noqa: BLE001
        findings.problems.append((name, "executor exception", traceback.format_exc(limit=-3)))


def check_one(data: bytes, feeds, name: str) -> Findings:
    """The checks of one pipeline (``name`` in :data:`PIPELINES`, or ``"canonicalize"``) on a serialized
    graph: the unit a worker process runs."""
    proto = onnx.load_from_string(data)
    findings = Findings()
    if name == "canonicalize":
        check_canonicalize(proto, feeds, findings)
    else:
        check_pipeline(proto, feeds, name, PIPELINES[name], findings)
    return findings


def check_graph(proto: onnx.ModelProto, feeds, pipelines: tuple[str, ...] = tuple(PIPELINES),
                runner=None) -> Findings:
    """Run every check of the module docstring on one generated graph (``runner``: each pipeline's in
    that worker process, see :mod:`.isolated`)."""
    data = proto.SerializeToString()
    findings = Findings()
    try:  # onnxruntime 1.32's optimizer refuses some valid float graphs (a Gemm read by a Transpose and
        _ort(data, feeds[0], True)  # returned as a graph output): nothing compiled from them can load either
    except Exception as exc:  # noqa: BLE001 - onnxruntime's exceptions have no common base class
        reason = str(exc).strip().splitlines()[0]
        findings.refusals.append(("float graph", f"onnxruntime refuses the float graph: {reason}"))
        return findings
    for name in ("canonicalize", *pipelines):
        start = time.perf_counter()
        found = runner(check_one, data, feeds, name) if runner is not None else check_one(data, feeds, name)
        findings.seconds[name] = time.perf_counter() - start
        if isinstance(found, Crashed):
            findings.problems.append((name, "crash", str(found)))
            continue
        findings.problems += found.problems
        findings.refusals += found.refusals
        findings.compared.update(found.compared)
    return findings
