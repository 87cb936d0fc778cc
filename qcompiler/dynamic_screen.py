"""Which linear layers dynamic int8 would spoil: the typical token's output SQNR, measured on calibration data.

Dynamic int8 quantizes a linear layer's input with one range per run (``DynamicQuantizeLinear``: uint8 over
``[min(x, 0), max(x, 0)]`` of the whole tensor). Transformer encoders carry a few outlier values, large
in a few channels of a few tokens (the separator, the first token), a hundred times the median and more
(Bondarenko et al. 2021, "Understanding and Overcoming the Challenges of Efficient Transformer
Quantization", find them at the inputs of BERT's FFN output projections; Sun et al. 2024, "Massive
Activations in Large Language Models"). They set the range of the whole run: the step grows past most
other tokens' values, which round to the zero point, so those tokens' outputs are mostly error. The
layer's SQNR over the whole tensor hides it, because the outlier tokens dominate its energy.

So each layer is measured per token. Over the first ``feeds`` calibration feeds, for up to ``rows``
rows ``x`` of each feed (tokens: the input's last axis holds the K input channels), sampled evenly,
the relative output error

    e(x) = ||Q(x) Ŵ - x W||² / ||x W||²

is taken, with ``Q`` the run's dynamic quantization (its range from the whole feed's tensor) and ``Ŵ`` the
weight quantized by its dynamic spec. The median of ``e`` over all sampled rows is the typical token's
error, and ``-10 log10`` of it the *token SQNR*; a layer below the threshold stays float.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Callable
from typing import Any

import numpy as np

from .assignment import dynamic_weight_spec
from .calibration import Observer, model_inputs, open_calibration
from .calibration.staged import collect_model
from .ir.external_data import release_pages
from .ir import Model, Node, Scheme, fake_quantize
from .ops import lookup
from .targets import Target


class TokenError(Observer):
    """Per-row relative output errors of the linear layers reading one activation, feed by feed; ``weights``
    gives a layer's ``(W, Ŵ)`` as ``[K, N]`` and the stored weight when asked (not held: an LLM's weights would
    not fit twice; the pages read of a memory-mapped one are released after use)."""

    def __init__(self, weights: list[Callable[[], tuple[np.ndarray, np.ndarray, np.ndarray]]], scheme: Scheme,
                 rows: int) -> None:
        super().__init__()
        self.weights, self.scheme, self.rows = weights, scheme, rows
        self.errors: list[list[np.ndarray]] = [[] for _ in weights]

    def update(self, array: Any) -> None:
        x = np.asarray(array, np.float32)
        spec = self.scheme.spec_for(x)  # the run's range: the whole tensor's
        rows = x.reshape(-1, x.shape[-1])
        sample = rows[::max(1, len(rows) // self.rows)][: self.rows]
        quantized = fake_quantize(sample, spec)
        for errors, pair in zip(self.errors, self.weights):
            w, w_hat, stored = pair()
            y = sample @ w
            energy = np.einsum("ij,ij->i", y, y)
            error = quantized @ w_hat - y
            kept = energy > 0
            errors.append(np.einsum("ij,ij->i", error, error)[kept] / energy[kept])
            release_pages(stored)

    def token_sqnr_db(self) -> list[float]:
        """Per layer: ``-10 log10`` of the median relative error over the sampled rows (inf when exact)."""
        result = []
        for errors in self.errors:
            median = float(np.median(np.concatenate(errors))) if errors and sum(map(len, errors)) else 0.0
            result.append(math.inf if median <= 0 else -10.0 * math.log10(median))
        return result


def token_sqnr(model: Model, layers: list[Node], data: Any, target: Target, per_channel: bool,
               feeds: int = 2, rows: int = 256) -> dict[Node, float]:
    """The token SQNR (dB, see the module docstring) of each of ``layers`` under ``target``'s dynamic int8,
    measured on the first ``feeds`` feeds of the calibration ``data`` in one onnxruntime pass over the
    float model (stage by stage when it is past memory)."""
    readers: dict[str, list[Node]] = {}
    for node in layers:
        readers.setdefault(node.inputs[0].name, []).append(node)

    def pair(node: Node) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        stored = node.inputs[lookup(node).weight_input].const
        weight = np.asarray(stored, np.float32)
        w_hat = fake_quantize(weight, dynamic_weight_spec(node, target, per_channel))
        transposed = node.op_type == "Gemm" and node.attrs.get("transB", 0)  # as [K, N]
        return (weight.T, w_hat.T, stored) if transposed else (weight, w_hat, stored)

    def observer(name: str) -> TokenError:
        return TokenError([functools.partial(pair, node) for node in readers[name]], target.dynamic_activation_scheme,
                          rows)

    first = [feed for _, feed in itertools.islice(open_calibration(data, model_inputs(model)).items(), feeds)]
    observers = collect_model(model, list(readers), first, observer)
    return {node: db for name, nodes in readers.items()
            for node, db in zip(nodes, observers[name].token_sqnr_db())}
