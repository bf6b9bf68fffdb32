"""Optimizer and per-iteration learning-rate schedule (linear warmup, then cosine)."""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from actionrec.errors import UsageError


def param_groups(model: nn.Module, *, lr: float, weight_decay: float, backbone_lr_mult: float = 1.0) -> list[dict]:
    """Trainable parameters in up to four groups: backbone/head x decay/no-decay.

    Biases and normalisation weights (1-D tensors) get no weight decay, as in timm's
    ``param_groups_weight_decay``; the backbone may use a smaller learning rate than the head.
    """
    groups: dict[tuple[str, bool], list] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        part = "backbone" if name.startswith("backbone.") else "head"
        decay = p.ndim > 1
        groups.setdefault((part, decay), []).append(p)
    out = []
    for (part, decay), params in sorted(groups.items()):
        mult = backbone_lr_mult if part == "backbone" else 1.0
        out.append(
            {
                "params": params,
                "lr": lr * mult,
                "initial_lr": lr * mult,
                "weight_decay": weight_decay if decay else 0.0,
                "name": f"{part}_{'decay' if decay else 'no_decay'}",
            }
        )
    if not out:
        raise UsageError("the model has no trainable parameters")
    return out


def create_optimizer(
    model: nn.Module,
    name: str,
    *,
    lr: float,
    weight_decay: float,
    momentum: float = 0.9,
    betas: tuple[float, float] = (0.9, 0.999),
    backbone_lr_mult: float = 1.0,
) -> torch.optim.Optimizer:
    """AdamW or SGD (Nesterov momentum) over ``param_groups``."""
    groups = param_groups(model, lr=lr, weight_decay=weight_decay, backbone_lr_mult=backbone_lr_mult)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=betas)
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=momentum > 0)
    raise ValueError(f"unknown optimizer {name!r}; choose adamw or sgd")


def warmup_cosine_factor(step: int, *, warmup_steps: int, total_steps: int, min_ratio: float) -> float:
    """LR multiplier at optimizer step ``step``: linear 0->1 over warmup, cosine 1->min_ratio after."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    progress = min(max(progress, 0.0), 1.0)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def updates_per_epoch(batches: int, accum_steps: int) -> int:
    """Optimizer steps in an epoch of ``batches`` micro-batches: ceil(batches / accum_steps).

    The training loop also steps on a final partial group (``loop.accumulation_group``), so the
    schedule counts it; floor would end the cosine early and leave the last steps past its end.
    """
    return max(1, -(-batches // accum_steps))


def create_scheduler(
    optimizer: torch.optim.Optimizer, *, warmup_steps: int, total_steps: int, min_ratio: float
) -> torch.optim.lr_scheduler.LambdaLR:
    """Per-iteration LambdaLR; call ``scheduler.step()`` after every optimizer step."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda step: warmup_cosine_factor(step, warmup_steps=warmup_steps, total_steps=total_steps, min_ratio=min_ratio),
    )
