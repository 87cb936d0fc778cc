"""onnxruntime's float kernels in the fake-quantized torch model, where they round otherwise than torch's.

A float op whose result feeds a quantizer decides, near a half step, which integer the quantizer gives, and
later layers carry a one-step difference on. Two of onnxruntime's float kernels round differently from the
torch ops (or the chain of them) that run them in the torch forward:

* **Layer normalization.** Exported transformers write it as nine float ops, ``ReduceMean -> Sub -> Pow(2)
  -> ReduceMean -> Add(eps) -> Sqrt -> Div -> Mul(gamma) -> Add(beta)``, which onnxruntime's graph optimizer
  fuses into one ``LayerNormalization`` (``LayerNormFusion``). Its MLAS kernel on x86 with AVX2, for rows of
  ``N >= 8``::

      mean = float32(float64 sum of x / N)
      d    = x - mean                                                     (float32)
      acc  = d * d summed with FMA into 8 float32 lanes, 8 elements at a time,
             the lanes added in halves (4 + 4, 2 + 2, 1 + 1), then the rest with FMA one at a time
      inv  = 1 / sqrt(acc / N + eps)                                      (float32)
      y    = fma(d * inv, gamma, beta)

* **Sigmoid**: MLAS's rational approximation (Eigen's coefficients), ``x`` clamped to ``[-18, 18]``,
  ``p = x · P(x²)`` and ``q = Q(x²)`` by Horner's rule in FMA steps, ``y = clamp(p / q + 1/2, 0, 1)``
  (:data:`LOGISTIC_P`, :data:`LOGISTIC_Q`).

Each becomes a step whose value is the kernel's and whose gradient is the torch ops'
(:func:`~qcompiler.kernels.torch_ops.quantize.straight_through`). Other builds (other CPUs, other onnxruntime
versions) compute these otherwise, and onnxruntime fuses some chains otherwise (a
``SimplifiedLayerNormalization`` of the centred input, say), so a kernel replaces only the ops onnxruntime's
optimizer leaves as ``LayerNormalization`` / ``Sigmoid`` (:func:`onnxruntime_nodes`), and only where it
reproduces the installed onnxruntime bit for bit on a probe at the model's row length
(:func:`reproduces_onnxruntime`: the kernel's handling of the last ``N mod 8`` elements is known for none or
one of them); elsewhere the torch ops run as they are.
"""

from __future__ import annotations

import functools
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .. import ir
from ..executor.interpreter import Step
from ..kernels.torch_ops._common import tensor
from ..kernels.torch_ops.quantize import straight_through

LANES = 8
LOGISTIC_P = (4.37031012579801e-11, 1.15627324459942e-07, 6.08574864600143e-05, 8.51377133304701e-03,
              2.48287947061529e-01)
"""Coefficients of ``P(x²)`` in MLAS's logistic, highest power first (``p = x · P(x²)``)."""
LOGISTIC_Q = (6.10247389755681e-13, 5.76102136993427e-09, 6.29106785017040e-06, 1.70198817374094e-03,
              1.16817656904453e-01, 9.93151921023180e-01)
"""Coefficients of ``Q(x²)``, highest power first."""


def _fma(a, b, c) -> np.ndarray:
    """float32 ``a * b + c`` rounded once (float64 holds the float32 product exactly)."""
    return (np.asarray(a, np.float32).astype(np.float64) * np.asarray(b, np.float32).astype(np.float64)
            + np.asarray(c, np.float32).astype(np.float64)).astype(np.float32)


def mlas_layer_norm(x: np.ndarray, gamma: np.ndarray, beta: np.ndarray, epsilon: float) -> np.ndarray:
    """The MLAS kernel's layer normalization of ``x`` over its last axis (module docstring)."""
    x = np.ascontiguousarray(x, np.float32)
    n = x.shape[-1]
    rows = x.reshape(-1, n)
    mean = (rows.astype(np.float64).sum(axis=1, keepdims=True) / n).astype(np.float32)
    d = rows - mean
    full = n - n % LANES
    lanes = np.zeros((rows.shape[0], LANES), np.float32)
    for start in range(0, full, LANES):
        block = d[:, start:start + LANES]
        lanes = _fma(block, block, lanes)
    while lanes.shape[1] > 1:
        half = lanes.shape[1] // 2
        lanes = lanes[:, :half] + lanes[:, half:]
    acc = lanes
    for column in range(full, n):
        acc = _fma(d[:, column:column + 1], d[:, column:column + 1], acc)
    inv = np.float32(1) / np.sqrt(acc / np.float32(n) + np.float32(epsilon))
    return _fma(d * inv, gamma, beta).reshape(x.shape)


def mlas_logistic(x: np.ndarray) -> np.ndarray:
    """MLAS's sigmoid of ``x`` (module docstring)."""
    v = np.clip(np.asarray(x, np.float32), np.float32(-18), np.float32(18))
    v2 = v * v
    p = np.float32(LOGISTIC_P[0])
    for coefficient in LOGISTIC_P[1:]:
        p = _fma(p, v2, coefficient)
    q = np.float32(LOGISTIC_Q[0])
    for coefficient in LOGISTIC_Q[1:]:
        q = _fma(q, v2, coefficient)
    return np.clip(p * v / q + np.float32(0.5), np.float32(0), np.float32(1))


