"""Checkpoint format, atomic writes, last + best-k bookkeeping, safe loading.

A checkpoint is a plain dict of tensors and Python primitives, so it loads with
``torch.load(weights_only=True)``: a crafted pickle that would run code is refused.
Files are written to a temp file in the same folder, fsynced, then renamed over the target, so a
run killed at any moment leaves either the old or the new checkpoint, never half of one.
The unwrapped model is saved (no DDP ``module.`` prefix), so DDP and single-process runs share files.
"""

from __future__ import annotations

import json
import os
import pickle
import random
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

FORMAT_VERSION = 1


class CheckpointError(RuntimeError):
    """A checkpoint is missing, unsafe, corrupt or incompatible; the message names the file."""


def unwrap(model: nn.Module) -> nn.Module:
    """The underlying model of a DDP / torch.compile wrapper."""
    while True:
        if hasattr(model, "module") and isinstance(model.module, nn.Module):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


def rng_state() -> dict:
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": json.dumps(_np_state_to_json(np.random.get_state())),
        "python": json.dumps(_py_state_to_json(random.getstate())),
    }


def _np_state_to_json(state: tuple) -> list:
    name, keys, pos, has_gauss, cached = state
    return [name, keys.tolist(), int(pos), int(has_gauss), float(cached)]


def _py_state_to_json(state: tuple) -> list:
    version, internal, gauss = state
    return [version, list(internal), gauss]


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    name, keys, pos, has_gauss, cached = json.loads(state["numpy"])
    np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    version, internal, gauss = json.loads(state["python"])
    random.setstate((version, tuple(internal), gauss))


def atomic_save(obj: Any, path: str | Path) -> None:
    """``torch.save`` to a temp file in the target folder, fsync, then atomic rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)  # make the rename itself durable
        finally:
            os.close(dir_fd)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """Load a checkpoint safely (``weights_only=True``); raise CheckpointError with the reason."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(
            f"{path}: refused to load: the file holds Python objects other than tensors and plain data "
            f"(possibly malicious; nothing in it was run). Detail: {str(e).splitlines()[0]}"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: unreadable or truncated checkpoint: {e}") from None
    if not isinstance(ckpt, dict) or "model" not in ckpt:
        raise CheckpointError(f"{path}: not an actionrec checkpoint (no 'model' entry)")
    return ckpt


def make_checkpoint(
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None,
    scheduler: Any | None,
    scaler: torch.amp.GradScaler | None,
    epoch: int,
    step: int,
    config: dict,
    class_names: list[str],
    metrics: dict | None = None,
    epoch_complete: bool = True,
    extra: dict | None = None,
) -> dict:
    """Assemble the checkpoint dict.

    Args:
        epoch: the last epoch whose training finished (``epoch_complete``) or is in progress.
        step: optimizer steps taken so far.
        config: the resolved config as a plain dict.
        epoch_complete: False for a mid-epoch save (every N steps); resume then redoes that epoch.
    """
    return {
        "format_version": FORMAT_VERSION,
        "model": unwrap(model).state_dict(),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "scaler": scaler.state_dict() if scaler is not None and scaler.is_enabled() else None,
        "epoch": epoch,
        "step": step,
        "epoch_complete": epoch_complete,
        "config": config,
        "class_names": list(class_names),
        "metrics": metrics or {},
        "rng": rng_state(),
        "extra": extra or {},
    }


