"""Sequence-level distillation of CTC outputs: ``qcompiler finetune --ctc OUTPUT[:BLANK]``.

A recognizer whose output holds, per position, the probabilities of a blank and of every symbol (``[N, T,
classes]``, a text line's characters, speech frames' phonemes) is read by CTC greedy decoding (Graves et al.
2006): the best class per position, repeats merged, blanks dropped. The distillation of :mod:`.train`
matches the student's distribution to the teacher's position by position; sequence-level distillation (Kim
and Rush 2016) also asks the student to read the teacher's text, through any alignment: it adds the CTC loss
of the student's output against the teacher's greedy reading. No label is read; the targets come from the
teacher, so the data stays unlabelled.
"""

from __future__ import annotations

import numpy as np
import torch

from ..errors import UserError
from .teacher import TARGET
from .train import TaskLoss


def greedy_texts(probabilities: np.ndarray, blank: int) -> list[np.ndarray]:
    """CTC greedy decoding of ``[N, T, classes]`` probabilities: per row, the best classes with repeats merged
    and blanks dropped."""
    texts = []
    for best in np.asarray(probabilities).argmax(-1):
        merged = best[np.concatenate([[True], best[1:] != best[:-1]])]
        texts.append(merged[merged != blank].astype(np.int64))
    return texts


def ctc_loss(probabilities: torch.Tensor, texts: list[np.ndarray], blank: int = 0) -> torch.Tensor:
    """CTC (mean over the rows of the loss divided by the text length, as torch's) of ``[N, T, classes]``
    probabilities against one text (class indices) per row; alignments longer than ``T`` count as zero
    (``zero_infinity``)."""
    log_probs = torch.log(probabilities.float().clamp_min(1e-30)).transpose(0, 1)  # [T, N, classes]
    positions = torch.full((probabilities.shape[0],), probabilities.shape[1], dtype=torch.int64)
    lengths = torch.tensor([len(t) for t in texts], dtype=torch.int64)
    return torch.nn.functional.ctc_loss(log_probs, torch.from_numpy(np.concatenate(texts).astype(np.int64)),
                                        positions, lengths, blank=blank, zero_infinity=True)


def ctc_distillation(output: str, blank: int = 0) -> TaskLoss:
    """The task loss: :func:`ctc_loss` of the student's ``output`` against the teacher's greedy reading of it."""

    def loss(outputs: dict[str, torch.Tensor], extras: dict[str, np.ndarray]) -> torch.Tensor:
        student = outputs[output]
        if student.ndim != 3:
            raise UserError(f"--ctc {output}: the output has shape {list(student.shape)}; CTC reads [batch, "
                            f"positions, classes] probabilities")
        return ctc_loss(student, greedy_texts(extras[TARGET + output], blank), blank)

    return loss


def parse_ctc(spec: str, outputs: list[str]) -> tuple[str, int]:
    """``OUTPUT[:BLANK]`` (blank class 0 when not given), checked against the model's ``outputs``."""
    name, _, blank = spec.rpartition(":") if spec.rpartition(":")[2].isdigit() else (spec, "", "0")
    if name not in outputs:
        raise UserError(f"--ctc {spec}: the model has no output {name!r}; its outputs are {', '.join(outputs)}")
    return name, int(blank)


__all__ = ["ctc_distillation", "ctc_loss", "greedy_texts", "parse_ctc"]
