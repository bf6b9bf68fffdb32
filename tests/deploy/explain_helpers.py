"""Generated clips whose evidence is known (where: a moving square; when: a flash in the middle frames),
brief training on them, and the checkpoint/video files the tools read."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch

from actionrec.config import IMAGENET_MEAN, IMAGENET_STD, config_to_dict, load_config
from actionrec.engine.checkpoint import atomic_save, make_checkpoint

RED = (230, 30, 30)
BLUE = (30, 60, 230)


def grey_background(rng: np.random.Generator, size: int) -> np.ndarray:
    """(size, size, 3) float32 soft grey blobs that carry no class.

    Low contrast on purpose: over strong texture a briefly trained net may detect the square by
    the texture it hides (activations that drop), evidence Grad-CAM's positive part cannot show.
    """
    coarse = rng.integers(100, 156, (8, 8)).astype(np.float32)
    return cv2.resize(coarse, (size, size), interpolation=cv2.INTER_CUBIC)[..., None].repeat(3, 2)


def square_clip(rng: np.random.Generator, colour: tuple[int, int, int] | None, *, frames: int = 2, size: int = 128,
                side: int = 32) -> tuple[np.ndarray, list[tuple[int, int, int, int]]]:
    """A square of ``colour`` moving in a straight line over grey blobs, or (None) the blobs alone.

    Returns:
        (T, size, size, 3) RGB uint8 frames and the square's (x0, y0, x1, y1) box in each frame.
    """
    bg = grey_background(rng, size)
    x, y = rng.uniform(0, size - side, 2)
    vx, vy = rng.uniform(-1, 1, 2) * (size - side) / (2 * frames)
    out, boxes = [], []
    for t in range(frames):
        f = bg.copy()
        xi, yi = int(np.clip(x + vx * t, 0, size - side)), int(np.clip(y + vy * t, 0, size - side))
        if colour is not None:
            f[yi:yi + side, xi:xi + side] = colour
        f += rng.normal(0, 6, (size, size, 1))  # sensor noise on the square too: hiding noise is no cue
        out.append(np.clip(f, 0, 255).astype(np.uint8))
        boxes.append((xi, yi, xi + side, yi + side))
    return np.stack(out), boxes


def event_clip(rng: np.random.Generator, label: int, *, frames: int = 8, size: int = 16,
               event: tuple[int, ...] = (3, 4)) -> np.ndarray:
    """Grey noise; in the ``event`` frames only, a square that is red (label 0) or blue (label 1)."""
    side = size // 2
    x, y = rng.integers(0, size - side, 2)
    out = []
    for t in range(frames):
        f = np.clip(128 + rng.normal(0, 25, (size, size, 1)), 0, 255).repeat(3, 2)
        if t in event:
            f[y:y + side, x:x + side] = (RED, BLUE)[label]
        out.append(f.astype(np.uint8))
    return np.stack(out)


def normalise(frames: np.ndarray) -> torch.Tensor:
    """(T, H, W, 3) RGB uint8 -> (T, 3, H, W) float32, normalised as the eval transform does."""
    x = (frames / 255.0 - np.asarray(IMAGENET_MEAN)) / np.asarray(IMAGENET_STD)
    return torch.from_numpy(x.transpose(0, 3, 1, 2).astype(np.float32))


def train_briefly(model: torch.nn.Module, clips: torch.Tensor, labels: torch.Tensor, *, steps: int, lr: float = 3e-3,
                  batch: int = 8, seed: int = 0) -> float:
    """AdamW on random batches of (N, T, C, H, W) clips, then batch-norm statistics of the final weights.

    Returns:
        The last batch's loss; the model is left in eval mode.
    """
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    model.train()
    for _ in range(steps):
        idx = torch.randint(0, len(clips), (batch,), generator=gen)
        loss = torch.nn.functional.cross_entropy(model(clips[idx]), labels[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    # Precise BN (as in SlowFast): after a few fast-moving steps the running averages lag the
    # weights, and eval mode would see other statistics than training did.
    norms = [(m, m.momentum) for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for m, _ in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the passes below
    with torch.no_grad():
        for chunk in clips.split(batch):
            model(chunk)
    for m, momentum in norms:
        m.momentum = momentum
    model.eval()
    return float(loss.detach())


def model_config(overrides: list[str]):
    """A config (W&B off) for a model trained here; ``build.model_from(cfg, K)`` rebuilds it."""
    return load_config(None, ["logging.wandb.mode=disabled", "model.dropout=0.0", "model.lstm_dropout=0.0", *overrides])


def save_checkpoint(model: torch.nn.Module, cfg, class_names: list[str], path: Path) -> Path:
    """The model in the format tools/train.py writes."""
    ckpt = make_checkpoint(model=model, optimizer=None, scheduler=None, scaler=None, epoch=0, step=0,
                           config=config_to_dict(cfg), class_names=class_names)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_save(ckpt, path)
    return path


def write_video(path: Path, frames: np.ndarray, fps: float = 25.0) -> Path:
    """(T, H, W, 3) RGB uint8 -> an mp4v .mp4."""
    path.parent.mkdir(parents=True, exist_ok=True)
    t, h, w, _ = frames.shape
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
    for f in frames:
        writer.write(cv2.cvtColor(f, cv2.COLOR_RGB2BGR))
    writer.release()
    return path
