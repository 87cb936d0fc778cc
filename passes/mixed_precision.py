"""``keep-original-model`` and ``mixed-precision``: keep in float the layers whose quantization costs
more accuracy than the threshold allows, or give them 16-bit activations (the search and its rules:
``qcompiler.mixed_precision``)."""

from __future__ import annotations

from dataclasses import field
from itertools import islice
from typing import Any

from qcompiler.calibration import model_inputs
from qcompiler.errors import UserError
from qcompiler.ir import Model, SavedModel
from qcompiler.mixed_precision import RECOMMENDED_THRESHOLD, choose, explore, search_wide
from qcompiler.pass_manager import Pass, PassResult, register_pass
from qcompiler.sensitivity import Evaluation, Evaluator, error_measures, name_nodes, quantizable_layers

from .latency_guard import restore
from .structure import require_regions


@register_pass("keep-original-model")
class KeepOriginalModel(Pass):
    """Keep the input model aside as the exact float reference (``mixed-precision``)."""

    def call(self, model: Model) -> PassResult:
        model.plan.original_model = SavedModel(model)
        return PassResult(model, False)


@register_pass("mixed-precision")
class MixedPrecision(Pass):
    """Keep int8 only the layers that fit the output-error budget ``threshold`` (greedy by sensitivity);
    ``int16``: the others may take 16-bit activations before float (None: where the target runs them fast)."""

    data: Any = None
    threshold: float = RECOMMENDED_THRESHOLD
    samples: int = 8
    metric: Any = None
    exclude: list[str] = field(default_factory=list)
    per_channel: bool = True
    float_linear_outputs: bool = False
    region: str = ""  # as assign-precision's: float linear outputs only in this treatment's regions
    int16: bool | None = None
    idempotent = False
    needs = ("plan", "ranges")

    def requires(self, model: Model) -> None:
        if self.data is None:
            raise UserError("mixed-precision: no calibration data given (--calib DIR or a '@calibration' resource)")
        if not self.threshold >= 0:
            raise UserError(f"mixed-precision: the threshold must be >= 0, not {self.threshold}")
        if self.samples < 1:
            raise UserError(f"mixed-precision: samples must be >= 1, not {self.samples}")
        require_regions(self, model, self.region)

    def layers(self, model: Model) -> list[str]:
        """The layers of ``model`` (after ``assign-precision``, nodes named by :func:`name_nodes`)."""
        return quantizable_layers(model)

    def feeds(self, model: Model) -> list[dict]:
        """The first ``samples`` calibration feeds: the ones the error is measured on."""
        from qcompiler.calibration import open_calibration

        return [feed for _, feed in islice(open_calibration(self.data, model_inputs(model)).items(), self.samples)]

    def evaluator(self, model: Model) -> Evaluator:
        """The :class:`Evaluator` of the calibrated ``model`` on :meth:`feeds`, against the original model
        when ``keep-original-model`` ran (``qcompiler analyze`` uses it too)."""
        target = model.plan.target
        return Evaluator.from_calibrated(
            model, self.feeds(model), exclude=self.exclude, reference_model=model.plan.original_model,
            metric=self.metric,
            assign_options={"target": target, "per_channel": self.per_channel and target.per_channel,
                            "float_linear_outputs": self.float_linear_outputs, "region": self.region})

    def call(self, model: Model) -> PassResult:
        renamed = name_nodes(model)
        layers = self.layers(model)
        if not layers:
            return PassResult(model, renamed)
        evaluator = self.evaluator(model)
        original = model.plan.original_model
        measure = "metric" if self.metric is not None else "nsr"
        best, path, sensitivity = self.search(evaluator, layers, measure, original and original.nbytes,
                                              self.wide(model))
        model.plan.reports["mixed_precision"] = {
            "threshold": self.threshold, "measure": measure, "samples": len(evaluator.feeds),
            "layers": {name: {"precision": layer_precision(best, name), **sensitivity.get(name, {})} for name in layers},
            "path": path, "evaluations": evaluator.evaluations,
            "predicted": best.errors if best is not None else error_measures(evaluator.reference, evaluator.reference)}
        if original is not None and model.plan.float_reference is not None:
            model.plan.float_reference = original
        if best is not None and not best.wide_layers \
                and best.quantized_nodes == evaluator.evaluate(()).quantized_nodes:
            return PassResult(model, renamed)
        if best is not None:
            built = evaluator.build(best.configuration)
            built.plan.reports, built.plan.float_reference = model.plan.reports, model.plan.float_reference
            model.graph, model.plan = built.graph, built.plan
        else:
            restore(model, original, "original model")
        return PassResult(model, True)

    def wide(self, model: Model) -> bool:
        """Whether layers may take 16-bit activations: ``int16``, or where the target runs them fast."""
        return self.int16 if self.int16 is not None else model.plan.target.wide_activations == "fast"

    def search(self, evaluator: Evaluator, layers: list[str], measure: str, original_size: int | None,
               wide: bool = False) -> tuple[Evaluation | None, list[dict[str, Any]], dict[str, dict[str, Any]]]:
        """(the configuration kept, None for the original model; the path, with the 16-bit one when ``wide``;
        sensitivities): see ``qcompiler.mixed_precision``."""
        path, sensitivity = explore(evaluator, layers, measure)
        if not wide:
            return self.choose(evaluator, layers, measure, original_size), path, sensitivity
        best, wide_path = search_wide(evaluator, layers, measure, self.threshold, sensitivity)
        return best, path + wide_path, sensitivity

    def choose(self, evaluator: Evaluator, layers: list[str], measure: str, original_size: int | None
               ) -> Evaluation | None:
        """The configuration this pass keeps among those evaluated (``qcompiler.mixed_precision.choose``)."""
        return choose(evaluator, layers, measure, self.threshold, original_size)


def layer_precision(chosen: Evaluation | None, layer: str) -> str:
    """``int8``, ``int16`` (16-bit activations, int8 weights) or ``float``: ``layer``'s in the configuration
    kept (None: the original model)."""
    if chosen is None or layer not in chosen.quantized_nodes:
        return "float"
    return "int16" if layer in chosen.wide_layers else "int8"
