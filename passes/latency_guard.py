"""The latency guard: quantize only when the quantized model is actually faster.

int8 is not always faster. On x86 without VNNI, a MobileNetV3-style network whose convolutions are
separated by float hardswish activations spends more time in DequantizeLinear/QuantizeLinear and
layout transposes than the integer convolutions save (PP-OCR's direction classifier: 0.47x of FP32
with every convolution quantized, measured by ``benchmarks/compare_quantizers.py``). A tiny model
(the digits networks, 0.1 ms) pays the per-op overhead of Q/DQ with nothing to gain.

``keep-float-reference`` keeps the float model (after canonicalization) aside as a
:class:`~qcompiler.ir.SavedModel` (serialized, or past 256 MB a scratch file with external data, so a
large model is not held twice in memory), which is what onnxruntime needs; ``latency-guard``,
at the end of the pipeline, measures both in onnxruntime on one calibration feed (its first sample
when a float run of the whole feed takes over a second: ``qcompiler.latency.latency_feed``; the two models
alternate over ``rounds`` rounds, each round at least ``runs`` runs and ``min_seconds / rounds`` per model,
``threads`` intra-op threads, 0 = onnxruntime's default; the median of all runs counts) and,
when the quantized model is not at least ``min_speedup`` times as fast, restores the float model.
The 5 % margin keeps a model whose speed is within measurement noise of float in float; a result
within 10 % of the margin is measured again on twice as many runs, so that close calls are decided on
more runs (a shared 2-core VM drifts by 10 % and more between seconds). The decision and both latencies are
kept in ``model.plan.reports["latency_guard"]``; the compile command prints them.
"""

from __future__ import annotations

from typing import Any

from qcompiler.calibration import model_inputs, open_calibration
from qcompiler.ir import Model, SavedModel, onnxruntime_model
from qcompiler.latency import latency_feed, measure_latencies
from qcompiler.pass_manager import Pass, PassResult, register_pass


def restore(model: Model, saved: SavedModel, where: str) -> None:
    """Replace ``model`` by the float model ``saved`` (``keep-float-reference``, ``keep-original-model``):
    no specs, a plan for the same target that quantizes nothing, the kept references and reports."""
    model.update_from(saved.load(where))
    for value in model.graph.values():
        value.quant = None
    model.plan.start(model.plan.target)


@register_pass("keep-float-reference")
class KeepFloatReference(Pass):
    """Keep the float model aside for later comparison (latency guard, analysis)."""

    provides = ("float-reference",)

    def call(self, model: Model) -> PassResult:
        model.plan.float_reference = SavedModel(model)
        return PassResult(model, False)


@register_pass("latency-guard")
class LatencyGuard(Pass):
    """Restore the float model when the quantized one is not faster in onnxruntime."""

    data: Any = None
    threads: int = 0  # onnxruntime's default: one per physical core
    runs: int = 3
    rounds: int = 2
    min_seconds: float = 0.04
    min_speedup: float = 1.05
    idempotent = False
    needs = ("float-reference",)
    invalidates = ("float-reference",)  # used up: the reference is dropped (or restored as the model)

    def call(self, model: Model) -> PassResult:
        reference = model.plan.float_reference
        model.plan.float_reference = None
        feed = next(iter(open_calibration(self.data, model_inputs(model))))
        feed, whole_feed_seconds = latency_feed(reference.source, feed, threads=self.threads)
        with onnxruntime_model(model) as quantized_model:
            models = [reference.source, quantized_model]
            floating, quantized = measure_latencies(models, feed, threads=self.threads, runs=self.runs,
                                                    min_seconds=self.min_seconds, rounds=self.rounds)
            speedup = floating.median_ms / quantized.median_ms
            if abs(speedup - self.min_speedup) < 0.1:  # close call: measure again, on twice as many runs
                floating, quantized = measure_latencies(models, feed, threads=self.threads, runs=self.runs,
                                                        min_seconds=2 * self.min_seconds, rounds=2 * self.rounds)
                speedup = floating.median_ms / quantized.median_ms
        keep = speedup >= self.min_speedup
        model.plan.reports["latency_guard"] = {"float_ms": floating.median_ms, "int8_ms": quantized.median_ms,
                                               "speedup": speedup, "kept": "int8" if keep else "float",
                                               "first_sample_only": whole_feed_seconds is not None}
        if keep:
            return PassResult(model, False)
        restore(model, reference, "float reference")
        return PassResult(model, True)
