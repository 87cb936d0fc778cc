"""AdaRound: learn whether each weight rounds up or down, layer by layer (Nagel et al. 2020, "Up or Down?
Adaptive Rounding for Post-Training Quantization", ICML, arXiv:2004.10568).

Rounding every weight to the nearest grid point minimizes the weight error, not the layer's output
error. AdaRound keeps the scale ``s`` of the weight's spec and chooses ``floor`` or ``floor + 1`` for
every weight by minimizing the output error on calibration data (eq. 21 and 25)::

    argmin_V  || f_a(W x + b) - f_a(W~ x^ + b) ||_F^2 + lambda sum_ij (1 - |2 h(V_ij) - 1|^beta)
    W~ = s clip(floor(W / s) + h(V), -q, q),   h(V) = clip(sigmoid(V) (zeta - gamma) + gamma, 0, 1)

with ``zeta = 1.1``, ``gamma = -0.1`` (the rectified sigmoid, eq. 23), ``x`` the layer's input in the float
model and ``x^`` its input in the quantized model (asymmetric reconstruction, eq. 25: the layer learns to
compensate the error of the quantized layers and activations before it), ``f_a`` the activation the
quantized layer absorbs (Relu, Clip; identity otherwise), ``lambda = 0.01`` and ``beta`` annealed from 20
to 2 after a warm-up of 20 % of the iterations without the regularizer. ``V`` starts where ``h(V)`` equals
the fractional part of ``W / s``; at the end every ``h`` is 0 or 1 and ``W~`` is stored.

The gradients are matrix products (no autodiff): with ``Y = W~ X^ + b``, ``R = f_a(Y) - f_a(W X + b)``
over a batch of ``B`` columns and ``m = 1[f_a'(Y) != 0]``::

    dL/dW~ = (2 / B) (R * m) X^T,     dW~/dV = s * 1[-q < W~/s < q] * h'(V),
    h'(V) = sigmoid(V)(1 - sigmoid(V))(zeta - gamma) where 0 < h < 1 (else 0)

and ``V`` follows Adam. A convolution is a matrix product over im2col patches: per group ``g``, ``W_g``
is ``[M/g, C/g * kh * kw]`` and a column is the patch under one output position. Each layer keeps
``samples`` columns (random output positions of the first ``max_feeds`` calibration feeds, the same
positions in the float and the quantized model) and optimizes on batches of ``batch`` of them.

``x^`` comes from the quantized model (the QDQ simulation in onnxruntime) with the layers before it
already adarounded, one run per layer, as in the paper. Taking every ``x^`` from one run with
nearest-rounded weights is cheaper but wrong: a layer then learns to compensate upstream rounding errors
that AdaRound removes (on digits_cnn at W4A8 that cost 7 points of accuracy). Every fourth sampled column
is held out; a layer whose held-out error AdaRound does not lower keeps nearest rounding.

The result is written as the weight ``s · W_int`` (exactly on the grid, so ``QuantizeLinear`` of
``insert-qdq`` and ``fold-quantized-weights`` reproduces ``W_int``); the spec is unchanged. Layers: Conv
(2-D, explicit pads), Gemm (``transA=0``, ``alpha=1``) and MatMul with a constant 2-D weight whose spec
is symmetric (per channel or per tensor), in the nodes ``assign-precision`` quantizes. Run it after
``calibrate`` (activation specs) and before ``insert-qdq``.
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import numpy as np

from qcompiler.calibration import model_inputs
from qcompiler.calibration.observers import Observer
from qcompiler.errors import UserError
from qcompiler.ir import Model, Node
from qcompiler.ir.plan import QuantPlan
from qcompiler.ir.quant import quantize_values
from qcompiler.layers import clip_bounds, grouped, is_layer, own_input, ungrouped
from qcompiler.lowering import lower
from qcompiler.pass_manager import Pass, PassResult, register_pass

ZETA, GAMMA = 1.1, -0.1


# -- the layers and their input columns ------------------------------------------------------------


def adaroundable(node: Node, plan: QuantPlan) -> str:
    """Why ``node`` cannot be adarounded ("" when it can)."""
    if not plan.is_quantized(node) or not is_layer(node):
        return "not a quantized layer with a constant weight"
    spec = node.inputs[1].quant
    if spec is None or not spec.symmetric or spec.block_size is not None:
        return "weight has no symmetric per-channel or per-tensor spec"
    if node.op_type == "Gemm" and node.attrs.get("alpha", 1.0) != 1.0:
        return "Gemm with alpha != 1"
    if node.op_type == "Conv" and (node.inputs[1].const.ndim != 4 or node.attrs.get("auto_pad", "NOTSET") != "NOTSET"):
        return "Conv that is not 2-D with explicit pads"
    return ""


class ColumnSample(Observer):
    """Input columns of one layer at seeded random output positions, ``per_feed`` of every feed.

    Conv: im2col patches, ``[groups, C/g * kh * kw, columns]``; Gemm/MatMul: rows of the input, ``[1, K, columns]``.
    Feed ``i`` uses ``default_rng((*seed, i))``, so the float and the quantized run sample the same positions.
    """

    def __init__(self, layer: Node, per_feed: int, seed: tuple[int, ...]) -> None:
        super().__init__()
        self.per_feed, self.seed, self.feeds = per_feed, seed, 0
        self.columns: list[np.ndarray] = []
        self.conv = layer.op_type == "Conv"
        if self.conv:
            kh, kw = layer.inputs[1].const.shape[2:]
            self.kernel, self.groups = (kh, kw), layer.attrs.get("group", 1)
            self.pads = list(layer.attrs.get("pads", [0, 0, 0, 0]))
            self.strides = list(layer.attrs.get("strides", [1, 1]))
            self.dilations = list(layer.attrs.get("dilations", [1, 1]))

    def update(self, array: Any) -> None:
        x = np.asarray(array, np.float32)
        rng = np.random.default_rng((*self.seed, self.feeds))
        self.feeds += 1
        self.columns.append(self._patches(x, rng) if self.conv else self._rows(x, rng))

    def _rows(self, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        rows = x.reshape(-1, x.shape[-1])
        picked = rng.choice(len(rows), min(self.per_feed, len(rows)), replace=False)
        return rows[np.sort(picked)].T[None]

    def _patches(self, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        (kh, kw), (top, left, bottom, right) = self.kernel, self.pads
        (sh, sw), (dh, dw) = self.strides, self.dilations
        padded = np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)))
        out_h = (padded.shape[2] - dh * (kh - 1) - 1) // sh + 1
        out_w = (padded.shape[3] - dw * (kw - 1) - 1) // sw + 1
        total = x.shape[0] * out_h * out_w
        flat = np.sort(rng.choice(total, min(self.per_feed, total), replace=False))
        n, rest = np.divmod(flat, out_h * out_w)
        oy, ox = np.divmod(rest, out_w)
        rows = oy[:, None] * sh + np.arange(kh)[None, :] * dh
        cols = ox[:, None] * sw + np.arange(kw)[None, :] * dw
        patches = padded[n[:, None, None, None], np.arange(x.shape[1])[None, :, None, None],
                         rows[:, None, :, None], cols[:, None, None, :]]  # [P, C, kh, kw]
        return patches.reshape(len(flat), self.groups, -1).transpose(1, 2, 0)

    def matrix(self) -> np.ndarray:
        return np.concatenate(self.columns, axis=2)


class SharedInputColumns(Observer):
    """The :class:`ColumnSample` of every layer that reads one tensor (a SqueezeNet fire module's 1x1 and 3x3
    expand convolutions read the same squeeze output, with different patch geometries)."""

    def __init__(self, layers: list[Node], per_feed: int, seeds: dict[int, tuple[int, ...]]) -> None:
        super().__init__()
        self.samples = {id(layer): ColumnSample(layer, per_feed, seeds[id(layer)]) for layer in layers}

    def update(self, array: Any) -> None:
        for sample in self.samples.values():
            sample.update(array)

    def matrix(self, layer: Node) -> np.ndarray:
        return self.samples[id(layer)].matrix()


# -- the optimization of one layer -----------------------------------------------------------------


def _rectified_sigmoid(v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``h(V)`` and ``dh/dV``."""
    sig = 1.0 / (1.0 + np.exp(-v))
    stretched = sig * (ZETA - GAMMA) + GAMMA
    inside = (stretched > 0) & (stretched < 1)
    return np.clip(stretched, 0.0, 1.0), np.where(inside, sig * (1 - sig) * (ZETA - GAMMA), 0.0)


