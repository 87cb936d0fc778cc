"""How closely one model's outputs follow a reference's, accumulated over any number of feeds.

Per output: SQNR in dB (``10 log10(sum ref^2 / sum (out - ref)^2)``; None where it is not finite:
identical outputs, or an all-zero reference), the cosine similarity per item (a row of the leading
axis: mean and min), top-1 agreement (the share of positions whose argmax over the last axis is the
same) and the largest absolute error.
"""

from __future__ import annotations

import math

import numpy as np


class Agreement:
    """Streaming agreement of one output with its reference: :meth:`update` per feed, then :meth:`result`."""

    def __init__(self) -> None:
        self.signal = 0.0
        self.noise = 0.0
        self.cosines: list[float] = []
        self.same_top1 = 0
        self.positions = 0
        self.max_abs = 0.0

    def update(self, reference: np.ndarray, output: np.ndarray) -> None:
        ref = np.asarray(reference, np.float64)
        out = np.asarray(output, np.float64)
        difference = out - ref
        self.signal += float(np.sum(ref * ref))
        self.noise += float(np.sum(difference * difference))
        if ref.size:
            self.max_abs = max(self.max_abs, float(np.max(np.abs(difference))))
        rows_ref = ref.reshape(len(ref), -1) if ref.ndim else ref.reshape(1, 1)
        rows_out = out.reshape(rows_ref.shape)
        norms = np.linalg.norm(rows_ref, axis=1) * np.linalg.norm(rows_out, axis=1)
        dots = np.sum(rows_ref * rows_out, axis=1)
        both_zero = (np.linalg.norm(rows_ref, axis=1) == 0) & (np.linalg.norm(rows_out, axis=1) == 0)
        with np.errstate(invalid="ignore", divide="ignore"):
            self.cosines += np.where(both_zero, 1.0, np.where(norms > 0, dots / norms, 0.0)).tolist()
        last = ref.reshape(-1, ref.shape[-1]) if ref.ndim else ref.reshape(1, 1)
        self.same_top1 += int(np.sum(np.argmax(last, axis=-1) == np.argmax(out.reshape(last.shape), axis=-1)))
        self.positions += len(last)

    def result(self) -> dict[str, float | None]:
        sqnr = 10 * math.log10(self.signal / self.noise) if self.noise > 0 and self.signal > 0 else None
        return {"sqnr_db": sqnr, "cos_mean": float(np.mean(self.cosines)), "cos_min": float(np.min(self.cosines)),
                "top1": self.same_top1 / self.positions, "max_abs": self.max_abs}
