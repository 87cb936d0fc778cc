"""Quantization-aware fine-tuning of a compiled ONNX model (``qcompiler finetune``), without labels.

Starting from a QDQ model qcompiler compiled (its Q/DQ nodes say what is quantized and how) and the FP32
model it came from (the teacher), fine-tuning runs the model in torch through the executor's torch
backend, with fake quantizers in place of the Q/DQ nodes (:mod:`.graph`): float latent weights trained
through the straight-through estimator, weight and activation step sizes learned as in LSQ (Esser et al.
2020), an int32 bias per layer following its scales. The loss is distillation against the teacher's
outputs on unlabelled data (the calibration data is enough, :mod:`.train`); the result is written back as
the same QDQ model with new integers and scales (:mod:`.export`).

torch is an optional dependency (``pip install 'onnx-qcompiler[finetune]'``); this package imports it only
when :func:`finetune` runs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import UserError


@dataclass
class OutputSummary:
    """One output before and after fine-tuning, both as onnxruntime runs the written models."""

    name: str
    error_before: float  # ||y - t||² / ||t||² against the teacher, over the data (before: after any lowering)
    error_after: float
    agreement_before: float  # arg-max agreement with the teacher (NaN for outputs without classes)
    agreement_after: float


@dataclass
class FinetuneResult:
    output: Path
    steps_run: int
    losses: list[float]
    outputs: list[OutputSummary] = field(default_factory=list)
    seconds: float = 0.0
    block_ends: list[str] = field(default_factory=list)  # with blocks: the values that end each block but the last
    rescaled_ends: list[str] = field(default_factory=list)  # ends refused: the teacher's tensor rescaled per channel
    frozen: float | None = None  # with freeze: share of the tracked low-bit weights frozen at the end

    def table(self) -> str:
        lines = [f"{'output':24} {'error before':>13} {'error after':>12} {'agree before':>13} {'agree after':>12}"]
        for o in self.outputs:
            lines.append(f"{o.name:24} {o.error_before:13.5f} {o.error_after:12.5f} {o.agreement_before:13.4f} "
                         f"{o.agreement_after:12.4f}")
        return "\n".join(lines)


def _import_torch():
    try:
        import torch
    except ImportError as exc:
        raise UserError("qcompiler finetune needs torch: pip install 'onnx-qcompiler[finetune]'") from exc
    return torch


def _data_files(data: str | os.PathLike) -> list[Path]:
    path = Path(data)
    if path.is_dir():
        files = sorted(path.glob("*.npz"))
    elif path.is_file():
        files = [path]
    else:
        raise UserError(f"--data {path}: no such file or directory")
    if not files:
        raise UserError(f"--data {path}: no .npz files in the directory")
    return files


SUMMARY_FILES = 256
"""The before/after summary reads at most this many data files, evenly spaced: three models run on each."""


def _summaries(before: Path, after: Path, data, teacher, threads: int) -> list[OutputSummary]:
    """Per output: the error and arg-max agreement against ``teacher`` of the models ``before`` and ``after``
    over the rows of (at most :data:`SUMMARY_FILES` of) ``data``, one data file at a time."""
    from .teacher import session
    from .train import agreement

    data = data[::-(-len(data) // SUMMARY_FILES)]
    runners = {label: session(path, threads) for label, path in (("before", before), ("after", after))}
    names = [o.name for o in runners["after"].get_outputs()]
    sums = {label: np.zeros((len(names), 3)) for label in runners}  # per output: error, norm, agreeing rows
    for rows in data:
        targets = teacher.outputs(rows.feeds)
        for label, runner in runners.items():
            for index, (y, t) in enumerate(zip(runner.run(None, rows.feeds), targets, strict=True)):
                t = t.astype(np.float64)
                sums[label][index] += (float(((y - t) ** 2).sum()), float((t ** 2).sum()),
                                       agreement([y], [t]) * rows.rows)
    count = sum(rows.rows for rows in data)
    stats = {label: [(error / max(norm, 1e-30), agree / count) for error, norm, agree in s]
             for label, s in sums.items()}
    return [OutputSummary(name, stats["before"][i][0], stats["after"][i][0], stats["before"][i][1],
                          stats["after"][i][1]) for i, name in enumerate(names)]


def _summed(first, second):
    """The task loss that adds ``second`` (None: nothing) to ``first``."""
    return first if second is None else lambda outputs, extras: first(outputs, extras) + second(outputs, extras)


def finetune(model: str | os.PathLike, output: str | os.PathLike, *, teacher: str | os.PathLike,
             data: str | os.PathLike, steps: int = 500, lr: float = 1e-4, batch: int = 32, seed: int = 0,
             checkpoint: str | os.PathLike | None = None, checkpoint_every: int = 50, task_loss=None,
             threads: int = 1, progress: bool | None = None, on_step=None,
             weights: str | None = None, activation_bits: int | None = None, blocks: int = 0,
             crop: list[str] = (), temperature: float = 1.0, ctc: str | None = None,
             freeze: float = 0.0, ema: float = 0.0) -> FinetuneResult:
    """Fine-tune the compiled QDQ ``model`` against the FP32 ``teacher`` on the ``.npz`` files of ``data``
    and write the result to ``output`` (atomically; never the input). ``checkpoint``: a file written every
    ``checkpoint_every`` steps; when it exists, the run resumes from it. ``task_loss(outputs, extras)``: an
    optional loss added to the distillation (``extras``: the data files' non-input arrays, and the
    teacher's outputs under ``"teacher:" + name``).
    ``weights`` (int4, ternary, binary) and ``activation_bits`` (4) first lower the weights and activations
    of all but the first and last layer (:mod:`.lowbit`). ``blocks``: reconstruct blocks of about that many layers
    against the teacher's tensors at their ends (:mod:`.blocks`; 0: the outputs alone). ``crop``:
    ``INPUT:AXIS`` axes cut to a random window on every step, the teacher labelling each window
    (:mod:`.augment`). ``temperature``: of the KL divergence of Softmax outputs (:mod:`.train`). ``ctc``:
    ``OUTPUT[:BLANK]``, an output of per-position class probabilities read by CTC; adds the CTC loss against
    the text the teacher reads there (:mod:`.sequence`). ``freeze``: freeze the low-bit weights that
    oscillate between two integers, at a threshold falling to this frequency (:mod:`.oscillation`; 0: none).
    ``ema``: write the moving average of the parameters over the second half of the run, with this decay per
    step (:mod:`.train`; 0: the last step's parameters).
    Returns
    the losses and, per output, the error and agreement against the teacher before and after (as onnxruntime
    runs the two models)."""
    import time

    torch = _import_torch()
    from .. import ir
    from ..compiler import check_output_path
    from .augment import parse_axes
    from .export import trained_model
    from .graph import QuantizedModel
    from .teacher import Teacher
    from .train import TrainingConfig, train

    model, output = Path(model), Path(output)
    if not model.is_file():
        raise UserError(f"{model}: no such file")
    if not Path(teacher).is_file():
        raise UserError(f"--teacher {teacher}: no such file")
    check_output_path(model, output)
    if steps < 1 or batch < 1 or lr <= 0 or temperature <= 0:
        raise UserError("finetune: --steps and --batch must be positive, --lr and --temperature greater than 0")
    if not 0 <= freeze < 1:
        raise UserError(f"finetune: --freeze-oscillations {freeze}: a frequency in [0, 1) (0: no freezing)")
    if not 0 <= ema < 1:
        raise UserError(f"finetune: --ema {ema}: a decay in [0, 1) (0: no averaging)")
    started = time.perf_counter()
    before = model
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(max(1, threads))
    try:
        start_model = ir.load(model)
        if weights is not None or activation_bits is not None:
            from .lowbit import lower_activations, lower_precision

            if weights is not None:
                lower_precision(start_model, weights)
            if activation_bits is not None:
                lower_activations(start_model, activation_bits)
            before = output.with_name(output.name + ".lowered.onnx")  # the lowered start, for the summary
            ir.save(start_model, before)
        module = QuantizedModel(start_model)
        if not module.weights and not module.activations:
            raise UserError(f"{model}: no QuantizeLinear/DequantizeLinear with constant scales: finetune starts "
                            f"from a model qcompiler compiled (qcompiler compile)")
        inputs = [v for v in module.model.graph.inputs if v.const is None]
        axes = parse_axes(list(crop), {v.name: None if v.shape is None else tuple(v.shape) for v in inputs})
        labeller = Teacher(Path(teacher), [v.name for v in inputs], threads)
        rows = labeller.read(_data_files(data))
        ends: list[str] = []
        refused: list[str] = []
        if blocks:
            from .blocks import cut_into_blocks

            ends, refused, block_loss = cut_into_blocks(module, labeller, rows, blocks)
            task_loss = _summed(block_loss, task_loss)
        if ctc is not None:
            from .sequence import ctc_distillation, parse_ctc

            task_loss = _summed(ctc_distillation(*parse_ctc(ctc, [v.name for v in module.model.graph.outputs])),
                                task_loss)
        torch.manual_seed(seed)
        config = TrainingConfig(steps=steps, lr=lr, batch=batch, seed=seed,
                                checkpoint=Path(checkpoint) if checkpoint is not None else None,
                                checkpoint_every=checkpoint_every, blocks=blocks, crop=axes,
                                temperature=temperature, freeze=freeze, ema=ema)
        run = train(module, rows, labeller, config, task_loss=task_loss, on_step=on_step, progress=progress)
        ir.save(trained_model(module), output)
    finally:
        torch.set_num_threads(previous_threads)
    try:
        summaries = _summaries(before, output, rows, labeller, threads)
    finally:
        if before != model:
            before.unlink(missing_ok=True)
    result = FinetuneResult(output, len(run.losses), run.losses, summaries, block_ends=ends, rescaled_ends=refused,
                            frozen=run.frozen)
    result.seconds = time.perf_counter() - started
    return result


__all__ = ["FinetuneResult", "OutputSummary", "finetune"]


def __getattr__(name: str) -> Any:  # the torch-side classes, imported on first use
    if name in ("QuantizedModel", "TorchInterpreter"):
        from . import graph

        return getattr(graph, name)
    raise AttributeError(name)
