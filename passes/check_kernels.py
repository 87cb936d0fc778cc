"""Check the deployed integer kernels against the simulation, and avoid the saturation trap.

A QDQ model is calibrated and judged in float (``DequantizeLinear`` -> float op -> ``QuantizeLinear``,
what a simulator computes), but deployed as onnxruntime's fused integer kernels. On x86 without VNNI
those add u8 x s8 products pairwise into a saturating int16; with full-range (8-bit) weights the
pairs overflow and accuracy can collapse (PP-OCR-style MobileNet: 97 % simulated, 81 % deployed;
``../shared/research/anchors-tools.md`` section 4.2). On the first ``samples`` calibration feeds this
pass runs

* ``simulate``: the QDQ graph as written, in float (the executor, :mod:`qcompiler.executor`);
* ``exact``: onnxruntime's fused kernels with exact int32 accumulation (the executor);
* the target: the same with the target's accumulation (the executor, ``x86-avx2`` pair saturation);
  the compile target, or ``deploy`` (e.g. a model compiled for VNNI that must also run on AVX2);
* onnxruntime itself, natively, when the target is this machine's CPU.

It reports the SQNR of each against the simulation (over all float outputs) and, when the target is
this machine, the share of output elements where the executor equals onnxruntime. The target's
kernels *diverge* when their error against the simulation is at least twice the exact kernels' error
(``>= 3 dB`` worse SQNR). Then, with ``fix``, the weights of the fused u8 x s8 convolutions and
matrix products that can saturate (``|w| > 64``; not depthwise convolutions with one weight zero
point, which MLAS computes exactly) are requantized to 7 bits (``[-64, 63]``, the reduced range:
``2 * 255 * 64 < 32767``), their int32 biases rescaled to the new weight scales, and the check is run
again. Everything measured is kept in ``model.plan.reports["check_kernels"]``; ``qcompiler compile`` prints it.

The executor holds every dequantized weight in float while it simulates (and prepared integer copies
for the kernels), about three times the float model; a model whose dequantized weights exceed
``max_float_weight_bytes`` (2 GiB) is not checked (the report says so), so that a compile of a model
past 2 GB stays within the memory the model itself needs.

A target whose kernels accumulate exactly in int32 (``x86-vnni``, ``arm64``) cannot diverge by this
definition (its error *is* the exact kernels' error), so the check is skipped there: it would only cost
three runs of the model (5.5 s of an 11.6 s compile of PP-OCRv4's detector). With ``region`` (a
treatment of ``recognize-structure``) it is skipped as well when no quantized layer lies in such a region:
the ``auto`` pipeline checks the convolutional treatment, as ``int8`` does, and not a transformer alone,
as ``int8-transformer`` does not. ``qcompiler run
--compare-ort`` and ``qcompiler analyze`` still compare such a model's kernels with the simulation.
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import numpy as np
from onnx import TensorProto

from qcompiler.calibration import model_inputs
from qcompiler.executor.fusion import saturating_units
from qcompiler.ir import Model, Scheme, Value, quantize
from qcompiler.ir.quant import broadcast_param, dequantize_values, quantize_bias, spec_of_qdq
from qcompiler.ops import lookup
from qcompiler.pass_manager import Pass, PassResult, register_pass
from qcompiler.targets import detect_target, get_target

from .structure import require_regions

MIN_DIVERGENCE_DB = 3.0


def _float_outputs(outputs: dict[str, np.ndarray]) -> np.ndarray:
    arrays = [np.asarray(a) for a in outputs.values()]
    parts = [a.astype(np.float64).ravel() for a in arrays if np.issubdtype(a.dtype, np.floating)]
    return np.concatenate(parts) if parts else np.zeros(0)


def _run(model: Model, profile: str, feeds: list[dict]) -> np.ndarray:
    from qcompiler.executor import Interpreter

    interpreter = Interpreter(model, profile=profile)
    return np.concatenate([_float_outputs(interpreter.run(feed)) for feed in feeds])


def _reduce_range(model: Model, fusion) -> None:
    """Requantize ``fusion``'s weight to 7 bits and rescale its int32 bias (new initializers)."""
    graph = model.graph
    weight = fusion.dequantize[1]
    w, scale = weight.inputs[0].const, weight.inputs[1].const.astype(np.float32)
    axis = weight.attrs.get("axis", 1) if scale.size > 1 else None
    real = dequantize_values(w, broadcast_param(scale, w.shape, axis, None), None, np.float64)
    scheme = Scheme(TensorProto.INT8, symmetric=True, granularity="tensor" if axis is None else "axis",
                    reduce_range=True)
    spec = scheme.spec_for(real, axis)
    base = weight.inputs[0].name
    weight.set_input(0, graph.add_initializer(Value(graph.unique_name(base + "_7bit"), const=quantize(real, spec))))
    weight.set_input(1, graph.add_initializer(Value(graph.unique_name(base + "_7bit_scale"),
                                                    const=spec.scale.reshape(scale.shape))))
    bias = fusion.dequantize[2] if len(fusion.dequantize) > 2 else None
    if bias is not None and bias.inputs[0].const is not None:
        old_bias_scale = bias.inputs[1].const.astype(np.float64)
        real_bias = bias.inputs[0].const.astype(np.float64) * old_bias_scale
        new_bias, new_bias_scale = quantize_bias(real_bias, spec_of_qdq(fusion.dequantize[0]), spec)
        name = bias.inputs[0].name
        bias.set_input(0, graph.add_initializer(Value(graph.unique_name(name + "_7bit"), const=new_bias)))
        bias.set_input(1, graph.add_initializer(Value(graph.unique_name(name + "_7bit_scale"),
                                                      const=new_bias_scale.reshape(old_bias_scale.shape))))
    graph.remove_unused_initializers()


