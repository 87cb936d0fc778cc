"""Outputs compared: the executor against onnxruntime, or one numerics profile against another.

Integer outputs are compared in units of the last place (LSB): the share of elements equal bit for
bit, the largest difference, and the share more than one LSB off. Float outputs get the share of
equal elements, the largest absolute difference and the SQNR
``10 log10(sum y^2 / sum (y' - y)^2)`` (infinite when equal).

onnxruntime runs here on this machine's CPU (``optimize=True``: its QDQ fusions and int8 kernels, as
deployed; ``False``: the QDQ graph as written, in float). ``benchmarks/executor_vs_ort.py`` also runs
it under ``qemu-x86_64 -cpu Haswell-v4`` to get an AVX2 CPU without VNNI.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import asdict, dataclass

import numpy as np
import onnx

from .. import ir
from ..calibration.collect import DROPPED_OUTPUT, unsupported_operator
from ..errors import UnsupportedModelError


@dataclass
class Agreement:
    """How one output of two runs agrees (see the module docstring)."""

    name: str
    dtype: str
    elements: int
    equal: float
    max_diff: float
    over_one_lsb: float | None  # integer outputs only
    sqnr_db: float | None  # float outputs only

    def line(self) -> str:
        if self.over_one_lsb is not None:
            return (f"{self.name}: {self.dtype}, {100 * self.equal:.3f} % bit-exact, max {self.max_diff:g} LSB, "
                    f"{100 * self.over_one_lsb:.3f} % more than 1 LSB off")
        return (f"{self.name}: {self.dtype}, {100 * self.equal:.3f} % equal, max |diff| {self.max_diff:.3g}, "
                f"SQNR {self.sqnr_db:.1f} dB")

    def as_dict(self) -> dict:
        data = asdict(self)
        if data["sqnr_db"] is not None and math.isinf(data["sqnr_db"]):
            data["sqnr_db"] = "inf"
        return data


def energy_ratio_db(signal: float, noise: float) -> float:
    """``10 log10(signal / noise)`` of two energies; inf when there is no noise, -inf when no signal."""
    if noise == 0:
        return math.inf
    return 10 * math.log10(signal / noise) if signal > 0 else -math.inf


def sqnr_db(reference: np.ndarray, other: np.ndarray) -> float:
    """``10 log10(sum reference^2 / sum (other - reference)^2)``; inf when equal."""
    reference, other = np.asarray(reference, np.float64), np.asarray(other, np.float64)
    return energy_ratio_db(float(np.sum(reference ** 2)), float(np.sum((other - reference) ** 2)))


def compare(name: str, ours: np.ndarray, theirs: np.ndarray) -> Agreement:
    """The :class:`Agreement` of two arrays of the same shape."""
    ours, theirs = np.asarray(ours), np.asarray(theirs)
    if ours.shape != theirs.shape:
        raise ValueError(f"output {name!r}: shapes differ, {ours.shape} vs {theirs.shape}")
    integer = np.issubdtype(ours.dtype, np.integer) and np.issubdtype(theirs.dtype, np.integer)
    diff = np.abs(ours.astype(np.float64) - theirs.astype(np.float64))
    size = max(diff.size, 1)
    return Agreement(name, str(ours.dtype), int(diff.size), float(np.sum(diff == 0)) / size,
                     float(diff.max(initial=0.0)),
                     float(np.sum(diff > 1)) / size if integer else None,
                     None if integer else sqnr_db(theirs, ours))


def compare_all(ours: dict[str, np.ndarray], theirs: dict[str, np.ndarray]) -> list[Agreement]:
    """One :class:`Agreement` per output name both runs have, in ``theirs``' order."""
    return [compare(name, ours[name], theirs[name]) for name in theirs if name in ours]


def merge(parts: list[Agreement]) -> Agreement:
    """Agreements of the same output over several feeds, weighted by element count."""
    total = sum(p.elements for p in parts) or 1
    first = parts[0]

    def mean(field):
        values = [getattr(p, field) for p in parts]
        return None if values[0] is None else sum(v * p.elements for v, p in zip(values, parts)) / total

    sqnr = None if first.sqnr_db is None else min(p.sqnr_db for p in parts)
    return Agreement(first.name, first.dtype, total, mean("equal"), max(p.max_diff for p in parts),
                     mean("over_one_lsb"), sqnr)


def run_onnxruntime(model: ir.Model | bytes, feeds: dict[str, np.ndarray], *, optimize: bool = True,
                    threads: int = 1) -> dict[str, np.ndarray]:
    """onnxruntime's outputs by name (CPU provider; ``optimize``: all graph optimizations, else none)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    if not optimize:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    try:
        with contextlib.nullcontext(model) if isinstance(model, bytes) else ir.onnxruntime_model(model) as data:
            session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime's exceptions have no common public base class
        proto = ir.to_proto(model, include_data=lambda v: False) if isinstance(model, ir.Model) \
            else onnx.load_from_string(model)
        error = unsupported_operator(proto, exc, use="the comparison runs the model in it")
        if error is None and DROPPED_OUTPUT in str(exc):
            error = UnsupportedModelError(
                f"onnxruntime refuses the model with its graph optimizations on ({str(exc).strip().splitlines()[0]}): "
                "its optimizer removes a node whose output the model returns (e.g. a Gemm read by a Transpose "
                "and listed as a graph output), which the float model runs into too")
        if error is None:
            raise
        raise error from None
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, feeds), strict=True))


def expose_quantized_outputs(model: ir.Model, *, every: bool = False) -> ir.Model:
    """A copy whose graph outputs also include the integer tensor behind each output produced by a
    DequantizeLinear (the model's quantized result, compared in LSB), or with ``every`` the output of
    every QuantizeLinear (every quantized activation). Exposing a QuantizeLinear's output does not
    change which node units onnxruntime fuses (it checks the fused op's output, not the Q's)."""
    model = model.clone()
    graph = model.graph
    if every:
        exposed = [n.outputs[0] for n in graph if n.op_type == "QuantizeLinear" and n.outputs[0].const is None]
    else:
        exposed = [v.producer().inputs[0] for v in graph.outputs
                   if v.producer() is not None and v.producer().op_type == "DequantizeLinear"
                   and v.producer().inputs[0].const is None]
    graph.outputs.extend(v for v in dict.fromkeys(exposed) if v not in graph.outputs)
    return model


def format_outputs(outputs: dict[str, np.ndarray]) -> str:
    """One line per output: name, dtype, shape, and a few statistics (argmax for 2-D scores)."""
    lines = []
    for name, array in outputs.items():
        array = np.asarray(array)
        text = f"{name}: {array.dtype}{list(array.shape)}"
        if array.size and np.issubdtype(array.dtype, np.number):
            values = array.astype(np.float64)
            text += f" min {values.min():.6g} max {values.max():.6g} mean {values.mean():.6g}"
            if array.ndim == 2 and array.shape[1] > 1:
                head = array.argmax(axis=1)[:8].tolist()
                text += f" argmax {head}{' ...' if array.shape[0] > 8 else ''}"
        lines.append(text)
    return "\n".join(lines)