def _probe_session(node, inputs: list, initializers: list):
    import onnxruntime as ort
    from onnx import TensorProto, helper

    output = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    graph = helper.make_graph([node], "probe", inputs, [output], initializers)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
                                .SerializeToString(), options, providers=["CPUExecutionProvider"])


@functools.cache
def reproduces_onnxruntime(op_type: str, length: int = 0) -> bool:
    """Whether this module's ``LayerNormalization`` (of rows of ``length``) / ``Sigmoid`` computes what the
    installed onnxruntime's does, on random inputs."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    if op_type == "Sigmoid":
        x = np.concatenate([rng.normal(0, 3, 4096), rng.uniform(-30, 30, 1024)]).astype(np.float32)
        session = _probe_session(helper.make_node("Sigmoid", ["x"], ["y"]),
                                 [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None])], [])
        return bool(np.array_equal(session.run(None, {"x": x})[0], mlas_logistic(x)))
    gamma, beta = rng.normal(1, 0.3, length).astype(np.float32), rng.normal(0, 0.2, length).astype(np.float32)
    session = _probe_session(
        helper.make_node("LayerNormalization", ["x", "gamma", "beta"], ["y"], axis=-1, epsilon=1e-5),
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, length])],
        [numpy_helper.from_array(gamma, "gamma"), numpy_helper.from_array(beta, "beta")])
    x = rng.normal(0.3, 2.0, (2048, length)).astype(np.float32)
    return bool(np.array_equal(session.run(None, {"x": x})[0], mlas_layer_norm(x, gamma, beta, 1e-5)))


def onnxruntime_nodes(model: ir.Model, op_types: set[str]) -> set[tuple[str, str]]:
    """``(op type, name)`` for the node name, first input and first output of each node of ``op_types`` in the
    graph onnxruntime's optimizer makes of ``model``: any of them may change there (an input when it drops a
    ``Mul`` by 1, an output when its Q/DQ propagation follows the node), rarely all. Nothing when the
    optimized graph cannot be written."""
    import onnx
    import onnxruntime as ort

    with tempfile.TemporaryDirectory(prefix="qcompiler-optimized-") as folder:
        path, optimized = Path(folder) / "model.onnx", Path(folder) / "optimized.onnx"
        ir.save(model, path)
        options = ort.SessionOptions()
        options.optimized_model_filepath = str(optimized)
        options.log_severity_level = 3
        try:
            ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
            graph = onnx.load(str(optimized), load_external_data=False).graph
        except Exception:  # onnxruntime's errors share no base class; without its graph nothing is replaced
            return set()
    return {(node.op_type, name) for node in graph.node if node.op_type in op_types
            for name in (node.name, node.input[0], node.output[0]) if name}


@dataclass(frozen=True)
class LayerNormChain:
    """The nine nodes of one decomposed layer normalization over the last axis, in order."""

    nodes: tuple[ir.Node, ...]
    x: ir.Value
    gamma: np.ndarray
    beta: np.ndarray
    epsilon: float


def _constant(value: ir.Value | None) -> np.ndarray | None:
    return None if value is None or value.const is None else np.asarray(value.const)


def _other(node: ir.Node, value: ir.Value) -> ir.Value | None:
    """The input of a two-input node that is not ``value``."""
    first, second = node.inputs[:2]
    return second if first is value else first if second is value else None


def _only_consumer(value: ir.Value, op_type: str, graph_outputs: set) -> ir.Node | None:
    consumers = value.consumers()
    if len(consumers) != 1 or value.name in graph_outputs or consumers[0].op_type != op_type:
        return None
    return consumers[0]


def _mean_over_last_axis(node: ir.Node) -> bool:
    """ReduceMean over the last axis alone, dimensions kept (axes as attribute, or as input from opset 18)."""
    axes = node.attrs.get("axes")
    if axes is None and len(node.inputs) > 1:
        axes = _constant(node.inputs[1])
    if axes is None or np.asarray(axes).size != 1 or not node.attrs.get("keepdims", 1):
        return False
    rank = None if node.inputs[0].shape is None else len(node.inputs[0].shape)
    axis = int(np.asarray(axes).reshape(()))
    return axis == -1 or (rank is not None and axis == rank - 1)


def find_layer_norms(model: ir.Model) -> list[LayerNormChain]:
    """The decomposed layer normalizations in ``model``: the nine-op pattern, each intermediate read only by the
    next op (the centred input by the Pow and the Div), constant ``eps``, ``gamma`` and ``beta``."""
    outputs = {v.name for v in model.graph.outputs}
    chains = []
    for mean in model.graph:
        if mean.op_type != "ReduceMean" or not _mean_over_last_axis(mean):
            continue
        x = mean.inputs[0]
        sub = next((n for n in mean.outputs[0].consumers() if n.op_type == "Sub" and n.inputs[0] is x), None)
        if sub is None or len(mean.outputs[0].consumers()) != 1 or sub.outputs[0].name in outputs:
            continue
        centred = sub.outputs[0]
        readers = {n.op_type: n for n in centred.consumers()}
        if len(centred.consumers()) != 2 or set(readers) != {"Pow", "Div"}:
            continue
        pow_, div = readers["Pow"], readers["Div"]
        exponent = _constant(pow_.inputs[1])
        if pow_.inputs[0] is not centred or exponent is None or exponent.size != 1 or float(exponent.reshape(())) != 2:
            continue
        variance = _only_consumer(pow_.outputs[0], "ReduceMean", outputs)
        if variance is None or not _mean_over_last_axis(variance):
            continue
        add_eps = _only_consumer(variance.outputs[0], "Add", outputs)
        epsilon = None if add_eps is None else _constant(_other(add_eps, variance.outputs[0]))
        if epsilon is None or epsilon.size != 1:
            continue
        sqrt = _only_consumer(add_eps.outputs[0], "Sqrt", outputs)
        if sqrt is None or _only_consumer(sqrt.outputs[0], "Div", outputs) is not div or div.inputs[0] is not centred:
            continue
        mul = _only_consumer(div.outputs[0], "Mul", outputs)
        gamma = None if mul is None else _constant(_other(mul, div.outputs[0]))
        add_beta = None if mul is None else _only_consumer(mul.outputs[0], "Add", outputs)
        beta = None if add_beta is None else _constant(_other(add_beta, mul.outputs[0]))
        if gamma is None or beta is None or gamma.ndim != 1 or beta.shape != gamma.shape:
            continue
        chains.append(LayerNormChain((mean, sub, pow_, variance, add_eps, sqrt, div, mul, add_beta), x,
                                     gamma.astype(np.float32), beta.astype(np.float32), float(epsilon.reshape(()))))
    return chains


def _layer_norm_step(chain: LayerNormChain, last: Step) -> Step:
    gamma, beta = torch.from_numpy(chain.gamma), torch.from_numpy(chain.beta)

    def run(x: torch.Tensor) -> torch.Tensor:
        x = tensor(x)
        centred = x - x.mean(-1, keepdim=True)
        surrogate = centred / torch.sqrt((centred * centred).mean(-1, keepdim=True) + chain.epsilon) * gamma + beta
        exact = mlas_layer_norm(x.detach().numpy(), chain.gamma, chain.beta, chain.epsilon)
        return straight_through(surrogate, torch.from_numpy(exact))

    return Step("LayerNormalization", last.name, run, (chain.x,), last.outputs, {}, chain.nodes, "kernel")


def _sigmoid_step(step: Step) -> Step:
    def run(x: torch.Tensor) -> torch.Tensor:
        x = tensor(x)
        return straight_through(torch.sigmoid(x), torch.from_numpy(mlas_logistic(x.detach().numpy())))

    return Step("Sigmoid", step.name, run, step.inputs, step.outputs, {}, step.nodes, "kernel")


def _known(op_type: str, node: ir.Node, kept: set[tuple[str, str]], first_input: ir.Value) -> bool:
    """Whether onnxruntime's graph has an ``op_type`` node of ``node``'s name, output or ``first_input``."""
    return bool({(op_type, name) for name in (node.name, node.outputs[0].name, first_input.name) if name} & kept)


def float_kernel_units(model: ir.Model, runtime: ir.Model, steps: list[Step],
                       index: dict[ir.Node, int]) -> dict[int, Step | None]:
    """Step replacements (by index into ``steps``, the plan of ``runtime``, which is ``model`` as onnxruntime
    runs it; None drops a step) that compute onnxruntime's layer normalization and sigmoid (module docstring)."""
    chains = [c for c in find_layer_norms(runtime) if all(n in index for n in c.nodes) and c.gamma.size >= LANES
              and reproduces_onnxruntime("LayerNormalization", c.gamma.size)]
    sigmoids = [n for n in runtime.graph if n.op_type == "Sigmoid" and n in index]
    if sigmoids and not reproduces_onnxruntime("Sigmoid"):
        sigmoids = []
    if not chains and not sigmoids:
        return {}
    kept = onnxruntime_nodes(model, {"LayerNormalization", "Sigmoid"})
    replacements: dict[int, Step | None] = {}
    for chain in chains:
        if _known("LayerNormalization", chain.nodes[-1], kept, chain.x):
            replacements.update({index[node]: None for node in chain.nodes[:-1]})
            replacements[index[chain.nodes[-1]]] = _layer_norm_step(chain, steps[index[chain.nodes[-1]]])
    for node in sigmoids:
        if _known("Sigmoid", node, kept, node.inputs[0]):
            replacements[index[node]] = _sigmoid_step(steps[index[node]])
    return replacements


__all__ = ["LOGISTIC_P", "LOGISTIC_Q", "LayerNormChain", "find_layer_norms", "float_kernel_units", "mlas_layer_norm",
           "mlas_logistic", "onnxruntime_nodes", "reproduces_onnxruntime"]