def _product(w: np.ndarray, x: np.ndarray) -> np.ndarray:
    """``w @ x`` per group (``[g, m, k] x [g, k, b]``); depthwise weights (``m = 1``) without BLAS calls per group."""
    if w.shape[1] == 1 and w.shape[0] > 1:
        return np.einsum("gk,gkb->gb", w[:, 0], x)[:, None]
    return np.matmul(w, x)


def _outer(r: np.ndarray, x: np.ndarray) -> np.ndarray:
    """``r @ x^T`` per group (``[g, m, b] x [g, k, b] -> [g, m, k]``)."""
    if r.shape[1] == 1 and r.shape[0] > 1:
        return np.einsum("gb,gkb->gk", r[:, 0], x)[:, None]
    return np.matmul(r, x.transpose(0, 2, 1))


def adaround_weight(weight: np.ndarray, scale: np.ndarray, limit: np.ndarray, bias: np.ndarray,
                    x: np.ndarray, x_hat: np.ndarray, bounds: tuple[float, float], *, iterations: int, batch: int,
                    reg: float, learning_rate: float, warm_start: float, beta_range: tuple[float, float],
                    seed: int) -> np.ndarray:
    """The integer weight AdaRound chooses, grouped layout ``[g, M/g, K]``.

    ``scale`` and ``limit`` (the largest integer magnitude) broadcast as ``[g, M/g, 1]``, ``bias`` as
    ``[g, M/g, 1]``; ``x`` and ``x_hat`` are ``[g, K, P]`` input columns of the float and quantized models.
    The optimization runs in float32.
    """
    lo, hi = bounds
    w_scaled = weight / scale
    floor = np.floor(w_scaled).astype(np.float32)
    rest = np.clip(w_scaled - floor, 0.0, 1.0)
    p = np.clip((rest - GAMMA) / (ZETA - GAMMA), 1e-4, 1 - 1e-4)
    v = np.log(p / (1 - p)).astype(np.float32)  # h(V) = fractional part at the start
    scale32, limit32, bias32 = (a.astype(np.float32) for a in (scale, limit, bias))
    x_hat = x_hat.astype(np.float32)
    target = np.clip(_product(weight, x) + bias, lo, hi).astype(np.float32)
    m1, m2 = np.zeros_like(v), np.zeros_like(v)
    rng = np.random.default_rng(seed)
    columns = x.shape[2]
    warm = int(warm_start * iterations)
    for step in range(iterations):
        idx = rng.choice(columns, min(batch, columns), replace=False)
        h, dh = _rectified_sigmoid(v)
        integer = floor + h
        w_q = scale32 * np.clip(integer, -limit32, limit32)
        xb = x_hat[:, :, idx]
        y = _product(w_q, xb) + bias32
        residual = np.clip(y, lo, hi) - target[:, :, idx]
        residual *= (y > lo) & (y < hi)
        grad = _outer(residual, xb) * ((2.0 / len(idx)) * scale32) * ((integer > -limit32) & (integer < limit32))
        if step >= warm:
            relative = (step - warm) / max(iterations - warm, 1)
            beta = beta_range[1] + (beta_range[0] - beta_range[1]) * (1 - relative)
            centered = 2 * h - 1
            grad -= (2 * reg * beta) * np.abs(centered) ** (beta - 1) * np.sign(centered)
        grad *= dh
        m1 = 0.9 * m1 + 0.1 * grad
        m2 = 0.999 * m2 + 0.001 * grad * grad
        v -= (learning_rate / (1 - 0.9 ** (step + 1))) * m1 / (np.sqrt(m2 / (1 - 0.999 ** (step + 1))) + 1e-8)
    h, _ = _rectified_sigmoid(v)
    return np.clip(floor + (h >= 0.5), -limit, limit).astype(np.float64)


