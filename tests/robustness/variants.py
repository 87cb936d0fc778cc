"""Interface variants of a model: the graph interfaces real exporters produce, derived from any FP32 model.

Each variant is a function ``(proto, feeds) -> (proto', feeds', extra)`` on an ``onnx.ModelProto`` and
its calibration feeds: the derived model, the feeds that calibrate it, and the graph outputs it adds,
each marked ``exact`` (must equal the float variant's after compiling: shapes, masks, inputs and
constants passed through) or ``close`` (a float activation, compared by SQNR). :func:`run_case`
compiles one variant with one pipeline and classifies the outcome. The variants (issue 17):

* ``shape-output``: an int64 ``Shape`` of the first input as an extra output (torch/optimum exports);
* ``bool-mask-output``: a bool mask of the first input as an extra output;
* ``intermediate-output``: a mid-graph Conv/MatMul/Gemm activation exposed as an output (hidden states);
* ``output-consumed``: the first output also feeds a later node whose result is a second extra output;
* ``duplicate-output``: the first output listed twice;
* ``input-passthrough``: the first input also returned as an output;
* ``initializer-output``: an output fed directly by an initializer;
* ``optional-input``: a new float input ``gain`` with a default (an initializer of the same name) that
  scales the first output; calibration feeds do not give it;
* ``weights-as-inputs``: every initializer also a graph input with that default (IR version < 4);
* ``dynamic-batch``: dimension 0 of every input and output made symbolic, calibrated with batches of
  different sizes.

Used by ``tests/robustness/test_interface_variants.py`` (small graphs, seconds) and by
``benchmarks/interface_matrix.py`` (every realmodels model x variant x pipeline).
"""

from __future__ import annotations

import copy
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

Feeds = list[dict[str, np.ndarray]]
Variant = Callable[[onnx.ModelProto, Feeds], tuple[onnx.ModelProto, Feeds, dict[str, str]]]

QUANTIZED_OPS = ("Conv", "MatMul", "Gemm")


def _fresh(graph: onnx.GraphProto, stem: str) -> str:
    taken = {v for n in graph.node for v in (*n.input, *n.output)} | {i.name for i in graph.initializer} \
        | {v.name for v in (*graph.input, *graph.output)}
    name, k = stem, 0
    while name in taken:
        k += 1
        name = f"{stem}_{k}"
    return name


def _first_input(graph: onnx.GraphProto) -> onnx.ValueInfoProto:
    initializers = {i.name for i in graph.initializer}
    return next(v for v in graph.input if v.name not in initializers)


def shape_output(proto, feeds):
    proto = copy.deepcopy(proto)
    graph = proto.graph
    x = _first_input(graph)
    name = _fresh(graph, "input_shape")
    graph.node.append(helper.make_node("Shape", [x.name], [name], name=name))
    graph.output.append(helper.make_tensor_value_info(name, TensorProto.INT64,
                                                      [len(x.type.tensor_type.shape.dim)]))
    return proto, feeds, {name: "exact"}


def bool_mask_output(proto, feeds):
    """``Greater(input, 0)`` for an integer input (a padding mask); for a float input ``IsNaN(input)``:
    a comparison on a float input the compiler quantizes reads the quantized values (one quantizer per
    tensor, shared by every reader), so a threshold mask would legitimately flip near its threshold."""
    proto = copy.deepcopy(proto)
    graph = proto.graph
    x = _first_input(graph)
    name = _fresh(graph, "input_mask")
    np_type = helper.tensor_dtype_to_np_dtype(x.type.tensor_type.elem_type)
    if np.issubdtype(np_type, np.floating):
        graph.node.append(helper.make_node("IsNaN", [x.name], [name], name=name))
    else:
        zero = _fresh(graph, "mask_zero")
        graph.initializer.append(numpy_helper.from_array(np.zeros((), np_type), zero))
        graph.node.append(helper.make_node("Greater", [x.name, zero], [name], name=name))
    graph.output.append(helper.make_tensor_value_info(name, TensorProto.BOOL, None))
    return proto, feeds, {name: "exact"}


def _middle_activation(graph: onnx.GraphProto) -> str:
    """The output of the middle Conv/MatMul/Gemm node that is not a graph output already."""
    outputs = {o.name for o in graph.output}
    candidates = [n.output[0] for n in graph.node if n.op_type in QUANTIZED_OPS and n.output[0] not in outputs]
    if not candidates:
        candidates = [n.output[0] for n in graph.node if n.output[0] not in outputs]
    return candidates[len(candidates) // 2]


def intermediate_output(proto, feeds):
    proto = copy.deepcopy(proto)
    name = _middle_activation(proto.graph)
    proto.graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, None))
    return proto, feeds, {name: "close"}


