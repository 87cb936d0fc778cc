"""Per layer: the target's integer kernels against the simulation, each fed identical inputs.

A QDQ model is judged in simulation (the graph as written, in float: ONNX Runtime's
``qdq_loss_debug`` and AIMET's QuantSim see this) but deployed as onnxruntime's fused integer
kernels (:mod:`.fusion`). Here every fused kernel the target runs is fed the inputs the simulation
computed for it (its quantized activations, weights, scales) and its output is compared with the
simulation's value of the same tensor: the error each kernel adds by itself, not the error
accumulated through the network (the question AIMET's ``LayerOutputUtil`` answers by dumping
per-layer outputs of the simulator and of the target runtime; here the target's arithmetic is the
executor's numerics profile, :mod:`.profiles`). The same kernel also runs with exact int32
accumulation (profile ``exact``) on the same inputs, which separates the kernel's rounding from the
target's accumulation.

Per kernel, over the feeds: the share of output elements more than one LSB away from the simulation
(integer outputs; a kernel with exact accumulation agrees within one LSB, the requantization's
rounding of a float-vs-integer tie) and the SQNR ``10 log10(sum y^2 / sum (y' - y)^2)`` against the
simulation, in quantization steps above the zero point (float outputs: in their units). A kernel is
*flagged* when more than ``MAX_OFF_SHARE`` of its elements are over one LSB off or its SQNR is below
``MIN_SQNR_DB``. The cause is named: when the exact kernel is not flagged and the target sums u8 x s8
products pairwise into a saturating int16 (``x86-avx2``), it is that saturation (with weights up to
|127|, 2 * 255 * 127 = 64770 > 32767; :func:`qcompiler.passes.check_kernels.saturating_units` lists the
units whose weights can overflow), and the fix is 7-bit weights (reduced range, |w| <= 64:
2 * 255 * 64 = 32640 fits), which ``--target x86-avx2`` compiles and ``check-kernels`` applies.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .agreement import energy_ratio_db
from .fusion import saturating_units
from .interpreter import Interpreter, Step
from .profiles import Profile, get_profile

MAX_OFF_SHARE = 1e-3
MIN_SQNR_DB = 30.0

SATURATION = ("int16 pair saturation: the target adds two u8*s8 products into a saturating int16 "
              "(vpmaddubsw; 2*255*127 = 64770 > 32767)")
SATURATION_FIX = ("7-bit weights (reduced range, |w| <= 64): compile with --target x86-avx2, or keep the "
                  "check-kernels pass's fix on")
ARITHMETIC = "the kernel's own arithmetic (it differs with exact int32 accumulation too)"
ARITHMETIC_FIX = "keep the layer in float (--exclude NAME) if its error matters"


@dataclass
class KernelError:
    """One fused kernel's disagreement with the simulation, accumulated over feeds."""

    name: str
    kernel: str
    nodes: int
    elements: int = 0
    off: int = 0
    max_lsb: float = 0.0
    signal: float = 0.0
    noise: float = 0.0
    exact_off: int = 0
    exact_noise: float = 0.0
    integer: bool = True

    @property
    def sqnr_db(self) -> float:
        return energy_ratio_db(self.signal, self.noise)

    @property
    def exact_sqnr_db(self) -> float:
        return energy_ratio_db(self.signal, self.exact_noise)

    def _bad(self, off: int, sqnr: float) -> bool:
        return off > MAX_OFF_SHARE * max(self.elements, 1) or sqnr < MIN_SQNR_DB

    @property
    def flagged(self) -> bool:
        return self._bad(self.off, self.sqnr_db)

    def record(self, profile: Profile, saturable: bool) -> dict:
        """A JSON-able record; flagged kernels name the cause and the fix."""
        data = {"name": self.name, "kernel": self.kernel, "elements": self.elements,
                "over_one_lsb": self.off / max(self.elements, 1) if self.integer else None,
                "max_lsb": self.max_lsb if self.integer else None, "sqnr_db": self.sqnr_db,
                "exact_sqnr_db": self.exact_sqnr_db, "saturable": saturable, "flagged": self.flagged}
        if self.flagged:
            accumulation = not self._bad(self.exact_off, self.exact_sqnr_db)
            if accumulation and profile.accumulation == "avx2_pair_saturate":
                data.update(cause=SATURATION, fix=SATURATION_FIX)
            elif accumulation:
                data.update(cause=f"the target's accumulation ({profile.accumulation})", fix=ARITHMETIC_FIX)
            else:
                data.update(cause=ARITHMETIC, fix=ARITHMETIC_FIX)
        return data


def _zero_point(step: Step, values: dict[str, np.ndarray]) -> float:
    quantize = next((n for n in reversed(step.nodes) if n.op_type == "QuantizeLinear"), None)
    zero = quantize.inputs[2] if quantize is not None and len(quantize.inputs) > 2 else None
    return 0.0 if zero is None else float(np.asarray(values[zero.name]).ravel()[0])


def _run(step: Step, args: list) -> np.ndarray:
    result = step.kernel(*args, **step.attrs)
    return np.asarray(result[0] if isinstance(result, tuple) else result)


def compare_layers(model, profile: str | Profile, feeds: list[dict[str, np.ndarray]],
                   progress: Callable[[int, int], None] | None = None) -> list[dict]:
    """One record per fused integer kernel of ``model`` under ``profile`` (graph order; see the module
    docstring): agreement with the simulation on identical inputs, flag, cause and fix.
    ``progress(done, total)`` is called after each feed."""
    profile = get_profile(profile)
    target = Interpreter(model, profile=profile)
    exact = {s.outputs[0].name: s for s in Interpreter(model, profile="exact").steps if len(s.nodes) > 1}
    simulation = Interpreter(target.model, profile="simulate", free_dead_values=False)
    saturable = {id(f.target) for f in saturating_units(target.model)}
    fused = [s for s in target.steps if len(s.nodes) > 1 and s.outputs[0].name in exact]
    errors = {s.outputs[0].name: KernelError(s.name or s.outputs[0].name, s.op, len(s.nodes)) for s in fused}
    with np.errstate(all="ignore"):
        for done, feed in enumerate(feeds, 1):
            simulation.run(feed)
            values = simulation.values
            for step in fused:
                output = step.outputs[0]
                if output is None or output.name not in values or any(
                        v is not None and v.name not in values for v in step.inputs):
                    continue
                args = [None if v is None else values[v.name] for v in step.inputs]
                want = np.asarray(values[output.name], np.float64)
                zero = _zero_point(step, values)
                error = errors[output.name]
                error.integer = np.issubdtype(values[output.name].dtype, np.integer)
                got = _run(step, args).astype(np.float64)
                also = _run(exact[output.name], args).astype(np.float64)
                error.elements += want.size
                error.signal += float(np.sum((want - zero) ** 2))
                error.noise += float(np.sum((got - want) ** 2))
                error.exact_noise += float(np.sum((also - want) ** 2))
                if error.integer:
                    error.off += int(np.sum(np.abs(got - want) > 1))
                    error.exact_off += int(np.sum(np.abs(also - want) > 1))
                    error.max_lsb = max(error.max_lsb, float(np.max(np.abs(got - want), initial=0.0)))
            if progress is not None:
                progress(done, len(feeds))
    return [errors[s.outputs[0].name].record(profile, any(id(n) in saturable for n in s.nodes))
            for s in fused if errors[s.outputs[0].name].elements]
