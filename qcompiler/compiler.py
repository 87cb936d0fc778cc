"""``qcompiler.compile``: FP32 ONNX model + calibration data -> QDQ int8 ONNX model.

The Python API behind ``qcompiler compile``. It resolves the pipeline (the named ``int8`` pipeline by
default, or a TOML file whose passes may name the ``@calibration`` resource), runs it with
verification after every pass, and writes the result atomically without touching the input.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from typing import Any

from . import ir
from .errors import UserError
from .pass_manager import Instrument, PassManager
from .pipelines import resolve


def compile(  # noqa: A001 - the natural name of the API
    model: str | os.PathLike | ir.Model,
    output: str | os.PathLike | None = None,
    *,
    calib: Any,
    pipeline: str = "int8",
    target: str = "auto",
    calibration: str = "mse",
    percentile: float = 99.999,
    per_tensor: bool = False,
    exclude: Sequence[str] = (),
    objective: str = "latency",
    threads: int = 0,
    sensitivity_threshold: float | None = None,
    metric: Any = None,
    instruments: Iterable[Instrument] = (),
    verify: str | None = None,
) -> ir.Model:
    """Quantize ``model`` and return it (and write it to ``output`` when given).

    Args:
        model: an ONNX file or an IR model (which is modified in place).
        output: where to write the quantized model (atomically), or None.
        calib: calibration data: a directory of ``.npz`` files (keys = input names), one ``.npz``,
            an iterable of feed dicts, or an onnxruntime ``CalibrationDataReader``.
        pipeline: a named pipeline or a TOML pipeline file.
        target: ``auto`` (this CPU) or a target name from ``qcompiler.targets.TARGETS``.
        calibration: ``mse`` (default), ``minmax``, ``percentile`` or ``entropy``. MSE was the most
            accurate on the realmodels set (OCR recognizer line accuracy 0.920 vs 0.867 min/max,
            0.857 percentile, 0.000 entropy; see the benchmarks README).
        percentile: the percentile for ``calibration="percentile"``.
        per_tensor: per-tensor instead of per-channel weights.
        exclude: node names (shell patterns) or op types to keep in float.
        objective: ``latency`` keeps int8 only when onnxruntime runs it faster than float on this
            machine; ``size`` always keeps int8 (about 4x smaller weights).
        threads: onnxruntime intra-op threads for the latency comparison; 0 = onnxruntime's default
            (one per physical core). int8 wins at 2 threads can turn into losses at 16 (measured on
            ocr_det_ppocrv4 on a 16-core VNNI Xeon: 1.2x at 2 threads, 0.93x at 16), so measure with
            the thread count the model will be deployed with.
        sensitivity_threshold: keep in float the layers that do not fit this output-error budget: the
            mean over outputs of the relative squared error ``||Ŷ - Y||² / ||Y||²`` against the input
            model on calibration feeds (0: outputs bit-identical to the input model; 0.005, the
            recommended start, is an output SQNR of 23 dB); None: every layer int8. See
            ``qcompiler.passes.mixed_precision``.
        metric: with ``sensitivity_threshold``, an error callback ``metric(reference, outputs) -> float``
            (lists per feed of lists per output of arrays; 0 = identical) that the budget applies to instead.
        instruments: extra PassManager instruments (progress, timing, dumps).
        verify: IR verification mode; default: what the pipeline asks for ("each").
    """
    resources = {"calibration": calib, "target": target, "method": calibration, "percentile": percentile,
                 "per_tensor": per_tensor, "exclude": tuple(exclude), "objective": objective,
                 "threads": threads, "sensitivity_threshold": sensitivity_threshold, "metric": metric}
    if objective not in ("latency", "size"):
        raise UserError(f"objective must be 'latency' or 'size', not {objective!r}")
    resolved = resolve(pipeline, resources)
    if not isinstance(model, ir.Model):
        model = ir.load(model)
    PassManager(resolved.passes, instruments=instruments, verify=verify or resolved.verify)(model)
    if output is not None:
        ir.save(model, output)
    return model
