"""The fine-tuning loop: distillation from the float teacher on unlabelled data, Adam with a cosine
schedule, checkpoints that an interrupted run resumes from.

Loss: label-free knowledge distillation, averaged over the outputs. An output that a Softmax over its last
axis computes (class or character probabilities) is compared as a distribution: ``KL(t || softmax(z))`` per
position, from the student's logits ``z`` (the Softmax's input, so a probability that rounds to 0 still has
a gradient) and the teacher's probabilities ``t`` (Hinton et al. 2015). Any other output is compared by
``||y - t||² / ||t||²`` (the student's output ``y`` against the teacher's ``t`` on the same minibatch, the
compiler's sensitivity measure: the regression form of Ba & Caruana 2014). A ``task_loss(outputs,
extras)`` callback may add a labelled loss; ``extras`` holds the minibatch's rows of the data files'
arrays that are not model inputs (labels, for instance).

With ``freeze``, low-bit weights that oscillate between two integers are frozen as they go
(:mod:`.oscillation`).

With ``ema``, what is written is an exponential moving average of the parameters (latent weights, step sizes,
biases) over the second half of the run, ``a <- ema · a + (1 - ema) · p`` after each step from the middle on,
rather than the last step's: averaging the iterates (Polyak and Juditsky 1992) cancels the noise that
small minibatches leave in the last steps' weights; the integers written are those of the averaged latent
weights.

The minibatches are drawn from the data files by a seeded numpy generator: the files in epochs, each a fresh
random permutation, so a run shorter than an epoch sees every file at most once (a short run learns more from
fresh samples than from repeated ones; drawn with replacement, a quarter of the draws of a run two thirds of
an epoch long would repeat a file), then rows of the file, so inputs of different shapes never mix. With
``crop`` axes the same generator cuts each minibatch to a random window (:mod:`.augment`). The teacher labels
every minibatch as it is drawn (:mod:`.teacher`). A checkpoint holds the step, the parameters, Adam's state,
the generator's state and the epoch's order, so a resumed run continues exactly where the interrupted one
stopped.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import UserError
from ..progress import bar
from .augment import Axes, crop
from .graph import QuantizedModel, parameter_groups
from .oscillation import OscillationFreezer
from .teacher import Rows, Teacher

TaskLoss = Callable[[dict[str, torch.Tensor], dict[str, np.ndarray]], torch.Tensor]


def distillation_loss(outputs: list[torch.Tensor], teacher: list[np.ndarray],
                      logits: list[torch.Tensor | None] | None = None, temperature: float = 1.0) -> torch.Tensor:
    """Mean over outputs of each output's term: ``T² KL(t_T || softmax(z / T))`` per position, averaged over
    positions, where the student's logits ``z`` (the input of the Softmax that computes the output) are known,
    with ``t_T ∝ t^(1/T)`` (the teacher's probabilities at temperature ``T``: ``softmax(z_t / T)`` for its
    logits ``z_t``); else ``||y - t||² / ||t||²``."""
    terms = []
    for y, t, z in zip(outputs, teacher, logits or [None] * len(outputs), strict=True):
        t = torch.from_numpy(np.asarray(t, np.float32))
        if z is not None:
            if temperature != 1.0:
                t = torch.softmax(torch.log(t) / temperature, -1)  # log 0 = -inf: a zero stays zero
            entropy = torch.special.xlogy(t, t).sum(-1)
            cross = (t * torch.log_softmax(z.float() / temperature, -1)).sum(-1)
            terms.append(temperature ** 2 * (entropy - cross).mean())
        else:
            terms.append(((y.float() - t) ** 2).sum() / (t ** 2).sum().clamp_min(1e-12))
    return torch.stack(terms).mean()


def agreement(outputs: list, teacher: list[np.ndarray]) -> float:
    """Share of positions whose arg-max over the last axis equals the teacher's, over the outputs with a
    last axis of 2 or more (classes, characters), else NaN."""
    hits, total = 0, 0
    for y, t in zip(outputs, teacher, strict=True):
        y = y.detach().numpy() if isinstance(y, torch.Tensor) else np.asarray(y)
        if t.ndim == 0 or t.shape[-1] < 2:
            continue
        hits += int((y.argmax(-1) == t.argmax(-1)).sum())
        total += t[..., 0].size
    return hits / total if total else float("nan")


@dataclass
class TrainingConfig:
    steps: int = 500
    lr: float = 1e-4
    batch: int = 32
    seed: int = 0
    checkpoint: Path | None = None
    checkpoint_every: int = 50
    blocks: int = 0  # layers per reconstructed block (0: none); a checkpoint holds to it
    crop: Axes = ()  # (input, axis) cut to one random window per step (:mod:`.augment`); needs a teacher
    temperature: float = 1.0  # of the KL term of Softmax outputs
    freeze: float = 0.0  # final threshold of oscillating-weight freezing (:mod:`.oscillation`; 0: none)
    ema: float = 0.0  # decay of the parameters' moving average over the second half (0: the last step's)


def fingerprint(module: QuantizedModel, config: TrainingConfig) -> str:
    """What a checkpoint must match to be resumed: the parameters' initial values and the settings."""
    digest = hashlib.sha256(repr((config.steps, config.lr, config.batch, config.seed, "epochs")
                                 + ((config.blocks,) if config.blocks else ())
                                 + ((config.crop,) if config.crop else ())
                                 + ((config.temperature,) if config.temperature != 1.0 else ())
                                 + (("freeze", config.freeze) if config.freeze else ())
                                 + (("ema", config.ema) if config.ema else ())).encode())
    for name, p in module.parameters_.items():
        digest.update(name.encode())
        digest.update(p.detach().numpy().tobytes())
    return digest.hexdigest()


