"""Mixed precision: keep in float the layers whose quantization costs more accuracy than allowed.

``keep-original-model`` (first in the pipeline, before canonicalization) stores the input model as
serialized bytes. ``mixed-precision`` runs after calibration, on the all-int8 assignment, and picks
the set of layers that stay int8 (see ``qcompiler.sensitivity`` for layers, configurations and the
error measures). The threshold ``T`` is a budget on the output error of the whole model against the
original FP32 model on ``samples`` calibration feeds, simulated in onnxruntime:

    E = mean over outputs o of ||Ŷ_o - Y_o||² / ||Y_o||²     (the relative squared error, "nsr")

so ``T = 0.005`` allows an output SQNR of 23 dB (cosine similarity about ``1 - T/2``), the
recommended start; with a ``metric`` callback ``E`` is the callback's error instead. The search is
greedy by sensitivity, as in Quark's auto mixed precision and Neural Compressor's fallback tuning,
with about two evaluations per layer:

1. every layer is evaluated quantized alone (its sensitivity) and the layers are sorted by it
   (least sensitive first, ties in graph order);
2. the path of configurations that switch them to int8 one by one in that order is evaluated, from
   all float to all int8;
3. of every configuration evaluated, and the original model (error 0), those with ``E <= T`` are
   feasible, and the smallest one as the compiler writes it (then the one with the most int8 nodes,
   then the fewest 16-bit layers, then the smallest error) is kept: the best configuration found.
   Size, not the count of int8 layers, is what is compared: quantizing a layer of a few hundred
   weights adds scales, zero points and Q/DQ nodes that outweigh what it saves.
4. with 16-bit activations allowed (A16W8, which NPU toolchains offer for the layers int8 cannot keep:
   the activations a layer reads get 16 bits over their observed extremes, its weights stay int8; see
   :func:`search_wide`): every layer is evaluated alone with 16-bit activations, the others float (its
   16-bit sensitivity); the path that gives the layers 16 bits one by one, in the order of that error
   per weight taken out of float (a knapsack's greedy order: many weights for little error first, layers
   without weights last), is evaluated and its feasible configuration with the most 16-bit layers
   taken; then the path that turns those layers to int8 one by one, least int8-sensitive first. Of
   everything evaluated, the feasible configuration with the fewest float weights is kept (then the
   fewest 16-bit layers, then the smallest error): float, then 16 bits, then int8 is the order of
   preference the threshold buys down, so the compressed weights come first and the integer kernels
   next. Size is not the first key here: a 16-bit layer keeps a float bias where an int8 one stores
   int32 with per-channel scales, so the bytes would prefer 16 bits to int8.

No evaluation depends on ``T``, so a larger ``T`` only adds feasible configurations and the kept
model never grows: sizes are monotone in the threshold. With ``T = 0`` only configurations with
bit-identical outputs are feasible, in practice only the original model: the input is given back,
not its canonical form (folding BatchNormalization, for one, rounds the weights differently), so
``T = 0`` gives back the float model exactly. The latency guard's fallback is set to the original
model too. The decision, the sensitivities and the path (error, size and int8 parameters of each
configuration: the accuracy/size curve) are kept in ``model.plan.reports["mixed_precision"]``. Step 4
depends on ``T``: it runs in the pass, for its threshold only.

The search is here; ``keep-original-model`` and ``mixed-precision`` are the passes that run it, and
``qcompiler analyze`` runs it for every threshold it reports.
"""

from __future__ import annotations

import math
from typing import Any

from .sensitivity import Configuration, Evaluation, Evaluator, layer_sensitivity

RECOMMENDED_THRESHOLD = 0.005


def choose(evaluator: Evaluator, layers: list[str], measure: str, threshold: float, original_size: int | None
           ) -> Evaluation | None:
    """Step 3 of the module docstring, over the configurations ``evaluator`` has evaluated (after
    :func:`explore`; None: the original model). Evaluates nothing new, so one :func:`explore` serves
    every threshold."""
    feasible = [e for e in evaluator.cache.values() if e.errors[measure] <= threshold]
    best = min(feasible, key=lambda e: (e.size, -len(e.quantized_nodes), len(e.wide_layers), e.errors[measure]),
               default=None)
    if original_size is not None and (best is None or original_size < best.size):
        return None
    return best or evaluator.evaluate(layers)


def explore(evaluator: Evaluator, layers: list[str], measure: str
            ) -> tuple[list[dict[str, Any]], dict[str, dict[str, Any]]]:
    """Steps 1 and 2 of the module docstring, which do not depend on the threshold: (the path, the
    sensitivities)."""
    sensitivity = layer_sensitivity(evaluator, layers, both=False)
    position = {name: i for i, name in enumerate(layers)}
    order = sorted(layers, key=lambda n: (sensitivity[n]["quantized_alone"][measure], position[n]))
    evaluations = evaluator.evaluate_all([layers] + [order[k:] for k in range(1, len(order) + 1)])
    path = [{"int8": name, **_record(evaluator, evaluation)} for name, evaluation in zip(["none", *order], evaluations)]
    return path, sensitivity


def _record(evaluator: Evaluator, evaluation: Evaluation) -> dict[str, Any]:
    params = sum(evaluator.weights.get(name, 0) for name in evaluation.quantized_nodes)
    return {"errors": evaluation.errors, "size": evaluation.size, "int8_params": params}


def search_wide(evaluator: Evaluator, layers: list[str], measure: str, threshold: float,
                sensitivity: dict[str, dict[str, Any]]) -> tuple[Evaluation | None, list[dict[str, Any]]]:
    """Step 4 of the module docstring (after :func:`explore`, whose ``sensitivity`` orders the int8 path):
    (the configuration kept, None when none is feasible; the two paths evaluated)."""
    everything = frozenset(layers)
    position = {name: i for i, name in enumerate(layers)}
    alone = evaluator.evaluate_all([Configuration(everything - {name}, frozenset({name})) for name in layers])
    error = {name: evaluation.errors[measure] for name, evaluation in zip(layers, alone)}
    weights = evaluator.weights

    def cost(name: str) -> tuple[float, float, int]:  # error per weight taken out of float: a greedy knapsack
        return (error[name] / weights[name] if weights.get(name) else math.inf, error[name], position[name])

    order = sorted(layers, key=cost)
    widened = evaluator.evaluate_all([Configuration(everything - set(order[:k]), frozenset(order[:k]))
                                      for k in range(1, len(order) + 1)])
    path = [{"int16": name, **_record(evaluator, e)} for name, e in zip(order, widened)]
    feasible = [k for k, e in enumerate(widened, 1) if e.errors[measure] <= threshold]
    if feasible:
        wide = order[:max(feasible)]
        to_int8 = sorted(wide, key=lambda name: (sensitivity[name]["quantized_alone"][measure], position[name]))
        narrowed = evaluator.evaluate_all([Configuration(everything - set(wide), frozenset(to_int8[k:]))
                                           for k in range(1, len(to_int8) + 1)])
        path += [{"int8": name, **_record(evaluator, e)} for name, e in zip(to_int8, narrowed)]
    candidates = [e for e in evaluator.cache.values() if e.errors[measure] <= threshold]

    def float_weights(evaluation: Evaluation) -> int:
        return sum(evaluator.weights.get(name, 0) for name in everything - evaluation.quantized_nodes)

    best = min(candidates, key=lambda e: (float_weights(e), len(e.wide_layers), e.errors[measure]), default=None)
    return best, path