# -- the pass --------------------------------------------------------------------------------------


@register_pass("adaround")
class AdaRound(Pass):
    """Choose each weight's rounding direction to minimize its layer's output error (AdaRound)."""

    data: Any = None
    iterations: int = 500
    batch: int = 256
    samples: int = 2048
    reg: float = 0.01
    learning_rate: float = 0.01
    warm_start: float = 0.2
    beta_start: float = 20.0
    beta_end: float = 2.0
    max_feeds: int = 16
    seed: int = 0
    needs = ("plan", "ranges")

    def requires(self, model: Model) -> None:
        if self.data is None:
            raise UserError("adaround: no calibration data given (--calib DIR or a '@calibration' resource)")
        if min(self.iterations, self.batch, self.samples, self.max_feeds) < 1:
            raise UserError("adaround: iterations, batch, samples and max_feeds must be positive")

    def call(self, model: Model) -> PassResult:
        from qcompiler.calibration import open_calibration
        from qcompiler.calibration.staged import collect_model

        layers = [n for n in model.graph if not adaroundable(n, model.plan)]
        if not layers:
            return PassResult(model, False)
        data = [feed for _, feed in itertools.islice(open_calibration(self.data, model_inputs(model)).items(),
                                                     self.max_feeds)]
        per_feed = math.ceil(self.samples / len(data))
        seeds = {id(layer): (self.seed, index) for index, layer in enumerate(layers)}

        def sampler(by_input: dict[str, list[Node]]):
            return lambda name: SharedInputColumns(by_input[name], per_feed, seeds)

        float_inputs: dict[str, list[Node]] = {}
        for layer in layers:
            float_inputs.setdefault(layer.inputs[0].name, []).append(layer)
        x_float = collect_model(model, list(float_inputs), data, sampler(float_inputs))
        report = {}
        for layer in layers:  # in topological order, each seeing the layers before it adarounded
            trial = model.clone()
            copy = trial.graph.nodes[model.graph.index(layer)]  # the clone keeps the node order
            lower(trial, fold=False)
            quantized_input = copy.inputs[0].name
            x_hat = collect_model(trial, [quantized_input], data, sampler({quantized_input: [layer]}))
            before, after = self._round(model, layer, x_float[layer.inputs[0].name].matrix(layer),
                                        x_hat[quantized_input].matrix(layer))
            report[layer.name or f"{layer.op_type}@{model.graph.index(layer)}"] = {
                "error_nearest": before, "error_adaround": after}
        model.plan.reports["adaround"] = report
        return PassResult(model, True)

    def _round(self, model: Model, layer: Node, x: np.ndarray, x_hat: np.ndarray) -> tuple[float, float]:
        """Adaround ``layer``'s weight in place; the output MSE on the samples with nearest rounding and after."""
        weight_value = layer.inputs[1]
        spec = weight_value.quant
        g = grouped(layer).astype(np.float64)
        shape = (g.shape[0], g.shape[1], 1)
        weight = g.reshape(g.shape[0], g.shape[1], -1)
        scale = np.broadcast_to(np.asarray(spec.scale, np.float64).reshape(-1), (shape[0] * shape[1],)).reshape(shape)
        limit = quantize_values(np.abs(weight).max(axis=2, keepdims=True), scale, 0, np.int32).astype(np.float64)
        bias = _bias(layer, shape)
        bounds = _activation_bounds(layer, model.plan)
        fit, held = _split_columns(x.shape[2])
        x, x_hat = x.astype(np.float64), x_hat.astype(np.float64)
        integer = adaround_weight(weight, scale, limit, bias, x[:, :, fit], x_hat[:, :, fit], bounds,
                                  iterations=self.iterations, batch=self.batch, reg=self.reg,
                                  learning_rate=self.learning_rate, warm_start=self.warm_start,
                                  beta_range=(self.beta_start, self.beta_end), seed=self.seed)
        target = np.clip(_product(weight, x[:, :, held]) + bias, *bounds)

        def error(w_int: np.ndarray) -> float:
            y = np.clip(_product(scale * w_int, x_hat[:, :, held]) + bias, *bounds)
            return float(np.mean(np.square(y - target)))

        nearest = np.clip(quantize_values(weight, scale, 0, np.int32), -limit, limit)
        if error(integer) >= error(nearest):
            integer = nearest  # AdaRound over-fitted its columns: keep nearest rounding
        value = own_input(model.graph, layer, 1)
        value.const = ungrouped(layer, (scale * integer).reshape(g.shape).astype(np.float32))
        value.quant = spec
        return error(nearest), error(integer)


def _split_columns(count: int) -> tuple[np.ndarray, np.ndarray]:
    """(fit, held-out) column indices: every fourth column is held out (all columns fit when fewer than 8)."""
    held = np.arange(count) % 4 == 3
    if count < 8:
        return np.arange(count), np.arange(count)
    return np.flatnonzero(~held), np.flatnonzero(held)


def _bias(layer: Node, shape: tuple[int, int, int]) -> np.ndarray:
    if len(layer.inputs) < 3 or layer.inputs[2] is None:
        return np.zeros(shape)
    bias = layer.inputs[2].const.astype(np.float64) * layer.attrs.get("beta", 1.0)
    return np.broadcast_to(bias, (shape[0] * shape[1],)).reshape(shape)


def _activation_bounds(layer: Node, plan: QuantPlan) -> tuple[float, float]:
    """The clipping range of the activation the quantized layer absorbs (Relu, Clip), else unbounded."""
    consumers = layer.outputs[0].consumers()
    if len(consumers) == 1 and consumers[0] in plan.absorbed:
        bounds = clip_bounds(consumers[0])
        if bounds is not None:
            return bounds
    return -math.inf, math.inf