class CheckpointSaver:
    """Keeps ``last.pt`` plus the best ``keep_best`` checkpoints by a metric (higher is better).

    ``best.pt`` is always the top one; with ``keep_best > 1`` the kept ones are also stored as
    ``best-epochNNN.pt``. The ranking survives restarts through ``best.json`` in the run folder.
    """

    def __init__(self, run_dir: str | Path, keep_best: int = 1):
        self.dir = Path(run_dir)
        self.keep_best = keep_best
        self.index_path = self.dir / "best.json"
        self.best: list[dict] = json.loads(self.index_path.read_text()) if self.index_path.is_file() else []

    def remove_stale_temp_files(self) -> list[Path]:
        """Delete temp files of ``atomic_save`` calls that a killed run never finished.

        Call on the saving rank before training starts (nothing is being written then). They are
        full-size partial checkpoints, never loaded (the rename did not happen), so only disk is lost.
        """
        stale = [p for p in self.dir.glob(".*.pt.*.tmp") if p.is_file()] if self.dir.is_dir() else []
        for p in stale:
            p.unlink(missing_ok=True)
        return stale

    @property
    def last_path(self) -> Path:
        return self.dir / "last.pt"

    @property
    def best_path(self) -> Path:
        return self.dir / "best.pt"

    def save_last(self, ckpt: dict) -> Path:
        atomic_save(ckpt, self.last_path)
        return self.last_path

    def update_best(self, ckpt: dict, metric: float, epoch: int) -> bool:
        """Record ``ckpt`` if it ranks among the best; returns True when it is the new top one."""
        entries = [e for e in self.best if e["epoch"] != epoch] + [{"epoch": epoch, "metric": float(metric)}]
        entries.sort(key=lambda e: (-e["metric"], e["epoch"]))
        kept, dropped = entries[: self.keep_best], entries[self.keep_best :]
        if not any(e["epoch"] == epoch for e in kept):
            return False
        is_top = kept[0]["epoch"] == epoch
        if self.keep_best > 1:
            atomic_save(ckpt, self._epoch_path(epoch))
        if is_top:
            atomic_save(ckpt, self.best_path)
        for e in dropped:
            self._epoch_path(e["epoch"]).unlink(missing_ok=True)
        self.best = kept
        atomic_write_text(self.index_path, json.dumps(kept))
        return is_top

    def _epoch_path(self, epoch: int) -> Path:
        return self.dir / f"best-epoch{epoch:03d}.pt"


def atomic_write_text(path: str | Path, text: str) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def latest_checkpoint(root: str | Path = "runs", name: str = "best.pt") -> Path:
    """The most recently written ``name`` anywhere under ``root`` (the demo's default model).

    Raises:
        CheckpointError: there is none.
    """
    root = Path(root).expanduser()
    found = [p for p in root.rglob(name) if p.is_file()] if root.is_dir() else []
    if not found:
        raise CheckpointError(f"no {name} under {root}/: train a model first (tools/train.py) or pass --checkpoint")
    return max(found, key=lambda p: p.stat().st_mtime)


def find_resume(run_dir: str | Path, resume: str) -> Path | None:
    """'' -> None; 'auto' -> run_dir/last.pt if it exists; else the given path (must exist)."""
    if not resume:
        return None
    if resume == "auto":
        last = Path(run_dir) / "last.pt"
        return last if last.is_file() else None
    path = Path(resume).expanduser()
    if not path.is_file():
        raise CheckpointError(f"--resume: checkpoint not found: {path}")
    return path


def restore_training_state(
    ckpt: dict, *, model: nn.Module, optimizer, scheduler, scaler, class_names: list[str]
) -> tuple[int, int, int]:
    """Load model/optimizer/scheduler/scaler/RNG state from ``ckpt``.

    Returns:
        (start_epoch, skip_batches, step): the 0-based epoch to run next, the batches of it that
        were already done (mid-epoch checkpoint), and the global optimizer step.
    """
    if list(ckpt.get("class_names", [])) != list(class_names):
        raise CheckpointError(
            f"checkpoint classes {ckpt.get('class_names')} differ from the dataset's {class_names}; "
            "resume with the dataset it was trained on"
        )
    unwrap(model).load_state_dict(ckpt["model"])
    if ckpt.get("optimizer") is not None:
        optimizer.load_state_dict(ckpt["optimizer"])
    if ckpt.get("scheduler") is not None:
        scheduler.load_state_dict(ckpt["scheduler"])
    if ckpt.get("scaler") is not None:
        scaler.load_state_dict(ckpt["scaler"])
    if ckpt.get("rng"):
        set_rng_state(ckpt["rng"])
    if ckpt.get("epoch_complete", True):
        return ckpt["epoch"] + 1, 0, ckpt["step"]
    return ckpt["epoch"], int(ckpt["extra"].get("batches_done", 0)), ckpt["step"]
