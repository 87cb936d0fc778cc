"""``weight-awq``: activation-aware weight-only quantization (Lin et al. 2024): per-input-channel scales
searched on calibration activations, then a weight-clipping search. The algorithm and its equations:
``qcompiler.weight_only.awq``.

Layers that read the same activation share one scale. ``1/s`` is folded into the activation's producer
where SmoothQuant's folding can (a LayerNormalization, a Mul by a constant, a linear layer's columns:
``passes/smoothquant.py``'s ``folding``), else it becomes an explicit ``Mul`` read by those layers only. A
weight changed by such a fold gets its spec again; layers without samples keep round to nearest.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from qcompiler.errors import UserError
from qcompiler.ir import Model, Node, Scheme, Value
from qcompiler.pass_manager import Pass, PassResult, register_pass
from qcompiler.weight_only.activations import sample_inputs
from qcompiler.weight_only.awq import GRID, clipped, input_scale
from qcompiler.weight_only.layers import WeightLayer, calibrated_groups, find_layers, quantized_layers, rtn, scheme_of

from .smoothquant import insert_mul, folding


def require_data(name: str, data: Any, max_tokens: int) -> None:
    if data is None:
        raise UserError(f"{name}: needs calibration data (--calib DIR of .npz feeds); the rtn and hqq methods "
                        "need none")
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        raise UserError(f"{name}: max_tokens must be a positive count, not {max_tokens!r}")


@register_pass("weight-awq")
class WeightAWQ(Pass):
    """AWQ input scales and clipping for every weight-only layer with calibration samples."""

    data: Any = None
    max_tokens: int = 1024
    grid: int = GRID
    clip: bool = True
    needs = ("plan",)

    def requires(self, model: Model) -> None:
        require_data("weight-awq", self.data, self.max_tokens)

    def call(self, model: Model) -> PassResult:
        model.plan.reports.setdefault("weight_only", {})["method"] = "awq"
        graph = model.graph
        schemes: dict[Node, Scheme] = {n: scheme_of(layer.spec()) for layer in quantized_layers(model)
                                       for n in layer.nodes}
        groups = calibrated_groups(model)
        samples = sample_inputs(model, list(groups), self.data, self.max_tokens) if groups else {}
        found: list[tuple[Value, list[WeightLayer], np.ndarray]] = []
        for x, group in groups.items():
            if samples[x].size:
                scheme = schemes[group[0].nodes[0]]
                found.append((x, group, input_scale(samples[x], [layer.matrix() for layer in group], scheme,
                                                    self.grid)))
        by_node: dict[Node, tuple[np.ndarray, np.ndarray]] = {}
        for x, group, s in found:
            readers = [node for layer in group for node in layer.nodes]
            by_node.update((node, (s, samples[x] / s)) for node in readers)
            if np.all(s == 1.0):
                continue
            apply, _ = folding(graph, x, readers)
            if apply is not None:
                apply(1.0 / s)
            else:
                insert_mul(graph, x, readers, 1.0 / s)
        for layer in find_layers(model):  # again: folds may have given weights new values
            if layer.nodes[0] not in schemes:
                continue
            scheme, w = schemes[layer.nodes[0]], layer.matrix()
            if layer.nodes[0] in by_node:
                s, x = by_node[layer.nodes[0]]
                w = w * s[:, None]
                layer.store(*(clipped(w, x, scheme) if self.clip else rtn(w, scheme)))
            else:
                layer.store(w, rtn(w, scheme)[1])
        return PassResult(model, bool(found))
