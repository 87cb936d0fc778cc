"""``qcompiler.compile``: an FP32 ONNX model (+ calibration data) -> a quantized QDQ ONNX model.

The Python API behind ``qcompiler compile``. Its keyword options are the fields of
:class:`qcompiler.options.CompileOptions` (checked when given); it builds the pipeline once (the named
``auto`` pipeline by default, which chooses by the model's structure: ``dynamic`` for transformer-only
models, else ``int8-transformer``'s treatment in transformer blocks and ``int8``'s elsewhere; or a
TOML file whose passes may name ``"@name"`` resources), refuses
options the pipeline does not honour, runs it with verification after every pass, and writes the
result atomically without touching the input. Calibration data is checked against the model's
inputs before any pass runs.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from . import ir
from .calibration import check_calibration, model_inputs
from .errors import ModelSaveError
from .options import CompileOptions
from .pass_manager import Instrument, PassManager
from .pipelines import Pipeline, resolve
from .scaleout import executor_for, using


def check_output_path(source: str | os.PathLike | None, output: str | os.PathLike, overwrite: bool = False) -> None:
    """Refuse to write over the input unless asked, and check the output's directory exists and is writable."""
    target = Path(output)
    if source is not None and target.exists() and Path(source).exists() and os.path.samefile(source, target) \
            and not overwrite:
        raise ModelSaveError(f"{output}: is the input model; choose another output or pass --overwrite")
    if target.is_dir():
        raise ModelSaveError(f"{output}: is a directory, expected a file name")
    directory = target.parent
    if not directory.is_dir():
        raise ModelSaveError(f"{output}: directory {directory} does not exist")
    if not os.access(directory, os.W_OK):
        raise ModelSaveError(f"{output}: directory {directory} is not writable")


def compile(  # noqa: A001 - the natural name of the API
    model: str | os.PathLike | ir.Model,
    output: str | os.PathLike | None = None,
    *,
    pipeline: str | Pipeline = "auto",
    instruments: Iterable[Instrument] = (),
    verify: str | None = None,
    overwrite: bool = False,
    options: CompileOptions | None = None,
    executor: Any = None,
    **fields: Any,
) -> ir.Model:
    """Quantize ``model`` and return it (and write it to ``output`` when given).

    Args:
        model: an ONNX file or an IR model (which is modified in place).
        output: where to write the quantized model (atomically), or None. It may not be the input file
            unless ``overwrite``; its directory is checked before any work is done.
        pipeline: a named pipeline, a TOML pipeline file, or a pipeline already resolved.
        instruments: extra PassManager instruments (progress, timing, dumps).
        verify: IR verification mode; default: what the pipeline asks for ("each").
        overwrite: allow ``output`` to be the input file.
        options: the options as one object (the CLI's way); or give its fields as keywords:
        executor: where the parallel steps (calibration shares, sensitivity configurations) run: None or
            "local" (this process, as always), "auto" or a Ray address (``qcompiler.scaleout``), or an
            executor object. The output is the same byte for byte.
        **fields: the fields of :class:`~qcompiler.options.CompileOptions`: ``calib`` (calibration data:
            a directory of ``.npz`` files, one ``.npz``, an iterable of feed dicts or an onnxruntime
            ``CalibrationDataReader``), ``target``, ``calibration`` (the range method), ``percentile``,
            ``per_tensor``, ``exclude``, ``objective``, ``threads``, ``sensitivity_threshold``, ``metric``.
    """
    if options is not None and fields:
        raise TypeError("compile() takes options=CompileOptions(...) or its fields as keywords, not both")
    options = options or CompileOptions(**fields)
    if output is not None:
        check_output_path(None if isinstance(model, ir.Model) else model, output, overwrite)
    given = pipeline if isinstance(pipeline, Pipeline) else None
    if given is None:
        resolve(pipeline, options)  # options the pipeline does not take are refused before the model is read
    if not isinstance(model, ir.Model):
        model = ir.load(model)
    pipeline = given or resolve(pipeline, options, model.graph)  # a model-aware name chooses now
    if options.calib is not None:  # data that does not fit the model is refused before any work
        check_calibration(options.calib, model_inputs(model))
    with using(executor_for(executor)):
        PassManager(pipeline.passes, instruments=instruments, verify=verify or pipeline.verify)(model)
    if pipeline.reason:
        model.plan.reports["pipeline"] = {"name": pipeline.source, "chosen": pipeline.chosen, "reason": pipeline.reason}
    if output is not None:
        ir.save(model, output)
    return model
