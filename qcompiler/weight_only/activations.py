"""Samples of the tokens each weight layer multiplies, from calibration data, with bounded memory.

AWQ and GPTQ need the inputs ``X`` (tokens x K) of every MatMul/Gemm they quantize. The float model runs
in onnxruntime over the calibration feeds with those activations exposed as outputs
(:func:`qcompiler.calibration.collect`, which also bounds the activations held per feed); each one is
flattened to rows of its last dimension and a uniform random sample of at most ``max_tokens`` rows is kept
(a deterministic seed): memory is ``max_tokens · K · 4`` bytes per input, whatever the amount of data.
Inputs are float-model activations for every layer (the layers are not quantized one after the other). A
model whose weights exceed :data:`~qcompiler.calibration.staged.STAGED_ABOVE` runs in stages of a few
layers each (:mod:`qcompiler.calibration.staged`): one session never holds the whole LLM.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from ..ir import Model, Value


class TokenSample:
    """A uniform random sample of at most ``max_tokens`` rows of everything it is given (the collect
    observer protocol: ``update(array)``)."""

    def __init__(self, max_tokens: int, seed: int = 0) -> None:
        self.max_tokens = max_tokens
        self.rng = np.random.default_rng(seed)
        self.rows: list[np.ndarray] = []
        self.weights: list[float] = []  # how many tokens each kept row stands for, per chunk
        self.seen = 0

    def update(self, array: Any) -> None:
        x = np.asarray(array, np.float32)
        x = x.reshape(-1, x.shape[-1]) if x.ndim > 1 else x.reshape(1, -1)
        self.seen += len(x)
        take = min(len(x), self.max_tokens)
        self.rows.append(x[np.sort(self.rng.choice(len(x), take, replace=False))] if take < len(x) else x.copy())
        self.weights.append(len(x) / take)
        if sum(len(r) for r in self.rows) > 2 * self.max_tokens:
            self._reduce()

    def _reduce(self) -> None:
        """Resample the rows kept so far, each chunk in proportion to the tokens it stands for."""
        rows = np.concatenate(self.rows)
        p = np.concatenate([np.full(len(r), w) for r, w in zip(self.rows, self.weights, strict=True)])
        keep = np.sort(self.rng.choice(len(rows), self.max_tokens, replace=False, p=p / p.sum()))
        self.rows, self.weights = [rows[keep]], [self.seen / self.max_tokens]

    def tokens(self) -> np.ndarray:
        """The sampled rows, ``[tokens, K]`` float32."""
        if sum(len(r) for r in self.rows) > self.max_tokens:
            self._reduce()
        return np.concatenate(self.rows) if self.rows else np.zeros((0, 0), np.float32)


def sample_inputs(model: Model, values: list[Value], data: Any, max_tokens: int) -> dict[Value, np.ndarray]:
    """``{value: [tokens, K] sample}`` of the float activations ``values`` over the calibration ``data``."""
    return dict(iter_samples(model, values, data, max_tokens))


def iter_samples(model: Model, values: list[Value], data: Any, max_tokens: int) -> Iterator[tuple[Value, np.ndarray]]:
    """``(value, [tokens, K] sample)`` of each of ``values``; a model past memory
    (:func:`~qcompiler.calibration.staged.needs_stages`) is run stage by stage and each sample comes as soon
    as the stages that produce and read its value have run, so a pass that rewrites the weights reading it
    and drops it holds one stage's samples at a time, not the whole model's."""
    from ..calibration import model_inputs, open_calibration
    from ..calibration.staged import collect_model, needs_stages, observe_in_stages

    names = [v.name for v in values]
    by_name = {v.name: v for v in values}
    source = open_calibration(data, model_inputs(model))

    def sample(name: str) -> TokenSample:
        return TokenSample(max_tokens, seed=len(name))

    if needs_stages(model):
        for completed in observe_in_stages(model, names, source, sample):
            for name, observer in completed.items():
                yield by_name[name], observer.tokens()
        return
    samples = collect_model(model, names, source, sample)
    for name in names:
        yield by_name[name], samples.pop(name).tokens()
