"""Checkpoint format, atomic writes, last + best-k bookkeeping, safe loading, resuming (``Position``).

A checkpoint is a plain dict of tensors and Python primitives, so it loads with
``torch.load(weights_only=True)``: a crafted pickle that would run code is refused.
Files are written to a temp file in the same folder, fsynced, then renamed over the target, so a
run killed at any moment leaves either the old or the new checkpoint, never half of one.
The unwrapped model is saved (no DDP ``module.`` prefix), so DDP and single-process runs share files.
"""

from __future__ import annotations

import json
import logging
import math
import os
import pickle
import random
import re
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn as nn

from actionrec.errors import UserError

FORMAT_VERSION = 1
log = logging.getLogger(__name__)


class CheckpointError(UserError, RuntimeError):
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


def cuda_rng_restore_plan(num_saved: int, num_visible: int) -> list[int]:
    """The CUDA devices whose RNG state a resume restores: those both saved and visible now.

    A checkpoint holds one state per GPU visible when it was written (device index i is the i-th
    visible GPU). Resumed with fewer GPUs visible, the states of the missing ones are dropped; with
    more, the extra GPUs keep their current (seeded) state. ``torch.cuda.set_rng_state_all`` would
    index a device that does not exist and fail with an IndexError.
    """
    return list(range(min(max(num_saved, 0), max(num_visible, 0))))


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    saved = state.get("cuda") or []
    visible = torch.cuda.device_count() if torch.cuda.is_available() else 0
    plan = cuda_rng_restore_plan(len(saved), visible)
    if len(saved) != visible and (saved or visible):
        log.info("checkpoint holds the CUDA RNG state of %d GPU(s), %d visible now: restoring %d",
                 len(saved), visible, len(plan))
    for i in plan:
        torch.cuda.set_rng_state(saved[i], i)
    name, keys, pos, has_gauss, cached = json.loads(state["numpy"])
    np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    version, internal, gauss = json.loads(state["python"])
    random.setstate((version, tuple(internal), gauss))


def atomic_save(obj: Any, path: str | Path) -> None:
    """``torch.save`` to a temp file in the target folder, fsync, then atomic rename.

    Raises:
        CheckpointError: the write failed (disk full, file-size limit, read-only folder); ``path``
            still holds the previous checkpoint, untouched.
    """
    path = Path(path)
    try:
        _atomic_save(obj, path)
    except OSError as e:
        raise CheckpointError(f"{path}: cannot write the checkpoint ({e.strerror or e}); disk full, a file-size "
                              f"limit or a read-only folder? The previous {path.name} is unchanged") from None
    except RuntimeError as e:
        # torch.save reports a failed write as "... file write failed", or, when the OSError hit
        # inside its zip writer, as an "unexpected pos" RuntimeError raised while closing it.
        cause = e.__context__
        while cause is not None and not isinstance(cause, OSError):
            cause = cause.__context__
        if cause is None and "write" not in str(e):
            raise
        why = cause.strerror if cause is not None else str(e).splitlines()[0]
        raise CheckpointError(f"{path}: cannot write the checkpoint ({why}); disk full, a file-size limit or a "
                              f"read-only folder? The previous {path.name} is unchanged") from None


def _atomic_save(obj: Any, path: Path) -> None:
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


