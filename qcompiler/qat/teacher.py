"""The FP32 teacher of fine-tuning, run by onnxruntime: the targets of every minibatch.

A :class:`Teacher` gives a set of feeds its outputs, and, under block reconstruction (:mod:`.blocks`), its
tensors at the block ends. Both are also stored among the minibatch's extras under :data:`TARGET` + the
value's name, where a task loss finds them (sequence-level distillation against the teacher's decoded
outputs, for example: Kim and Rush 2016). The
data files are read as unlabelled :class:`Rows` (:meth:`Teacher.read`) and every minibatch is labelled when it
is drawn, after any augmentation (:mod:`.augment`): student and teacher always see the same input, and the
targets, which for block ends outweigh the data many times over, are never held for the whole data set.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import UserError

TARGET = "teacher:"
"""Prefix of a teacher output's or block target's key among a batch's extras."""


@dataclass
class Rows:
    """The rows of one data file: the model's feeds and the file's other arrays (extras: labels, say)."""

    feeds: dict[str, np.ndarray]
    extras: dict[str, np.ndarray]

    @property
    def rows(self) -> int:
        return len(next(iter(self.feeds.values())))

    def take(self, rows: np.ndarray) -> Rows:
        return Rows({k: v[rows] for k, v in self.feeds.items()},
                    {k: v[rows] for k, v in self.extras.items() if len(v) == self.rows})


@dataclass
class Batch:
    """A labelled minibatch: the feeds, the teacher's outputs (in the model's output order), the extras."""

    feeds: dict[str, np.ndarray]
    teacher: list[np.ndarray]
    extras: dict[str, np.ndarray]


def session(model: Path | bytes | str, threads: int):
    """An onnxruntime CPU session of ``model`` on ``threads`` threads, warnings off."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    return ort.InferenceSession(str(model) if isinstance(model, Path) else model, options,
                                providers=["CPUExecutionProvider"])


class Teacher:
    """The FP32 model at ``path``, checked to take the quantized model's ``inputs``."""

    def __init__(self, path: Path, inputs: list[str], threads: int):
        self.path, self.inputs, self.threads = path, inputs, threads
        self._outputs = session(path, threads)
        self.output_names = [o.name for o in self._outputs.get_outputs()]
        names = [i.name for i in self._outputs.get_inputs()]
        if sorted(names) != sorted(inputs):
            raise UserError(f"--teacher {path}: inputs {names} differ from the quantized model's {inputs}")
        self._ends: Any = None  # a session of the canonicalized teacher that exposes the block ends
        self.ends: list[str] = []

    def track(self, ends_session, ends: list[str]) -> None:
        """Also give each minibatch the tensors ``ends`` that ``ends_session`` computes (block targets)."""
        self._ends, self.ends = ends_session, list(ends)

    def label(self, feeds: dict[str, np.ndarray], extras: dict[str, np.ndarray]) -> Batch:
        """``feeds`` with the teacher's outputs, which with its block targets replace any in ``extras``."""
        extras = {k: v for k, v in extras.items() if not k.startswith(TARGET)}
        names = self.output_names
        if self.ends:  # one run: the canonicalized teacher computes the outputs too (up to float rounding)
            fed = {i.name: feeds[i.name] for i in self._ends.get_inputs()}
            values = self._run(self._ends, names + self.ends, fed)
            outputs = values[:len(names)]
            extras.update({TARGET + name: value for name, value in zip(self.ends, values[len(names):])})
        else:
            outputs = self.outputs(feeds)
        extras.update({TARGET + name: value for name, value in zip(names, outputs)})
        return Batch(feeds, outputs, extras)

    def outputs(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        """The teacher's outputs for ``feeds``."""
        return self._run(self._outputs, None, feeds)

    def _run(self, teacher, names, feeds):
        try:
            return teacher.run(names, feeds)
        except Exception as exc:  # onnxruntime's errors share no base class but Exception
            shapes = ", ".join(f"{k} {list(v.shape)}" for k, v in feeds.items())
            raise UserError(f"--teacher {self.path}: onnxruntime refused the feeds ({shapes}): "
                            f"{str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__}") from exc

    def read(self, files: list[Path]) -> list[Rows]:
        """The data files, checked to hold the model's inputs (their other arrays become extras)."""
        from ..calibration.data import read_npz

        data = []
        for file in files:
            arrays = read_npz(file)
            missing = [n for n in self.inputs if n not in arrays]
            if missing:
                raise UserError(f"{file}: no array for input(s) {', '.join(missing)} (it holds {', '.join(arrays)})")
            feeds = {n: arrays[n] for n in self.inputs}
            rows = {len(a) for a in feeds.values()}
            if len(rows) != 1:
                raise UserError(f"{file}: the inputs' first (batch) dimensions differ: {sorted(rows)}")
            data.append(Rows(feeds, {k: v for k, v in arrays.items() if k not in feeds}))
        return data


__all__ = ["TARGET", "Batch", "Rows", "Teacher", "session"]
