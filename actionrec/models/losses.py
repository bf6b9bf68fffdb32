"""Multi-class focal loss (Lin et al. 2017) and the cross-entropy alternative.

FL = -alpha_y * sum_c q_c (1 - p_c)^gamma log p_c, with q the (optionally label-smoothed) target
distribution. Without smoothing this is the familiar -alpha_y (1 - p_y)^gamma log p_y; with
gamma = 0 and no alpha it equals ``F.cross_entropy`` (including its label smoothing).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F


def inverse_frequency_alpha(counts: Sequence[int]) -> list[float]:
    """alpha='auto': per-class weights proportional to 1/frequency, normalised to mean 1.

    Classes absent from the training set get weight 0 (they never appear as targets anyway).
    """
    c = torch.tensor(counts, dtype=torch.float64)
    inv = torch.where(c > 0, 1.0 / c.clamp_min(1), torch.zeros_like(c))
    present = (c > 0).sum().clamp_min(1)
    return (inv * present / inv.sum().clamp_min(1e-12)).tolist()


class FocalLoss(nn.Module):
    """Softmax focal loss.

    Args:
        gamma: focusing parameter (0 = cross-entropy).
        alpha: optional per-class weights (length num_classes), applied by target class.
        label_smoothing: as in ``F.cross_entropy``.
        reduction: 'mean' (alpha-weighted mean, like ``F.cross_entropy`` with ``weight``), 'sum' or 'none'.
        logit_shift: optional per-class offsets added to the logits inside the loss only (logit
            adjustment, Menon et al. 2021: tau * log(class prior)); predictions use the raw logits.
    """

    def __init__(
        self,
        gamma: float = 2.0,
        alpha: Sequence[float] | None = None,
        label_smoothing: float = 0.0,
        reduction: str = "mean",
        logit_shift: Sequence[float] | None = None,
    ):
        super().__init__()
        if reduction not in ("mean", "sum", "none"):
            raise ValueError(f"reduction must be mean, sum or none, got {reduction!r}")
        self.gamma = float(gamma)
        self.label_smoothing = float(label_smoothing)
        self.reduction = reduction
        self.register_buffer("alpha", torch.tensor(alpha, dtype=torch.float32) if alpha is not None else None)
        self.register_buffer("logit_shift", torch.tensor(logit_shift, dtype=torch.float32) if logit_shift is not None else None)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        # fp32 regardless of autocast: log-softmax of bf16 logits loses too much precision.
        logits = logits.float()
        k = logits.shape[-1]
        if self.logit_shift is not None:
            if self.logit_shift.numel() != k:
                raise ValueError(f"logit_shift has {self.logit_shift.numel()} offsets but there are {k} classes")
            logits = logits + self.logit_shift.to(logits.device)
        logp = F.log_softmax(logits, dim=-1)  # (B, K)
        q = F.one_hot(target, k).to(logp.dtype)
        if self.label_smoothing > 0:
            q = q * (1 - self.label_smoothing) + self.label_smoothing / k
        focal = (1 - logp.exp()).clamp_min(0).pow(self.gamma) if self.gamma > 0 else 1.0
        loss = -(q * focal * logp).sum(-1)  # (B,)
        if self.alpha is not None:
            if self.alpha.numel() != k:
                raise ValueError(f"focal loss alpha has {self.alpha.numel()} weights but there are {k} classes")
            w = self.alpha.to(loss.device)[target]
            loss = loss * w
            if self.reduction == "mean":
                return loss.sum() / w.sum().clamp_min(1e-12)
        if self.reduction == "mean":
            return loss.mean()
        if self.reduction == "sum":
            return loss.sum()
        return loss


def create_loss(
    name: str, *, gamma: float = 2.0, alpha: Sequence[float] | None = None, label_smoothing: float = 0.0,
    logit_shift: Sequence[float] | None = None,
) -> nn.Module:
    """'focal' -> FocalLoss, 'ce' -> nn.CrossEntropyLoss (alpha used as class weights; with
    ``logit_shift`` a FocalLoss with gamma 0, which is the same cross-entropy)."""
    if name == "focal" or (name == "ce" and logit_shift is not None):
        return FocalLoss(gamma=gamma if name == "focal" else 0.0, alpha=alpha, label_smoothing=label_smoothing,
                         logit_shift=logit_shift)
    if name == "ce":
        weight = torch.tensor(alpha, dtype=torch.float32) if alpha is not None else None
        return nn.CrossEntropyLoss(weight=weight, label_smoothing=label_smoothing)
    raise ValueError(f"unknown loss {name!r}; choose focal or ce")
