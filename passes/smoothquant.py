"""SmoothQuant: migrate activation outliers into the weights of the linear layers that read them.

Xiao et al. 2023, "SmoothQuant: Accurate and Efficient Post-Training Quantization for Large Language
Models", ICML (arXiv:2211.10438). A linear layer ``Y = X W`` (MatMul ``[..., K] x [K, N]``, or Gemm) is
unchanged by a per-input-channel scale ``s`` (K values)::

    Y = (X diag(s)^-1) (diag(s) W)                                                     (eq. 3)

Outlier channels of X (large ``max|X_j|``) are divided down and the weight rows they multiply grow,
so the per-tensor activation range is spent on the other channels while the per-channel weight
quantizer absorbs the growth. The paper's scale (eq. 4)::

    s_j = max|X_j|^alpha / max|W_j|^(1 - alpha)

with ``max|X_j|`` over the calibration data and ``max|W_j|`` over row j of every layer that reads X
(Q, K and V share one s); channels where either maximum is 0 keep ``s_j = 1``.

Where ``diag(s)^-1`` goes, so that the float model computes the same function (``preserves_semantics``;
checked by the CheckNumerics instrument in the tests):

* LayerNormalization over the last axis: ``gamma / s``, ``beta / s`` (the paper's case);
* Mul (Div) by a constant: the constant ``/ s`` (``· s``), e.g. the ``· 0.5`` that ends an exported GELU;
* MatMul / Gemm with a constant weight: its output columns (and Gemm's bias) ``/ s``;
* Add of a constant after such a producer (a bias): the constant ``/ s``, and the producer as above.

X must have no other reader than the smoothed layers: in a post-LN transformer (BERT) the LayerNorm
output also feeds the residual Add, so ``1/s`` cannot be folded there. Such a group is skipped with
its reason, or with ``explicit=True`` gets an explicit ``Mul(X, 1/s)`` that only its layers read.
That pays on MiniLM-L6 (BERT, post-LN: 18 of its 24 groups need it): cosine to FP32 0.9911 folded
only, 0.9975 with the Muls, at a latency cost within the noise of a shared 2-core machine
(``benchmarks/minilm_accuracy.py``), so the ``int8-transformer`` pipeline sets it.

Alpha: given (``alpha``), or searched per group over ``alphas``, minimizing the error of the
quantized layers (the search AWQ uses for its scales, Lin et al. 2024)::

    alpha* = argmin_alpha  sum_layers || X W - Q_a(X diag(s)^-1) Q_w(diag(s) W) ||²

with ``Q_a`` the target's per-tensor activation quantizer, its range read by ``method`` (as
``calibrate`` will), and ``Q_w`` the target's per-channel symmetric weight quantizer. X are rows of
held-out feeds (every ``holdout``-th); ``s`` and the range of ``Q_a`` come from the other feeds, so
an alpha is judged on data it was not fitted to (scored in-sample, alpha near 1 always wins, as it
maps every channel onto the range it happened to reach, and on MiniLM it then lost accuracy). ``s = 1`` (no smoothing) is a candidate too: a group whose layers no alpha improves is
left as it is. Decisions are kept in ``model.plan.reports["smoothquant"]``. With ``region`` (a treatment of
``recognize-structure``) only the groups whose layers all lie in such regions are smoothed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import field
from typing import Any

import numpy as np

from qcompiler.assignment import is_float_activation, weight_spec
from qcompiler.calibration import METHODS, model_inputs
from qcompiler.calibration.observers import Observer, make_observer_factory
from qcompiler.errors import UserError
from qcompiler.ir import Graph, Model, Node, Value, fake_quantize
from qcompiler.ir.rewrite import insert_after_producer
from qcompiler.pass_manager import Pass, PassResult, register_pass
from qcompiler.targets import Target, get_target

from .structure import require_regions

DEFAULT_ALPHAS = tuple(round(0.05 * i, 2) for i in range(21))
Apply = Callable[[np.ndarray], None]  # folds a per-channel factor into a producer


# -- analysis: which layers share an input, and where 1/s can go -----------------------------------


def is_linear(node: Node) -> bool:
    """A MatMul ``X [..., K] x W [K, N]`` or Gemm (no transA) with a constant 2-D float weight."""
    if node.domain not in ("", "ai.onnx") or node.op_type not in ("MatMul", "Gemm") or len(node.inputs) < 2:
        return False
    x, w = node.inputs[0], node.inputs[1]
    if not is_float_activation(x) or w is None or w.const is None or w.const.dtype != np.float32 or w.const.ndim != 2:
        return False
    return node.op_type == "MatMul" or not node.attrs.get("transA", 0)


def weight_kn(node: Node) -> np.ndarray:
    """The layer's weight as ``[K, N]`` (input channels first)."""
    w = node.inputs[1].const
    return w.T if node.op_type == "Gemm" and node.attrs.get("transB", 0) else w