def output_consumed(proto, feeds):
    proto = copy.deepcopy(proto)
    graph = proto.graph
    y = graph.output[0].name
    name = _fresh(graph, "output_again")
    graph.node.append(helper.make_node("Relu", [y], [name], name=name))
    graph.output.append(helper.make_tensor_value_info(name, graph.output[0].type.tensor_type.elem_type, None))
    return proto, feeds, {name: "close"}


def duplicate_output(proto, feeds):
    proto = copy.deepcopy(proto)
    graph = proto.graph
    graph.output.append(copy.deepcopy(graph.output[0]))
    return proto, feeds, {graph.output[0].name: "close"}


def input_passthrough(proto, feeds):
    proto = copy.deepcopy(proto)
    graph = proto.graph
    graph.output.append(copy.deepcopy(_first_input(graph)))
    return proto, feeds, {graph.output[-1].name: "exact"}


def initializer_output(proto, feeds):
    proto = copy.deepcopy(proto)
    graph = proto.graph
    name = _fresh(graph, "constant_output")
    graph.initializer.append(numpy_helper.from_array(np.arange(6, dtype=np.float32).reshape(2, 3) / 4, name))
    graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, [2, 3]))
    return proto, feeds, {name: "exact"}


def optional_input(proto, feeds):
    proto = copy.deepcopy(proto)
    graph = proto.graph
    output = graph.output[0]
    gain = _fresh(graph, "gain")
    scaled = _fresh(graph, output.name + "_scaled")
    graph.input.append(helper.make_tensor_value_info(gain, TensorProto.FLOAT, []))
    graph.initializer.append(numpy_helper.from_array(np.array(1.5, np.float32), gain))
    graph.node.append(helper.make_node("Mul", [output.name, gain], [scaled], name=scaled))
    graph.output[0].CopyFrom(helper.make_tensor_value_info(scaled, output.type.tensor_type.elem_type, None))
    if proto.ir_version < 4:
        proto.ir_version = 4
    return proto, feeds, {}


def weights_as_inputs(proto, feeds):
    """Every initializer also listed as a graph input (an input with a default), as exports before IR
    version 4 write every weight; calibration feeds give none of them."""
    proto = copy.deepcopy(proto)
    graph = proto.graph
    listed = {v.name for v in graph.input}
    graph.input.extend(helper.make_tensor_value_info(i.name, i.data_type, list(i.dims))
                       for i in graph.initializer if i.name not in listed)
    return proto, feeds, {}


def dynamic_batch(proto, feeds):
    """Symbolic dim 0 everywhere; feeds regrouped into batches of 1, 2, 3, ... samples (cycling). A batch holds
    samples of one shape: where the next ones differ (text lines of other widths), its first sample repeats."""
    proto = copy.deepcopy(proto)
    graph = proto.graph
    initializers = {i.name for i in graph.initializer}
    for value in (*graph.input, *graph.output):
        if value.name in initializers or not value.type.tensor_type.shape.dim:
            continue
        dim = value.type.tensor_type.shape.dim[0]
        dim.Clear()
        dim.dim_param = "batch"
    del graph.value_info[:]
    samples = [{k: v[i:i + 1] for k, v in feed.items()}
               for feed in feeds for i in range(len(next(iter(feed.values()))))]
    regrouped, start, size = [], 0, 1
    while start < len(samples) and len(regrouped) < len(feeds):
        group = samples[start:start + size]
        if len(group) < size and regrouped:
            break
        alike = [sample for sample in group if all(sample[k].shape == group[0][k].shape for k in sample)]
        group = (alike * size)[:size]
        regrouped.append({k: np.concatenate([s[k] for s in group]) for k in group[0]})
        start, size = start + size, size % 3 + 1
    if len({len(next(iter(f.values()))) for f in regrouped}) < 2:  # too few samples for two sizes: repeat them
        regrouped.append({k: np.concatenate([v, v]) for k, v in regrouped[0].items()})
    return proto, regrouped, {}


VARIANTS: dict[str, Variant] = {
    "shape-output": shape_output,
    "bool-mask-output": bool_mask_output,
    "intermediate-output": intermediate_output,
    "output-consumed": output_consumed,
    "duplicate-output": duplicate_output,
    "input-passthrough": input_passthrough,
    "initializer-output": initializer_output,
    "optional-input": optional_input,
    "weights-as-inputs": weights_as_inputs,
    "dynamic-batch": dynamic_batch,
}

PIPELINES: dict[str, dict] = {
    "int8": {"pipeline": "int8"},
    "int8-threshold": {"pipeline": "int8", "sensitivity_threshold": 0.005},
    "int8-transformer": {"pipeline": "int8-transformer"},
    "auto": {"pipeline": "auto"},
    "int8-dfq": {"pipeline": "int8-dfq"},
    "w4a8": {"pipeline": "w4a8"},
    "dynamic": {"pipeline": "dynamic"},
    "weight-only-rtn": {"pipeline": "weight-only", "weight_method": "rtn", "block_size": 32},
    "weight-only-gptq-qdq": {"pipeline": "weight-only", "weight_method": "gptq", "block_size": 32,
                             "weight_format": "qdq"},
}
"""Every named quantizing pipeline the variants and generated graphs go through, as ``qcompiler.compile``
keywords: ``int8-threshold`` is ``int8`` with ``--sensitivity-threshold``; weight-only runs twice, RTN
(no data) into MatMulNBits and GPTQ (calibrated) into blocked DequantizeLinear, both with blocks of 32."""

