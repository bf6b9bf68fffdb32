"""Knowledge distillation (Hinton et al. 2015, "Distilling the Knowledge in a Neural Network").

The student is trained on its label loss plus ``weight * T^2 * KL(softmax(t / T) || softmax(s / T))``,
with t and s the teacher's and student's logits and T the temperature. A temperature above 1 softens
both distributions, so the teacher's ranking of the wrong classes (which action a clip resembles)
carries signal; T^2 keeps the gradient of the soft term on the scale of the label loss as T changes.
"""

from __future__ import annotations

import contextlib
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """T^2 * KL(softmax(teacher / T) || softmax(student / T)), averaged over the batch (fp32)."""
    t = float(temperature)
    log_s = F.log_softmax(student_logits.float() / t, dim=-1)
    log_t = F.log_softmax(teacher_logits.float() / t, dim=-1)
    return F.kl_div(log_s, log_t, log_target=True, reduction="batchmean") * t * t


class Distiller:
    """The soft-target term of the training loss: runs the frozen teacher on the student's clips.

    Args:
        teacher: a trained model (``CNNLSTM``), placed where it should run; kept in eval mode, no gradients.
        weight: multiplies the soft term (``train.distill.weight``).
        temperature: T (``train.distill.temperature``).
        autocast: the training run's autocast factory, so the teacher runs at the student's precision.
    """

    def __init__(self, teacher: nn.Module, *, weight: float, temperature: float,
                 autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext):
        self.teacher = teacher.eval().requires_grad_(False)
        self.weight, self.temperature, self.autocast = float(weight), float(temperature), autocast

    def __call__(self, clips: torch.Tensor, student_logits: torch.Tensor) -> torch.Tensor:
        """``weight * T^2 * KL`` for (B, T, C, H, W) ``clips`` and the student's (B, K) logits on them."""
        with torch.no_grad(), self.autocast():
            teacher_logits = self.teacher(clips)
        teacher_logits = teacher_logits.to(student_logits.device)
        return self.weight * distillation_loss(student_logits, teacher_logits, self.temperature)