def find_groups(graph: Graph) -> list[tuple[Value, list[Node]]]:
    """``(X, layers)`` for every activation X read (as input 0) by at least one linear layer."""
    groups: dict[int, tuple[Value, list[Node]]] = {}
    for node in graph:
        if is_linear(node):
            x = node.inputs[0]
            groups.setdefault(id(x), (x, []))[1].append(node)
    return [(x, layers) for x, layers in groups.values()
            if len({weight_kn(layer).shape[0] for layer in layers}) == 1]


def folding(graph: Graph, x: Value, readers: list[Node]) -> tuple[Apply | None, str]:
    """How ``x / s`` can be produced without a new op: a function applying ``1/s``, or None and why."""
    others = sorted({n.op_type for n, _ in x.uses() if n not in readers})
    if others:
        return None, f"also read by {', '.join(others)}"
    if any(v is x for v in graph.outputs):
        return None, "is a graph output"
    return _producer_folding(graph, x)


def _producer_folding(graph: Graph, x: Value) -> tuple[Apply | None, str]:
    node = x.producer()
    if node is None:
        return None, "is a graph input"
    if node.domain not in ("", "ai.onnx") or len(node.outputs) != 1:
        return None, f"produced by {node.op_type}"
    op, inputs = node.op_type, node.inputs
    if op == "LayerNormalization":
        consts = [v for v in inputs[1:] if v is not None]
        if any(v.const is None or v.const.ndim != 1 for v in consts):
            return None, "produced by a LayerNormalization with non-constant or multi-axis scale/bias"
        def gamma_beta(inv: np.ndarray) -> None:
            for index in range(1, len(inputs)):
                if inputs[index] is not None:
                    _scale_input(graph, node, index, inv)
        return gamma_beta, ""
    if op in ("Mul", "Div", "Add"):
        positions = [i for i, v in enumerate(inputs) if v is not None and v.const is not None]
        if len(positions) != 1 or (op == "Div" and positions != [1]):
            return None, f"produced by a {op} without exactly one constant operand"
        c = positions[0]
        rank = len(x.shape) if x.shape is not None else None
        if rank is None or inputs[c].const.ndim > rank:
            return None, f"produced by a {op} whose constant may change the output's rank"
        if op == "Mul":
            return (lambda inv: _scale_input(graph, node, c, inv)), ""
        if op == "Div":
            return (lambda inv: _scale_input(graph, node, c, 1.0 / inv)), ""
        source = inputs[1 - c]
        if any(v is source for v in graph.outputs) or len(source.uses()) != 1:
            return None, "produced by an Add whose other operand has other readers"
        inner, reason = _producer_folding(graph, source)
        if inner is None:
            return None, f"produced by an Add of a constant to a value {reason}"
        return (lambda inv: (_scale_input(graph, node, c, inv), inner(inv))), ""
    if op in ("MatMul", "Gemm") and is_linear(node):
        def columns(inv: np.ndarray) -> None:
            transposed = op == "Gemm" and node.attrs.get("transB", 0)
            _scale_input(graph, node, 1, inv[:, None] if transposed else inv)
            if op == "Gemm" and len(inputs) > 2 and inputs[2] is not None and inputs[2].const is not None:
                _scale_input(graph, node, 2, inv)
        if op == "Gemm" and len(inputs) > 2 and inputs[2] is not None and inputs[2].const is None:
            return None, "produced by a Gemm with a non-constant bias"
        return columns, ""
    return None, f"produced by {op}"


def _scale_input(graph: Graph, node: Node, index: int, factor: np.ndarray) -> None:
    """Replace the constant input ``index`` of ``node`` by ``const * factor`` (a new initializer)."""
    old = node.inputs[index]
    array = (old.const.astype(np.float64) * factor).astype(old.const.dtype)
    new = graph.add_initializer(Value(graph.unique_name(f"{old.name}_smoothed"), const=array))
    node.set_input(index, new)
    graph.drop_initializer(old)


