"""What ``qcompiler bench`` feeds the models: checked against every model's inputs before anything runs.

The models must take the same inputs (names, element types, and equal sizes where both fix one). Feeds
come from one ``.npz`` file, from calibration data (``qcompiler.calibration.data``: a directory of
``.npz`` files, one file, an iterable of feed dicts), or are made up: standard normal floats, integers
and booleans set to 1 (a valid index and an all-ones mask); a made-up feed needs every dimension but the
leading (batch) one fixed. Every problem is a :class:`~qcompiler.errors.UserError` naming the file and
the input.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..calibration.data import InputSpec, input_specs, open_calibration
from ..errors import ModelLoadError, UserError


class BenchInputError(UserError):
    """The models, or the data given to benchmark them, do not fit together."""


def model_inputs(path: str) -> list[InputSpec]:
    """The inputs a feed must provide to the model at ``path`` (raises ModelLoadError)."""
    import onnx

    if not Path(path).is_file():
        raise ModelLoadError(f"{path}: no such model file")
    try:
        proto = onnx.load(path, load_external_data=False)
    except Exception as exc:
        raise ModelLoadError(f"{path}: cannot read as an ONNX model ({type(exc).__name__})") from None
    return input_specs(proto)


def _fixed(dim: Any) -> bool:
    return isinstance(dim, int) and dim >= 0


def common_inputs(paths: list[str]) -> list[InputSpec]:
    """The inputs of the first model, after checking every other model takes the same ones."""
    first = model_inputs(paths[0])
    for path in paths[1:]:
        specs = model_inputs(path)
        if [s.name for s in specs] != [s.name for s in first]:
            raise BenchInputError(f"{path}: inputs {[s.name for s in specs]} differ from those of {paths[0]} "
                                  f"({[s.name for s in first]}); models benchmarked together must take the same inputs")
        for spec, ref in zip(specs, first):
            same_shape = spec.shape is None or ref.shape is None or (
                len(spec.shape) == len(ref.shape)
                and all(not (_fixed(a) and _fixed(b)) or a == b for a, b in zip(spec.shape, ref.shape)))
            if spec.dtype != ref.dtype or not same_shape:
                raise BenchInputError(f"{path}: input {spec.name!r} is {spec.dtype.name} {spec.describe_shape()}, "
                                      f"in {paths[0]} it is {ref.dtype.name} {ref.describe_shape()}")
    return first


def random_feed(specs: list[InputSpec], batch: int, seed: int = 0) -> dict[str, np.ndarray]:
    """A made-up feed: leading dynamic dimensions take ``batch``, any other dynamic one is an error."""
    rng = np.random.default_rng(seed)
    feed = {}
    for spec in specs:
        if spec.shape is None:
            raise BenchInputError(f"input {spec.name!r} has no known shape: give --inputs or --calib")
        shape = []
        for axis, dim in enumerate(spec.shape):
            if _fixed(dim):
                shape.append(dim)
            elif axis == 0:
                shape.append(batch)
            else:
                raise BenchInputError(f"input {spec.name!r} {spec.describe_shape()} has a dynamic dimension on "
                                      f"axis {axis}: give real inputs with --inputs X.npz or --calib DATA")
        if spec.dtype.kind == "f":
            feed[spec.name] = rng.standard_normal(shape).astype(spec.dtype)
        else:
            feed[spec.name] = np.ones(shape, spec.dtype)
    return feed


def with_batch(feed: dict[str, np.ndarray], specs: list[InputSpec], batch: int) -> dict[str, np.ndarray]:
    """``feed`` with ``batch`` rows on the leading axis of every input (rows repeated or cut)."""
    resized = {}
    for spec in specs:
        array = feed[spec.name]
        if spec.shape is not None and spec.shape and _fixed(spec.shape[0]) and spec.shape[0] != batch:
            raise BenchInputError(f"--batch {batch}: input {spec.name!r} has a fixed batch of {spec.shape[0]}")
        if array.ndim == 0:
            raise BenchInputError(f"--batch {batch}: input {spec.name!r} is a scalar, it has no batch axis")
        resized[spec.name] = np.resize(array, (batch, *array.shape[1:])) if len(array) != batch else array
    return resized


def feed_batch(feed: dict[str, np.ndarray]) -> int:
    """The leading size of the first input (1 for a scalar)."""
    first = next(iter(feed.values()))
    return int(first.shape[0]) if first.ndim else 1


def open_feeds(specs: list[InputSpec], inputs: str | None, calib: Any) -> tuple[Any, str]:
    """The feeds to compare outputs on (re-iterable, each validated) and a description of them.

    ``inputs`` is one ``.npz`` file; ``calib`` any calibration source. Neither: None (made-up feed).
    """
    if inputs is not None and calib is not None:
        raise BenchInputError("give either --inputs or --calib, not both")
    if inputs is not None:
        if Path(inputs).suffix != ".npz" or not Path(inputs).is_file():
            raise BenchInputError(f"{inputs}: --inputs expects an existing .npz file (keys = input names)")
        return open_calibration(inputs, specs), str(inputs)
    if calib is not None:
        return open_calibration(calib, specs), str(calib) if isinstance(calib, (str, Path)) else "calibration data"
    return None, "random (seed 0)"
