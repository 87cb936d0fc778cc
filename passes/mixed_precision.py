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
   then the smallest error) is kept: the best configuration found. Size, not the count of int8
   layers, is what is compared: quantizing a layer of a few hundred weights adds scales, zero
   points and Q/DQ nodes that outweigh what it saves.

No evaluation depends on ``T``, so a larger ``T`` only adds feasible configurations and the kept
model never grows: sizes are monotone in the threshold. With ``T = 0`` only configurations with
bit-identical outputs are feasible, in practice only the original model: the input is given back,
not its canonical form (folding BatchNormalization, for one, rounds the weights differently), so
``T = 0`` gives back the float model exactly. The latency guard's fallback is set to the original
model too. The decision, the sensitivities and the path (error, size and int8 parameters of each
configuration: the accuracy/size curve) are kept in ``model.meta["mixed_precision"]``.
"""

from __future__ import annotations

from dataclasses import field
from itertools import islice
from typing import Any

from qcompiler.errors import UserError
from qcompiler.ir import Model, to_proto
from qcompiler.pass_manager import Pass, PassResult, register_pass
from qcompiler.sensitivity import (Evaluation, Evaluator, error_measures, layer_sensitivity, name_nodes,
                                   quantizable_layers)
from qcompiler.targets import TARGETS, Target

from .calibrate import model_inputs
from .latency_guard import restore

RECOMMENDED_THRESHOLD = 0.005


@register_pass("keep-original-model")
class KeepOriginalModel(Pass):
    """Keep the input model, serialized, as the exact float reference (``mixed-precision``)."""

    def call(self, model: Model) -> PassResult:
        model.meta["original_model"] = to_proto(model).SerializeToString()
        return PassResult(model, False)


@register_pass("mixed-precision")
class MixedPrecision(Pass):
    """Keep int8 only the layers that fit the output-error budget ``threshold`` (greedy by sensitivity)."""

    data: Any = None
    threshold: float = RECOMMENDED_THRESHOLD
    samples: int = 8
    metric: Any = None
    target: str = "x86-avx2"
    exclude: list[str] = field(default_factory=list)
    per_channel: bool = True
    float_linear_outputs: bool = False
    idempotent = False

    def requires(self, model: Model) -> None:
        if self.data is None:
            raise UserError("mixed-precision: no calibration data given (--calib DIR or a '@calibration' resource)")
        if not self.threshold >= 0:
            raise UserError(f"mixed-precision: the threshold must be >= 0, not {self.threshold}")
        if self.samples < 1:
            raise UserError(f"mixed-precision: samples must be >= 1, not {self.samples}")

    def target_of(self, model: Model) -> Target:
        """The target ``assign-precision`` put on ``model``, else the one this pass names."""
        return model.meta.get("target") or TARGETS[self.target]

    def layers(self, model: Model) -> list[str]:
        """The layers of ``model`` (after ``assign-precision``, nodes named by :func:`name_nodes`)."""
        return quantizable_layers(model, self.target_of(model).int8_ops)

    def feeds(self, model: Model) -> list[dict]:
        """The first ``samples`` calibration feeds: the ones the error is measured on."""
        from qcompiler.calibration import open_calibration

        return [feed for _, feed in islice(open_calibration(self.data, model_inputs(model)).items(), self.samples)]

    def evaluator(self, model: Model) -> Evaluator:
        """The :class:`Evaluator` of the calibrated ``model`` on :meth:`feeds`, against the original model
        when ``keep-original-model`` ran (``qcompiler analyze`` uses it too)."""
        target = self.target_of(model)
        return Evaluator.from_calibrated(
            model, self.feeds(model), exclude=self.exclude, reference_model=model.meta.get("original_model"), metric=self.metric,
            assign_options={"target": target, "per_channel": self.per_channel and target.per_channel,
                            "float_linear_outputs": self.float_linear_outputs})

    def call(self, model: Model) -> PassResult:
        renamed = name_nodes(model)
        layers = self.layers(model)
        if not layers:
            return PassResult(model, renamed)
        evaluator = self.evaluator(model)
        original = model.meta.get("original_model")
        measure = "metric" if self.metric is not None else "nsr"
        best, path, sensitivity = self.search(evaluator, layers, measure, original and len(original))
        quantized = best.quantized_nodes if best is not None else frozenset()
        model.meta["mixed_precision"] = {
            "threshold": self.threshold, "measure": measure, "samples": len(evaluator.feeds),
            "layers": {name: {"precision": "int8" if name in quantized else "float", **sensitivity.get(name, {})}
                       for name in layers},
            "path": path, "evaluations": evaluator.evaluations,
            "predicted": best.errors if best is not None else error_measures(evaluator.reference, evaluator.reference)}
        if original is not None and "float_reference" in model.meta:
            model.meta["float_reference"] = original
        if best is not None and best.quantized_nodes == evaluator.evaluate(()).quantized_nodes:
            return PassResult(model, renamed)
        if best is not None:
            model.graph = evaluator.build(best.float_layers).graph
        else:
            restore(model, original, "original model")
        return PassResult(model, True)

    def search(self, evaluator: Evaluator, layers: list[str], measure: str, original_size: int | None
               ) -> tuple[Evaluation | None, list[dict[str, Any]], dict[str, dict[str, Any]]]:
        """(the configuration kept, None for the original model; the path; sensitivities): see the module docstring."""
        path, sensitivity = explore(evaluator, layers, measure)
        return self.choose(evaluator, layers, measure, original_size), path, sensitivity

    def choose(self, evaluator: Evaluator, layers: list[str], measure: str, original_size: int | None
               ) -> Evaluation | None:
        """Step 3 of the module docstring, over the configurations ``evaluator`` has evaluated (after
        :func:`explore`; None: the original model). Evaluates nothing new, so one :func:`explore`
        serves every threshold."""
        feasible = [e for e in evaluator.cache.values() if e.errors[measure] <= self.threshold]
        best = min(feasible, key=lambda e: (e.size, -len(e.quantized_nodes), e.errors[measure]), default=None)
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
    path = [{"int8": "none", **_record(evaluator, evaluator.evaluate(layers))}]
    for k, name in enumerate(order, 1):
        path.append({"int8": name, **_record(evaluator, evaluator.evaluate(order[k:]))})
    return path, sensitivity


def _record(evaluator: Evaluator, evaluation: Evaluation) -> dict[str, Any]:
    params = sum(evaluator.weights.get(name, 0) for name in evaluation.quantized_nodes)
    return {"errors": evaluation.errors, "size": evaluation.size, "int8_params": params}