# -- statistics and the alpha search ---------------------------------------------------------------


class ChannelSample(Observer):
    """Per-channel ``max|x|`` over the last axis, and up to ``rows`` rows of fit and of held-out feeds.

    ``update`` is called once per feed (as :func:`qcompiler.calibration.collect` does); feed ``i`` is
    held out when ``i % holdout == holdout - 1``. ``fit_absmax`` covers the other feeds only.
    """

    def __init__(self, rows: int, holdout: int) -> None:
        super().__init__()
        self.rows, self.holdout, self.feeds = rows, holdout, 0
        self.absmax: np.ndarray | None = None
        self.fit_absmax: np.ndarray | None = None
        self.samples: dict[bool, list[np.ndarray]] = {False: [], True: []}

    def update(self, array: Any) -> None:
        values = np.asarray(array, np.float32)
        values = values.reshape(-1, values.shape[-1])
        held = self.feeds % self.holdout == self.holdout - 1
        self.feeds += 1
        peak = np.abs(values).max(axis=0)
        self.absmax = peak if self.absmax is None else np.maximum(self.absmax, peak)
        if not held:
            self.fit_absmax = peak if self.fit_absmax is None else np.maximum(self.fit_absmax, peak)
        kept = sum(len(rows) for rows in self.samples[held])
        if kept < self.rows:
            self.samples[held].append(values[: self.rows - kept].copy())

    def sample(self, held: bool) -> np.ndarray:
        """The kept rows of held-out (or fit) feeds; the fit rows when no feed was held out."""
        rows = self.samples[held] or self.samples[False]
        return np.concatenate(rows)


def smoothing_scales(act_max: np.ndarray, weight_max: np.ndarray, alpha: float) -> np.ndarray:
    """``s_j = max|X_j|^alpha / max|W_j|^(1-alpha)`` (eq. 4), 1 where either maximum is 0."""
    act, weight = act_max.astype(np.float64), weight_max.astype(np.float64)
    valid = (act > 0) & (weight > 0)
    scales = np.power(np.where(valid, act, 1.0), alpha) / np.power(np.where(valid, weight, 1.0), 1.0 - alpha)
    return np.where(valid, np.maximum(scales, 1e-5), 1.0)


def layer_error(x: np.ndarray, fit: np.ndarray, weights: list[np.ndarray], scales: np.ndarray, target: Target,
                method: str, references: list[np.ndarray] | None = None) -> float:
    """``sum ||X W - Q_a(X / s) Q_w(s W)||²`` over the layers' ``[K, N]`` weights.

    ``Q_a``'s range is what ``method`` reads off the rows ``fit / s``; the error is measured on ``x``.
    ``references``: the products ``X W`` when already computed (they do not depend on ``s``).
    """
    inverse = (1.0 / scales).astype(np.float32)
    observer = make_observer_factory(method)("x")
    observer.update(fit * inverse)
    lo, hi = observer.compute_range()
    x_hat = fake_quantize(x * inverse, target.activation_scheme.spec_from_range(lo, hi))
    error = 0.0
    for index, w in enumerate(weights):
        scaled = w * scales[:, None].astype(np.float32)
        w_hat = fake_quantize(scaled, weight_spec(scaled, 1, target))
        reference = references[index] if references is not None else x @ w
        error += float(np.square(reference - x_hat @ w_hat).sum(dtype=np.float64))
    return error


# -- the pass --------------------------------------------------------------------------------------


