"""Label-free augmentation for fine-tuning (``qcompiler finetune --crop INPUT:AXIS``): random windows.

A calibration set is enough to calibrate, but a small one is little to train on: distillation fits its few
samples and not the task. Consistent distillation (Beyer et al. 2022, "Knowledge distillation: A good teacher
is patient and consistent") shows the student and the teacher the same augmented view of each sample, so the
targets stay exact without labels; the teacher runs again on every augmented minibatch (:mod:`.teacher`).

The view here is a window along axes the user names, where a shorter input is as valid as a longer one (a
text line's width, a sentence's tokens): each step draws one length, uniform between :data:`MIN_FRACTION`
of the axes' common length and all of it, and one start, and cuts every named axis to that window.
"""

from __future__ import annotations

import math

import numpy as np

from ..errors import UserError

MIN_FRACTION = 0.5
"""The shortest window, as a share of the axis."""

Axes = tuple[tuple[str, int], ...]


def parse_axes(specs: list[str], shapes: dict[str, tuple | None]) -> Axes:
    """``INPUT:AXIS`` strings checked against the model's inputs and their shapes (None: unknown rank): not
    the batch axis 0, not an axis the model fixes to a length."""
    axes = []
    for spec in specs:
        name, _, axis = spec.rpartition(":")
        if name not in shapes:
            raise UserError(f"--crop {spec}: expected INPUT:AXIS with INPUT one of the model's inputs "
                            f"({', '.join(shapes)})")
        try:
            index = int(axis)
        except ValueError:
            raise UserError(f"--crop {spec}: the axis {axis!r} is not an integer") from None
        shape = shapes[name]
        if shape is None:
            if index < 1:
                raise UserError(f"--crop {spec}: input {name} has no known rank, so the axis must be 1 or more "
                                f"(axis 0 is the batch)")
        else:
            index = index + len(shape) if index < 0 else index
            if not 1 <= index < len(shape):
                raise UserError(f"--crop {spec}: input {name} has axes 0..{len(shape) - 1}; axis 0 is the batch, "
                                f"so the axis must be 1..{len(shape) - 1}")
            if isinstance(shape[index], int):
                raise UserError(f"--crop {spec}: the model fixes axis {index} of input {name} to {shape[index]}; "
                                f"crop an axis it leaves free")
        axes.append((name, index))
    return tuple(dict.fromkeys(axes))


def crop(feeds: dict[str, np.ndarray], axes: Axes, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """``feeds`` with every axis of ``axes`` cut to one random window (see the module docstring)."""
    lengths = {feeds[name].shape[axis] for name, axis in axes}
    if len(lengths) != 1:
        listed = ", ".join(f"{name}:{axis} = {feeds[name].shape[axis]}" for name, axis in axes)
        raise UserError(f"--crop: the axes cut together must have one length in each data file, not {listed}")
    length = lengths.pop()
    size = int(rng.integers(max(1, math.ceil(MIN_FRACTION * length)), length + 1))
    start = int(rng.integers(0, length - size + 1))
    out = dict(feeds)
    for name, axis in axes:
        window = [slice(None)] * out[name].ndim
        window[axis] = slice(start, start + size)
        out[name] = np.ascontiguousarray(out[name][tuple(window)])
    return out


__all__ = ["MIN_FRACTION", "crop", "parse_axes"]