ADAROUND_ITERATIONS = 40  # w4a8's AdaRound, shortened: these checks are about graphs, not about the rounding


def resolve_pipeline(options: dict, feeds: Feeds):
    """The resolved pipeline of ``options`` (a :data:`PIPELINES` entry) and its ``CompileOptions`` with
    ``feeds`` as calibration, objective "size" where the pipeline takes an objective (the quantized graph
    is what is checked), AdaRound shortened to :data:`ADAROUND_ITERATIONS`."""
    from qcompiler.options import CompileOptions
    from qcompiler.passes import AdaRound
    from qcompiler.pipelines import NAMED_PIPELINES, resolve

    name = options["pipeline"]
    fields = {"objective": "size"} if "objective" in NAMED_PIPELINES[name].honours else {}
    fields.update({k: v for k, v in options.items() if k != "pipeline"})
    compile_options = CompileOptions(calib=feeds, **fields)
    pipeline = resolve(name, compile_options)
    for p in pipeline.passes:
        if isinstance(p, AdaRound):
            p.iterations = ADAROUND_ITERATIONS
    return pipeline, compile_options


@dataclass
class Outcome:
    """How one (model, variant, pipeline) case ended: ``ok``, ``user-error`` (a one-line refusal),
    ``invalid-variant`` (onnxruntime refuses the float variant itself) or ``internal-error`` (a
    crash, an output onnxruntime cannot load or run, a multi-line user error, or an ``exact`` extra
    output that changed)."""

    status: str
    message: str = ""
    sqnr_db: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0


def run_case(proto: onnx.ModelProto, feeds: Feeds, extra: dict[str, str], compile_options: dict) -> Outcome:
    """Compile the variant ``proto`` with ``compile_options`` (a :data:`PIPELINES` entry, through
    :func:`resolve_pipeline`) on ``feeds``, run the result in onnxruntime on the first feed and compare its
    outputs, position by position, with the float variant's."""
    import qcompiler
    from qcompiler import ir
    from qcompiler.errors import UserError
    from qcompiler.executor.agreement import sqnr_db
    from qcompiler.ir.testing import run_onnxruntime

    start = time.perf_counter()
    try:
        reference = run_onnxruntime(proto, feeds[0], optimize=False)
    except Exception as exc:  # noqa: BLE001 - onnxruntime's errors have no common base
        return Outcome("invalid-variant", str(exc).splitlines()[0][:300])
    try:
        pipeline, options = resolve_pipeline(compile_options, feeds)
        model = qcompiler.compile(ir.from_proto(copy.deepcopy(proto)), None, pipeline=pipeline, options=options)
    except UserError as exc:
        message = str(exc)
        status = "user-error" if "\n" not in message.strip() else "internal-error"
        return Outcome(status, message.strip(), seconds=time.perf_counter() - start)
    except Exception:  # noqa: BLE001 - every other exception is a bug, reported with its traceback
        return Outcome("internal-error", traceback.format_exc(limit=-4), seconds=time.perf_counter() - start)
    try:
        compiled = run_onnxruntime(model, feeds[0], optimize=True)
    except Exception as exc:  # noqa: BLE001
        return Outcome("internal-error", f"onnxruntime cannot run the compiled model: {exc}",
                       seconds=time.perf_counter() - start)
    names = [o.name for o in proto.graph.output]
    outcome = Outcome("ok", seconds=time.perf_counter() - start)
    if [o.name for o in model.graph.outputs] != names or len(compiled) != len(reference):
        outcome.status, outcome.message = "internal-error", \
            f"outputs changed: {names} -> {[o.name for o in model.graph.outputs]}"
        return outcome
    for position, (name, ours, theirs) in enumerate(zip(names, compiled, reference)):
        key = f"{position}:{name}"
        if ours.dtype != theirs.dtype or ours.shape != theirs.shape:
            outcome.status = "internal-error"
            outcome.message += f"{key}: {theirs.dtype}{list(theirs.shape)} -> {ours.dtype}{list(ours.shape)}; "
        elif extra.get(name) == "exact" and not np.array_equal(ours, theirs):
            outcome.status = "internal-error"
            outcome.message += f"{key}: changed (must be unchanged); "
        elif np.issubdtype(theirs.dtype, np.floating):
            outcome.sqnr_db[key] = round(sqnr_db(theirs, ours), 2)
        elif not np.array_equal(ours, theirs):
            outcome.status = "internal-error"
            outcome.message += f"{key}: non-float output changed; "
    return outcome