def _save_checkpoint(path: Path, state: dict) -> None:
    partial = path.with_name(path.name + ".partial")
    torch.save(state, partial)
    os.replace(partial, path)


class FileOrder:
    """The data files in epochs: each epoch a permutation drawn from ``rng`` when the last one is used up."""

    def __init__(self, files: int, rng: np.random.Generator):
        self.files, self.rng = files, rng
        self.order: list[int] = []
        self.next = 0

    def draw(self) -> int:
        if self.next == len(self.order):
            self.order, self.next = self.rng.permutation(self.files).tolist(), 0
        self.next += 1
        return self.order[self.next - 1]

    def state_dict(self) -> dict:
        return {"order": self.order, "next": self.next}

    def load_state_dict(self, state: dict) -> None:
        self.order, self.next = list(state["order"]), state["next"]


class ParameterAverage:
    """The exponential moving average of ``module``'s parameters from step ``start`` on (module docstring)."""

    def __init__(self, module: QuantizedModel, decay: float, start: int):
        self.module, self.decay, self.start = module, decay, start
        self.average: dict[str, torch.Tensor] | None = None

    @torch.no_grad()
    def update(self, done: int) -> None:
        """After step ``done`` (counted from 1)."""
        if done < self.start:
            return
        parameters = self.module.parameters_
        if self.average is None:
            self.average = {name: p.detach().clone() for name, p in parameters.items()}
            return
        for name, p in parameters.items():
            self.average[name].mul_(self.decay).add_(p.detach(), alpha=1 - self.decay)

    @torch.no_grad()
    def apply(self) -> None:
        """Put the average into the module's parameters (nothing before ``start``)."""
        if self.average is None:
            return
        for name, p in self.module.parameters_.items():
            p.copy_(self.average[name])


@dataclass
class TrainingRun:
    losses: list[float]  # of each step run here
    frozen: float | None = None  # share of the tracked weights frozen at the end (None: no freezing)


def train(module: QuantizedModel, data: list[Rows], teacher: Teacher, config: TrainingConfig, *,
          task_loss: TaskLoss | None = None, on_step: Callable[[int, float], None] | None = None,
          progress: bool | None = None) -> TrainingRun:
    """Train ``module`` for ``config.steps`` steps on minibatches of ``data`` labelled by ``teacher``."""
    weights, steps = parameter_groups(module)
    optimizer = torch.optim.Adam([{"params": weights}, {"params": steps}], lr=config.lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * min(step, config.steps) / config.steps)))
    rng = np.random.default_rng(config.seed)
    files = FileOrder(len(data), rng)
    start = 0
    key = fingerprint(module, config)
    freezer = OscillationFreezer(module, config.freeze, config.steps) if config.freeze else None
    average = ParameterAverage(module, config.ema, config.steps // 2) if config.ema else None
    if config.checkpoint is not None and config.checkpoint.exists():
        state = torch.load(config.checkpoint, weights_only=False)
        if state.get("fingerprint") != key:
            raise UserError(f"checkpoint {config.checkpoint} belongs to another model or other settings "
                            f"(steps, lr, batch, seed, blocks, crop, freeze, ema) or an older version; delete it or "
                            f"choose another --checkpoint")
        module.parameters_.load_state_dict(state["parameters"])
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        rng.bit_generator.state = state["rng"]
        files.load_state_dict(state["files"])
        if freezer is not None:
            freezer.load_state_dict(state["freezer"])
        if average is not None:
            average.average = state.get("average")
        start = state["step"]
    names = [v.name for v in module.model.graph.outputs]
    losses = []
    with bar(config.steps, "finetune", unit="step", on=progress) as progress_bar:
        progress_bar.update(start)
        for step in range(start, config.steps):
            source = data[files.draw()]
            rows = source.take(np.sort(rng.choice(source.rows, size=min(config.batch, source.rows), replace=False)))
            feeds = crop(rows.feeds, config.crop, rng) if config.crop else rows.feeds
            batch = teacher.label(feeds, rows.extras)
            outputs = module(batch.feeds)
            student = [outputs[n] for n in names]
            loss = distillation_loss(student, batch.teacher, [module.logits.get(n) for n in names],
                                     config.temperature)
            if task_loss is not None:
                loss = loss + task_loss(outputs, batch.extras)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            if freezer is not None:
                freezer.update(step + 1)
            if average is not None:
                average.update(step + 1)
            losses.append(loss.item())
            shown = {"loss": f"{losses[-1]:.4g}", "agree": f"{agreement(student, batch.teacher):.3f}"}
            if freezer is not None:
                shown["frozen"] = f"{freezer.frozen_share():.2%}"
            progress_bar.set_postfix(shown, refresh=False)
            progress_bar.update(1)
            done = step + 1
            if config.checkpoint is not None and (done % config.checkpoint_every == 0 or done == config.steps):
                _save_checkpoint(config.checkpoint, {
                    "fingerprint": key, "step": done, "parameters": module.parameters_.state_dict(),
                    "optimizer": optimizer.state_dict(), "schedule": schedule.state_dict(),
                    "rng": rng.bit_generator.state, "files": files.state_dict(),
                    "freezer": freezer.state_dict() if freezer is not None else None,
                    "average": average.average if average is not None else None})
            if on_step is not None:
                on_step(done, losses[-1])
    if average is not None:
        average.apply()
    return TrainingRun(losses, freezer.frozen_share() if freezer is not None else None)
