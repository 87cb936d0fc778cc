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
again. Everything measured is kept in ``model.meta["check_kernels"]``; ``qcompiler compile`` prints it.

A target whose kernels accumulate exactly in int32 (``x86-vnni``, ``arm64``) cannot diverge by this
definition (its error *is* the exact kernels' error), so the check is skipped there: it would only cost
three runs of the model (5.5 s of an 11.6 s compile of PP-OCRv4's detector). ``qcompiler run
--compare-ort`` and ``qcompiler analyze`` still compare such a model's kernels with the simulation.
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import numpy as np
from onnx import TensorProto

from qcompiler.errors import PreconditionError
from qcompiler.ir import Model, QuantSpec, Value, channel_shape
from qcompiler.pass_manager import Pass, PassResult, register_pass
from qcompiler.targets import detect_target, get_target

from .calibrate import model_inputs

MIN_DIVERGENCE_DB = 3.0
SAFE_WEIGHT = 64  # 2 * 255 * 64 = 32640 fits an int16 pair sum


def _float_outputs(outputs: dict[str, np.ndarray]) -> np.ndarray:
    arrays = [np.asarray(a) for a in outputs.values()]
    parts = [a.astype(np.float64).ravel() for a in arrays if np.issubdtype(a.dtype, np.floating)]
    return np.concatenate(parts) if parts else np.zeros(0)


def _run(model: Model, profile: str, feeds: list[dict]) -> np.ndarray:
    from qcompiler.executor import Interpreter

    interpreter = Interpreter(model, profile=profile)
    return np.concatenate([_float_outputs(interpreter.run(feed)) for feed in feeds])


def saturating_units(model: Model) -> list:
    """Fused u8 x s8 units whose constant weights can overflow an int16 pair."""
    from qcompiler.executor.fusion import find_fusions

    units = []
    for fusion in find_fusions(model):
        domain, kernel = fusion.kernel
        if kernel not in ("QLinearConv", "QLinearMatMul", "QGemm", "MatMulIntegerToFloat"):
            continue
        activation = fusion.dequantize[0]
        weight = fusion.dequantize[1] if len(fusion.dequantize) > 1 else None
        if weight is None or activation.inputs[2].dtype != TensorProto.UINT8 or weight.inputs[0].const is None:
            continue
        w, zero = weight.inputs[0].const, weight.inputs[2].const
        if w.dtype != np.int8 or np.any(zero != 0) or np.abs(w.astype(np.int32)).max() <= SAFE_WEIGHT:
            continue
        if kernel == "QLinearConv" and w.shape[1] == 1 and w.shape[0] == fusion.target.attrs.get("group", 1):
            continue  # depthwise, one weight zero point: MLAS's exact depthwise kernel
        units.append(fusion)
    return units


def _reduce_range(model: Model, fusion) -> None:
    """Requantize ``fusion``'s weight to 7 bits and rescale its int32 bias (new initializers)."""
    graph = model.graph
    weight = fusion.dequantize[1]
    w, scale = weight.inputs[0].const, weight.inputs[1].const.astype(np.float32)
    axis = weight.attrs.get("axis", 1) if scale.size > 1 else None
    shape = channel_shape(w.ndim, axis)
    real = w.astype(np.float64) * scale.reshape(shape)
    reduce_axes = tuple(i for i in range(w.ndim) if i != axis) if axis is not None else None
    spec = QuantSpec.from_range(real.min(axis=reduce_axes), real.max(axis=reduce_axes), TensorProto.INT8,
                                symmetric=True, axis=axis, reduce_range=True)
    new_scale = spec.scale.reshape(scale.shape)
    new_w = np.clip(np.rint(real / new_scale.reshape(shape)), -SAFE_WEIGHT, SAFE_WEIGHT - 1).astype(np.int8)
    base = weight.inputs[0].name
    weight.set_input(0, graph.add_initializer(Value(graph.unique_name(base + "_7bit"), const=new_w)))
    weight.set_input(1, graph.add_initializer(Value(graph.unique_name(base + "_7bit_scale"), const=new_scale)))
    bias = fusion.dequantize[2] if len(fusion.dequantize) > 2 else None
    if bias is not None and bias.inputs[0].const is not None:
        old_bias_scale = bias.inputs[1].const.astype(np.float64)
        x_scale = float(fusion.dequantize[0].inputs[1].const)
        new_bias_scale = (np.float32(x_scale) * new_scale).astype(np.float32)
        real_bias = bias.inputs[0].const.astype(np.float64) * old_bias_scale
        new_bias = np.clip(np.rint(real_bias / new_bias_scale), -2**31, 2**31 - 1).astype(np.int32)
        name = bias.inputs[0].name
        bias.set_input(0, graph.add_initializer(Value(graph.unique_name(name + "_7bit"), const=new_bias)))
        bias.set_input(1, graph.add_initializer(Value(graph.unique_name(name + "_7bit_scale"),
                                                      const=new_bias_scale.reshape(old_bias_scale.shape))))
    graph.remove_unused_initializers()


@register_pass("check-kernels")
class CheckKernels(Pass):
    """Compare simulation, the target's integer kernels and onnxruntime; fix int16 saturation."""

    data: Any = None
    samples: int = 2
    fix: bool = True
    deploy: str = ""  # the target whose kernels are checked; default: the compile target
    idempotent = True

    def requires(self, model: Model) -> None:
        if "target" not in model.meta:
            raise PreconditionError("check-kernels needs assign-precision earlier in the pipeline (the target)")

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

        target = get_target(self.deploy) if self.deploy else model.meta["target"]
        if target.accumulation == "exact":
            model.meta["check_kernels"] = {"target": target.name, "skipped": "exact int32 accumulation, no saturation"}
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
        model.meta["check_kernels"] = {k: (str(v) if isinstance(v, float) and math.isinf(v) else v)
                                       for k, v in report.items()}
        return PassResult(model, modified)