def _dequantized_weight_bytes(model: Model) -> int:
    """Bytes of the float32 weights the simulation computes: every constant read by a DequantizeLinear."""
    return sum(4 * node.inputs[0].const.size for node in model.graph
               if node.op_type == "DequantizeLinear" and node.inputs[0].const is not None)


@register_pass("check-kernels")
class CheckKernels(Pass):
    """Compare simulation, the target's integer kernels and onnxruntime; fix int16 saturation."""

    data: Any = None
    samples: int = 2
    fix: bool = True
    deploy: str = ""  # the target whose kernels are checked; default: the compile target
    max_float_weight_bytes: int = 2 << 30
    region: str = ""  # check only when a quantized layer lies in this treatment's regions
    idempotent = True
    needs = ("plan", "qdq")

    def requires(self, model: Model) -> None:
        require_regions(self, model, self.region)

    def _measure(self, model: Model, feeds: list[dict], target) -> dict:
        from qcompiler.executor.agreement import run_onnxruntime, sqnr_db

        simulated = _run(model, "simulate", feeds)
        exact = _run(model, "exact", feeds)
        deployed = _run(model, target.name, feeds)
        report = {"samples": len(feeds), "exact_sqnr_db": sqnr_db(simulated, exact),
                  "target_sqnr_db": sqnr_db(simulated, deployed)}
        report["diverges"] = report["target_sqnr_db"] < report["exact_sqnr_db"] - MIN_DIVERGENCE_DB
        if detect_target().name == target.name:
            onnxruntime = np.concatenate([_float_outputs(run_onnxruntime(model, feed)) for feed in feeds])
            report["onnxruntime_sqnr_db"] = sqnr_db(simulated, onnxruntime)
            report["onnxruntime_equal"] = float(np.mean(onnxruntime == deployed)) if deployed.size else 1.0
        return report

    def call(self, model: Model) -> PassResult:
        from qcompiler.calibration import open_calibration

        target = get_target(self.deploy) if self.deploy else model.plan.target
        if target.accumulation == "exact":
            model.plan.reports["check_kernels"] = {"target": target.name, "skipped": "exact int32 accumulation, no saturation"}
            return PassResult(model, False)
        if self.region and not any(model.plan.in_region(n, self.region) for n in model.plan.layers
                                   if lookup(n).role == "layer"):
            model.plan.reports["check_kernels"] = {"target": target.name,
                                                   "skipped": f"no quantized layer in a {self.region} region"}
            return PassResult(model, False)
        simulated = _dequantized_weight_bytes(model)
        if simulated > self.max_float_weight_bytes:
            model.plan.reports["check_kernels"] = {
                "target": target.name, "skipped": f"the simulation would hold {simulated / 2**30:.1f} GiB of "
                f"dequantized weights (over {self.max_float_weight_bytes / 2**30:.1f} GiB)"}
            return PassResult(model, False)
        feeds = list(itertools.islice(iter(open_calibration(self.data, model_inputs(model))), self.samples))
        report = {"target": target.name, **self._measure(model, feeds, target)}
        modified = False
        if report["diverges"] and self.fix:
            units = saturating_units(model)
            for fusion in units:
                _reduce_range(model, fusion)
            modified = bool(units)
            report["requantized_7bit"] = [f.target.name for f in units]
            report["after"] = self._measure(model, feeds, target)
        model.plan.reports["check_kernels"] = {k: (str(v) if isinstance(v, float) and math.isinf(v) else v)
                                       for k, v in report.items()}
        return PassResult(model, modified)
