"""Optimizer and per-iteration learning-rate schedule (linear warmup, then cosine or plateau)."""

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


class WarmupPlateauLR:
    """Linear warmup per optimizer step, then ``ReduceLROnPlateau`` on the validation loss.

    ``step()`` is called after every optimizer step, like the cosine ``LambdaLR``, so the loop is
    the same for both; ``step_metric(val_loss)`` after every validation. Validations that end
    before warmup is over are ignored: the lr is still rising, so their losses say nothing about a
    plateau. The lr never drops below ``initial_lr * min_ratio`` of its group.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, *, warmup_steps: int, patience: int, factor: float,
                 min_ratio: float):
        self.optimizer = optimizer
        self.warmup_steps = warmup_steps
        self.base_lrs = [g.get("initial_lr", g["lr"]) for g in optimizer.param_groups]
        self.last_step = 0  # optimizer steps taken
        self._warm()
        self.plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode="min", factor=factor, patience=patience, min_lr=[lr * min_ratio for lr in self.base_lrs])

    def warming_up(self) -> bool:
        return self.last_step + 1 < self.warmup_steps

    def _warm(self) -> None:
        # Same ramp as warmup_cosine_factor: (step + 1) / warmup_steps, reaching the base lr at warmup_steps - 1.
        if self.last_step < self.warmup_steps:
            for g, base in zip(self.optimizer.param_groups, self.base_lrs):
                g["lr"] = base * (self.last_step + 1) / self.warmup_steps

    def step(self) -> None:
        self.last_step += 1
        self._warm()

    def step_metric(self, val_loss: float) -> None:
        if not self.warming_up():
            self.plateau.step(val_loss)

    def state_dict(self) -> dict:
        """Plain numbers only, so checkpoints holding it load with ``weights_only=True``."""
        return {"last_step": self.last_step, "plateau": self.plateau.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.last_step = int(state["last_step"])
        self.plateau.load_state_dict(state["plateau"])


def create_scheduler(
    optimizer: torch.optim.Optimizer,
    *,
    warmup_steps: int,
    total_steps: int,
    min_ratio: float,
    kind: str = "cosine",
    patience: int = 2,
    factor: float = 0.5,
    cycles: int = 1,
) -> torch.optim.lr_scheduler.LambdaLR | WarmupPlateauLR:
    """Per-iteration schedule; call ``scheduler.step()`` after every optimizer step.

    Args:
        warmup_steps: optimizer steps of linear warmup.
        total_steps: the cosine's length (unused by plateau).
        min_ratio: the lowest lr as a fraction of each group's initial lr.
        kind: "cosine" (``LambdaLR``) or "plateau" (``WarmupPlateauLR``; also call
            ``step_metric(val_loss)`` after each validation).
        patience, factor: plateau only: validations without improvement before the lr is
            multiplied by ``factor``.
        cycles: cosine only: the warmup and cosine run this many times, one after the other
            (``total_steps`` each; ``model.heads`` trains one head in each).
    """
    if kind == "plateau":
        return WarmupPlateauLR(optimizer, warmup_steps=warmup_steps, patience=patience, factor=factor,
                               min_ratio=min_ratio)
    if kind != "cosine":
        raise ValueError(f"unknown scheduler {kind!r}; choose cosine or plateau")
    def cycle_factor(step: int) -> float:
        step -= min(step // max(1, total_steps), cycles - 1) * total_steps  # the step within its cycle
        return warmup_cosine_factor(step, warmup_steps=warmup_steps, total_steps=total_steps, min_ratio=min_ratio)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, cycle_factor)



def describe_parameters(model: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[str, str]:
    """For the start-of-run log: ('11.20M params (0.30M trainable)', 'backbone(lr=1.00e-04, wd=0.05), ...')."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    groups = ", ".join(f"{g['name']}(lr={g['lr']:.2e}, wd={g['weight_decay']})" for g in optimizer.param_groups)
    return f"{total / 1e6:.2f}M params ({trainable / 1e6:.2f}M trainable)", groups