@register_pass("smoothquant")
class SmoothQuant(Pass):
    """Divide activation channels by s and multiply the weights that read them by s (SmoothQuant)."""

    preserves_semantics = True
    idempotent = False

    data: Any = None
    alpha: float | None = None
    alphas: list[float] = field(default_factory=lambda: list(DEFAULT_ALPHAS))
    explicit: bool = False
    method: str = "mse"
    rows: int = 512
    holdout: int = 4
    target: str = "x86-avx2"
    region: str = ""

    def requires(self, model: Model) -> None:
        require_regions(self, model, self.region)
        if self.data is None:
            raise UserError("smoothquant: no calibration data given (--calib DIR or a '@calibration' resource)")
        if self.method not in METHODS:
            raise UserError(f"smoothquant: unknown method {self.method!r}; choose one of {', '.join(METHODS)}")
        if self.holdout < 2:
            raise UserError(f"smoothquant: holdout must be >= 2 (every n-th feed held out), not {self.holdout}")
        grid = [self.alpha] if self.alpha is not None else list(self.alphas)
        if not grid or any(not 0.0 <= a <= 1.0 for a in grid):
            raise UserError(f"smoothquant: alpha values must lie in [0, 1], got {grid}")

    def call(self, model: Model) -> PassResult:
        from qcompiler.calibration import open_calibration
        from qcompiler.calibration.staged import collect_model

        target = get_target(self.target)
        graph = model.graph
        report: list[dict[str, Any]] = []
        plans = []
        for x, layers in find_groups(graph):
            if self.region and not all(model.plan.in_region(n, self.region) for n in layers):
                continue
            apply, reason = folding(graph, x, layers)
            if apply is None and not self.explicit:
                report.append({"input": x.name, "layers": [n.name for n in layers], "skipped": reason})
                continue
            plans.append((x, layers, apply, reason))
        if not plans:
            model.plan.reports["smoothquant"] = report
            return PassResult(model, False)
        data = open_calibration(self.data, model_inputs(model))
        stats = collect_model(model, [x.name for x, *_ in plans], data,
                              lambda name: ChannelSample(self.rows, self.holdout))
        changed = False
        for x, layers, apply, reason in reversed(plans):  # consumers before producers: weights read are current
            stat = stats[x.name]
            entry = {"input": x.name, "layers": [n.name for n in layers]}
            if stat.absmax is None:
                report.append({**entry, "skipped": "no calibration values"})
                continue
            scales, entry["alpha"], entry["error_ratio"] = self._choose(stat, layers, target)
            if scales is None:
                report.append({**entry, "skipped": "no alpha lowers the quantized layers' error"})
                continue
            for layer in layers:
                transposed = layer.op_type == "Gemm" and layer.attrs.get("transB", 0)
                _scale_input(graph, layer, 1, scales if transposed else scales[:, None])
            if apply is not None:
                apply(1.0 / scales)
            else:
                insert_mul(graph, x, layers, 1.0 / scales)
                entry["explicit_mul"] = reason
            report.append(entry)
            changed = True
        model.plan.reports["smoothquant"] = report
        return PassResult(model, changed)

    def _choose(self, stat: ChannelSample, layers: list[Node], target: Target) -> tuple[np.ndarray | None, Any, float]:
        """The scales to apply (None: leave the group), the alpha, and error(alpha) / error(no smoothing).

        Each alpha is scored on rows of held-out feeds with scales from the other feeds' maxima, so
        an alpha that only fits the calibration rows (alpha near 1 normalizes every channel to the
        range it happened to reach) is not rewarded; the chosen alpha's scales use every feed.
        """
        weights = [weight_kn(layer).astype(np.float32) for layer in layers]
        weight_max = np.max([np.abs(w).max(axis=1) for w in weights], axis=0)
        held, fit = stat.sample(True), stat.sample(False)
        fit_max = stat.fit_absmax if stat.fit_absmax is not None else stat.absmax
        references = [held @ w for w in weights]
        error = lambda scales: layer_error(held, fit, weights, scales, target, self.method, references)  # noqa: E731
        baseline = max(error(np.ones(held.shape[-1])), 1e-30)
        if self.alpha is not None:
            return smoothing_scales(stat.absmax, weight_max, self.alpha), self.alpha, \
                error(smoothing_scales(fit_max, weight_max, self.alpha)) / baseline
        best_error, best_alpha = baseline, None
        for alpha in self.alphas:
            candidate = error(smoothing_scales(fit_max, weight_max, alpha))
            if candidate < best_error:
                best_error, best_alpha = candidate, alpha
        if best_alpha is None:
            return None, None, 1.0
        return smoothing_scales(stat.absmax, weight_max, best_alpha), best_alpha, best_error / baseline


def insert_mul(graph: Graph, x: Value, layers: list[Node], inverse: np.ndarray) -> None:
    """``Mul(x, 1/s)`` right after x's producer, read by ``layers`` only."""
    factor = graph.add_initializer(Value(graph.unique_name(f"{x.name}_smooth_scale"), const=inverse.astype(np.float32)))
    out = Value(graph.unique_name(f"{x.name}_smoothed"), x.dtype, x.shape)
    mul = Node("Mul", [x, factor], [out], name=graph.unique_name(f"{x.name}_SmoothMul"))
    insert_after_producer(graph, x, mul)
    for layer in layers:
        layer.set_input(0, out)