_TORCH_MAGIC = (b"PK\x03\x04", b"\x80")  # torch.save's zip format; the legacy pickle format


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """Load a checkpoint safely (``weights_only=True``); raise CheckpointError with the reason.

    Tells apart a file that is not a torch file at all (text, random bytes, a video), a damaged one
    (truncated zip), one that holds code (refused, nothing run), and a torch file that is not an
    actionrec checkpoint (a bare state dict, a list).
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}")
    if not path.is_file():
        raise CheckpointError(f"{path}: not a checkpoint: it is a directory or special file, not a .pt file")
    with open(path, "rb") as f:
        head = f.read(4)
    if not head:
        raise CheckpointError(f"{path}: not a checkpoint: the file is empty (0 bytes)")
    if not head.startswith(_TORCH_MAGIC):
        raise CheckpointError(f"{path}: not a checkpoint: not a file written by torch.save "
                              f"(it starts with {head!r})")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        found = re.search(r"GLOBAL ([\w.]+)", str(e))
        what = f" ({found.group(1)})" if found else ""
        raise CheckpointError(
            f"{path}: refused: it holds code objects{what} besides tensors and plain data, which could "
            "run code on loading; nothing in it was run. Use checkpoints written by tools/train.py"
        ) from None
    # What torch.load raises on damaged files: zip errors surface as RuntimeError, a cut legacy
    # pickle as EOFError, a garbled one as KeyError/IndexError/TypeError from the unpickler.
    except (RuntimeError, EOFError, OSError, ValueError, KeyError, IndexError, TypeError, AttributeError,
            UnicodeDecodeError, zipfile.BadZipFile) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise CheckpointError(f"{path}: not a checkpoint: unreadable or truncated torch file ({first})") from None
    if not isinstance(ckpt, dict) or "model" not in ckpt:
        kind = "a bare state dict" if isinstance(ckpt, dict) else f"a {type(ckpt).__name__}"
        raise CheckpointError(f"{path}: not an actionrec checkpoint: the torch file holds {kind}, no 'model' entry")
    if not isinstance(ckpt["model"], dict):
        raise CheckpointError(f"{path}: not an actionrec checkpoint: its 'model' entry is a "
                              f"{type(ckpt['model']).__name__}, not a state dict")
    return ckpt


def load_weights(model: nn.Module, state: dict, source: str | Path) -> None:
    """``model.load_state_dict(state)``, with a one-line CheckpointError naming ``source`` on a mismatch.

    torch's own message lists every mismatched tensor on its own line (hundreds for another backbone).
    """
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [(k, tuple(state[k].shape), tuple(v.shape)) for k, v in own.items()
              if k in state and hasattr(state[k], "shape") and tuple(state[k].shape) != tuple(v.shape)]
    if missing or unexpected or shapes:
        parts = []
        if shapes:
            k, got, want = shapes[0]
            parts.append(f"{len(shapes)} tensors of another shape (first: {k} is {list(got)}, the model's "
                         f"{list(want)})")
        if missing:
            parts.append(f"{len(missing)} missing (first: {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (first: {unexpected[0]})")
        raise CheckpointError(f"{source}: incompatible checkpoint: its weights do not fit the model its config "
                              f"describes: {'; '.join(parts)}")
    model.load_state_dict(state)


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
    """Keeps ``last.pt`` plus the best ``keep_best`` checkpoints by a metric.

    ``best.pt`` is always the top one; with ``keep_best > 1`` the kept ones are also stored as
    ``best-epochNNN.pt``. The ranking survives restarts through ``best.json`` in the run folder,
    whose entries name their metric: entries ranked by another metric (the run was resumed with
    another ``train.best_metric``) are dropped, so the next validation becomes the new best.

    Args:
        run_dir: the run folder.
        keep_best: how many best checkpoints to keep.
        metric: the metric's name, stored with each entry (files without one held ``top1``).
        higher_is_better: False for a loss. A NaN metric ranks last either way.
    """

    def __init__(self, run_dir: str | Path, keep_best: int = 1, *, metric: str = "top1", higher_is_better: bool = True):
        self.dir = Path(run_dir)
        self.keep_best = keep_best
        self.metric, self.higher_is_better = metric, higher_is_better
        self.index_path = self.dir / "best.json"
        saved = json.loads(self.index_path.read_text()) if self.index_path.is_file() else []
        self.best: list[dict] = [e for e in saved if e.get("name", "top1") == metric]
        if len(self.best) < len(saved):
            log.warning("%s ranks checkpoints by %s, this run by %s: the next validation starts a new ranking "
                        "(best.pt is replaced then)", self.index_path, saved[0].get("name", "top1"), metric)

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
        new = {"epoch": epoch, "metric": float(metric), "name": self.metric}
        entries = [e for e in self.best if e["epoch"] != epoch] + [new]
        sign = -1.0 if self.higher_is_better else 1.0
        entries.sort(key=lambda e: (math.isnan(e["metric"]), sign * e["metric"] if not math.isnan(e["metric"]) else 0.0,
                                    e["epoch"]))
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
    ckpt: dict, *, model: nn.Module, optimizer, scheduler, scaler, class_names: list[str], source: str | Path = "checkpoint"
) -> tuple[int, int, int]:
    """Load model/optimizer/scheduler/scaler/RNG state from ``ckpt`` (read from ``source``, named in errors).

    Returns:
        (start_epoch, skip_batches, step): the 0-based epoch to run next, the batches of it that
        were already done (mid-epoch checkpoint), and the global optimizer step.
    """
    if list(ckpt.get("class_names", [])) != list(class_names):
        raise CheckpointError(
            f"{source}: checkpoint classes {ckpt.get('class_names')} differ from the dataset's {class_names}; "
            "resume with the dataset it was trained on"
        )
    load_weights(unwrap(model), ckpt["model"], source)
    if ckpt.get("optimizer") is not None:
        optimizer.load_state_dict(ckpt["optimizer"])
    if ckpt.get("scheduler") is not None:
        saved_plateau, plateau = "plateau" in ckpt["scheduler"], hasattr(scheduler, "step_metric")
        if saved_plateau != plateau:
            raise CheckpointError(
                f"{source}: written with optim.scheduler={'plateau' if saved_plateau else 'cosine'}, resumed with "
                f"{'plateau' if plateau else 'cosine'}; resume with the scheduler it was trained with")
        scheduler.load_state_dict(ckpt["scheduler"])
    if ckpt.get("scaler") is not None:
        scaler.load_state_dict(ckpt["scaler"])
    if ckpt.get("rng"):
        set_rng_state(ckpt["rng"])
    if ckpt.get("epoch_complete", True):
        return ckpt["epoch"] + 1, 0, ckpt["step"]
    return ckpt["epoch"], int(ckpt["extra"].get("batches_done", 0)), ckpt["step"]


@dataclass(frozen=True)
class Position:
    """Where training continues: the 0-based epoch, its batches already done, the global optimizer step."""

    epoch: int = 0
    batches_done: int = 0
    step: int = 0


def resume_training(run_dir: str | Path, resume: str, **state) -> tuple[Position, str | None, Path | None]:
    """``--resume``: the run's state restored from the checkpoint ``find_resume`` picks.

    Args:
        run_dir: the run folder, where 'auto' looks for last.pt.
        resume: '', 'auto' or a checkpoint path.
        **state: ``restore_training_state``'s keywords (model, optimizer, scheduler, scaler, class_names).

    Returns:
        (where training continues, the W&B run id stored with it, the checkpoint read);
        ``(Position(), None, None)`` when there is nothing to resume.
    """
    path = find_resume(run_dir, resume)
    if path is None:
        return Position(), None, None
    ckpt = load_checkpoint(path)
    pos = Position(*restore_training_state(ckpt, source=path, **state))
    return pos, ckpt["extra"].get("wandb_id"), path


class RunCheckpoints:
    """A training run's last.pt (and best-k through ``saver``): the live training state at a ``Position``.

    Args:
        saver: the run folder's ``CheckpointSaver``.
        model: the plain (unwrapped) model.
        optimizer, scheduler, scaler: their state goes into every checkpoint.
        config: the resolved config as a plain dict.
        class_names: the dataset's classes in label order.
        wandb_id: the W&B run a resumed run continues (None without W&B).
    """

    def __init__(self, saver: CheckpointSaver, *, model: nn.Module, optimizer, scheduler, scaler, config: dict,
                 class_names: list[str], wandb_id: str | None = None):
        self.saver = saver
        self.state = dict(model=model, optimizer=optimizer, scheduler=scheduler, scaler=scaler, config=config,
                          class_names=class_names)
        self.wandb_id = wandb_id

    def save_last(self, pos: Position, *, complete: bool, metrics: dict | None = None) -> dict:
        """Write last.pt at ``pos``; ``complete``: epoch ``pos.epoch`` is done and resuming starts the next."""
        ckpt = make_checkpoint(**self.state, epoch=pos.epoch, step=pos.step, metrics=metrics, epoch_complete=complete,
                               extra={"batches_done": pos.batches_done, "wandb_id": self.wandb_id})
        self.saver.save_last(ckpt)
        return ckpt

    def mid_epoch(self, epoch: int, batches_per_epoch: int) -> Callable[[int, int], None]:
        """``train_one_epoch``'s ``on_save`` for ``epoch``: last.pt after any batch but the epoch's last."""

        def on_save(batches_done: int, step: int) -> None:
            # No mid-epoch save after the last batch: the epoch-end save follows, and resuming into
            # an epoch with nothing left to run would log that epoch with empty training metrics.
            if batches_done < batches_per_epoch:
                self.save_last(Position(epoch, batches_done, step), complete=False)

        return on_save
