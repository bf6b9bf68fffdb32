"""Run logging on the main rank: local JSONL/CSV history (always) and Weights & Biases (optional).

Local files in the run folder: ``metrics.jsonl`` / ``metrics.csv`` (one row per epoch) and
``steps.jsonl`` (every ``log_every`` steps). On resume, rows at or after the resumed epoch are
dropped first, so the history has no duplicate and no gap whatever moment the run was killed at.

W&B runs go to ``<run_dir>/wandb/``. Offline mode (the default) writes everything there and opens
no network connection; ``wandb sync <run_dir>/wandb/offline-run-*`` uploads it later. A resumed
run passes the id stored in the checkpoint, so its offline folder carries the same run id and
syncs into the same W&B run. Media helpers (confusion matrix, per-class table, videos, PNG
pictures, model artifact) do nothing when W&B is off, so ``disabled`` never starts a W&B process or writes a file.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from actionrec.engine.checkpoint import atomic_write_text
from actionrec.errors import UsageError

log = logging.getLogger(__name__)


def _clean(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def _read_jsonl(path: Path) -> list[dict]:
    """Rows of a JSONL file; a torn last line (the run was killed mid-append) is dropped."""
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


class RunLogger:
    """Append-only metric history of one run plus an optional W&B run.

    Args:
        run_dir: the run folder.
        wandb_kwargs: None for no W&B, else keyword arguments for ``wandb.init`` (mode, project,
            entity, name, tags, group, notes, config, id, resume).
        enabled: False on non-main ranks: every method is then a no-op.
    """

    def __init__(self, run_dir: str | Path, *, wandb_kwargs: dict | None = None, enabled: bool = True):
        self.dir = Path(run_dir)
        self.enabled = enabled
        self.wandb_run = None
        if not enabled:
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        self.jsonl = self.dir / "metrics.jsonl"
        self.csv = self.dir / "metrics.csv"
        self.steps = self.dir / "steps.jsonl"
        if wandb_kwargs and wandb_kwargs.get("mode") != "disabled":
            import wandb

            os.environ.setdefault("WANDB_SILENT", "true")
            # wandb's own usage telemetry follows the process-wide settings, not wandb.init's mode:
            # without this, an offline run with WANDB_MODE unset still posted to W&B's servers
            # (seen with strace, wandb 0.31).
            wandb.setup(settings=wandb.Settings(mode=wandb_kwargs["mode"]))
            try:
                self.wandb_run = wandb.init(dir=str(self.dir), **wandb_kwargs)
            except wandb.errors.UsageError as e:  # typically online mode without an API key
                raise UsageError(
                    f"W&B {wandb_kwargs['mode']} mode: {e} Set WANDB_API_KEY or run `wandb login`, or train with "
                    "logging.wandb.mode=offline and upload later with `wandb sync`."
                ) from None
            # The run summary shows the best epoch, not the last one.
            for key, summary in (("val_top1", "max"), ("val_top5", "max"), ("val_mean_class_acc", "max"),
                                 ("val_loss", "min")):
                self.wandb_run.define_metric(key, summary=summary)
            log.info("W&B %s run %s in %s", self.wandb_run.settings.mode, self.wandb_run.id, Path(self.wandb_run.dir).parent)

    @property
    def wandb_id(self) -> str | None:
        return self.wandb_run.id if self.wandb_run is not None else None

    def history(self) -> list[dict]:
        if not self.enabled or not self.jsonl.is_file():
            return []
        return _read_jsonl(self.jsonl)

    def truncate(self, start_epoch: int, step: int | None = None) -> None:
        """Drop history rows the resumed run will write again.

        Epoch rows of epochs >= ``start_epoch`` (1-based in the files) go; step rows after
        optimizer step ``step`` go (without ``step``: those of epochs >= ``start_epoch``), so a
        mid-epoch resume keeps the steps its checkpoint already covers.
        """
        if not self.enabled:
            return
        rows = [r for r in self.history() if r["epoch"] < start_epoch + 1]
        atomic_write_text(self.jsonl, "".join(json.dumps(r) + "\n" for r in rows))
        self._write_csv(rows)
        if self.steps.is_file():
            keep = (lambda r: r.get("step", 0) <= step) if step is not None else (lambda r: r.get("epoch", 0) < start_epoch)
            kept = [r for r in _read_jsonl(self.steps) if keep(r)]
            atomic_write_text(self.steps, "".join(json.dumps(r) + "\n" for r in kept))

    def _write_csv(self, rows: list[dict]) -> None:
        keys: list[str] = []
        for r in rows:
            keys += [k for k in r if k not in keys]
        tmp = self.csv.with_name(".metrics.csv.tmp")
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=keys)
            w.writeheader()
            w.writerows(rows)
        os.replace(tmp, self.csv)

    def log_step(self, metrics: dict) -> None:
        if not self.enabled:
            return
        _append(self.steps, json.dumps({k: _clean(v) for k, v in metrics.items()}) + "\n")
        if self.wandb_run is not None:
            self.wandb_run.log({k: v for k, v in metrics.items() if k != "step"}, step=metrics["step"])

    def log_epoch(self, row: dict, *, step: int, extra_wandb: dict | None = None) -> None:
        """Append one epoch row (``row['epoch']`` is 1-based) to JSONL/CSV and W&B."""
        if not self.enabled:
            return
        row = {k: _clean(v) for k, v in row.items()}
        _append(self.jsonl, json.dumps(row) + "\n")
        self._write_csv(self.history())
        if self.wandb_run is not None:
            payload = {k: v for k, v in row.items() if v is not None}
            payload.update(extra_wandb or {})
            self.wandb_run.log(payload, step=step)

    def eval_media(self, val: dict, class_names: Sequence[str]) -> dict:
        """W&B confusion-matrix plot, per-class accuracy table and mean class accuracy of one validation.

        Args:
            val: ``evaluate`` output (``scores``, ``labels``, ``per_class_acc``, ``confusion``).
            class_names: the K class names.

        Returns:
            ``{"val/confusion_matrix": plot, "val/per_class_acc": table, "val/mean_class_acc": number}``;
            empty without W&B.
        """
        if self.wandb_run is None or not len(val.get("labels", [])):
            return {}
        import wandb

        support = np.asarray(val["confusion"]).sum(1)
        rows = [[c, val["per_class_acc"][c], int(support[i])] for i, c in enumerate(class_names) if c in val["per_class_acc"]]
        return {
            "val/confusion_matrix": wandb.plot.confusion_matrix(
                y_true=val["labels"].tolist(), preds=val["scores"].argmax(1).tolist(), class_names=list(class_names)
            ),
            "val/per_class_acc": wandb.Table(columns=["class", "accuracy", "videos"], data=rows),
            "val/mean_class_acc": val["mean_class_acc"],  # beside the val/acc/<class> scalars of the epoch row
        }

    def val_videos(
        self,
        dataset,
        val: dict,
        class_names: Sequence[str],
        *,
        mean: Sequence[float],
        std: Sequence[float],
        num: int = 4,
        fps: int = 4,
    ) -> dict:
        """A few validation clips as W&B videos captioned with true and predicted class.

        The same ``num`` videos (evenly spaced over the validation set) are shown every time, so
        their predictions can be compared across epochs. Clips are re-read from ``dataset`` (first
        view only) rather than kept from the loop: a handful of decodes is cheaper than holding
        every validation clip in memory.

        Args:
            dataset: the eval dataset; items hold ``clip`` (V, T, C, H, W), normalised.
            val: ``evaluate`` output; ``scores`` rows belong to dataset ``indices``.
            class_names: the K class names.
            mean, std: the normalisation to undo (``data.mean`` / ``data.std``).
            num: how many videos.
            fps: GIF frame rate.

        Returns:
            ``{"val/videos": [wandb.Video, ...]}``; empty without W&B.
        """
        if self.wandb_run is None or not len(val.get("indices", [])):
            return {}
        import wandb

        row_of = {int(i): r for r, i in enumerate(val["indices"])}
        videos = []
        for idx in sorted(set(np.linspace(0, len(dataset) - 1, num).round().astype(int).tolist())):
            if idx not in row_of:  # the video failed to decode during validation
                continue
            item = dataset[idx]
            if item["clip"] is None:
                continue
            probs = val["scores"][row_of[idx]]
            pred = int(probs.argmax())
            caption = f"true: {class_names[item['label']]} | pred: {class_names[pred]} ({probs[pred]:.2f})"
            gif = encode_gif(clip_to_uint8(item["clip"][0], mean, std), fps=fps)
            videos.append(wandb.Video(io.BytesIO(gif), caption=caption, format="gif"))
        return {"val/videos": videos} if videos else {}

    def log_model(self, path: str | Path, *, metadata: dict, aliases: Sequence[str] = ("best",)) -> None:
        """Log a checkpoint file as a W&B model artifact named ``model-<run id>`` (no-op without W&B).

        W&B copies the file into its staging folder, so later writes to ``path`` (a resumed run
        improving on it) do not change what an offline run syncs.
        """
        if self.wandb_run is None:
            return
        import wandb

        art = wandb.Artifact(f"model-{self.wandb_run.id}", type="model", metadata=metadata)
        art.add_file(str(path), name=Path(path).name)
        self.wandb_run.log_artifact(art, aliases=list(aliases))

    def log_pictures(self, pictures: dict[str, tuple[str | Path, str]], metrics: dict | None = None) -> None:
        """PNG files as W&B images, with optional numbers, in one history row (no-op without W&B).

        Args:
            pictures: ``{key: (png path, caption)}``, e.g. ``{"eval/mistakes": (path, "...")}``.
            metrics: plain numbers logged in the same row (None values are left out).
        """
        if self.wandb_run is None:
            return
        import wandb

        payload = {k: v for k, v in (metrics or {}).items() if v is not None}
        payload.update({key: wandb.Image(str(p), caption=caption) for key, (p, caption) in pictures.items()})
        self.wandb_run.log(payload)

    def finish(self) -> None:
        if self.wandb_run is not None:
            run_dir, offline = Path(self.wandb_run.dir).parent, self.wandb_run.settings.mode == "offline"
            self.wandb_run.finish()
            self.wandb_run = None
            if offline:
                log.info("W&B offline run saved; upload it with: wandb sync %s", run_dir)


def log_pictures_run(run_dir: str | Path, wandb_kwargs: dict | None, *, job_type: str, notes: str,
                     pictures: dict[str, tuple[str | Path, str]], metrics: dict | None = None) -> None:
    """A W&B run of its own for a tool's pictures (eval, explain), named ``<name>-<job_type>``.

    Args:
        run_dir: where the run's W&B files go.
        wandb_kwargs: ``wandb.init``'s arguments (``build.wandb_kwargs``); None: W&B is off, nothing happens.
        job_type, notes: the run's W&B job type and notes.
        pictures, metrics: as ``RunLogger.log_pictures``.
    """
    if wandb_kwargs is None:
        return
    kwargs = dict(wandb_kwargs, job_type=job_type, name=f"{wandb_kwargs['name']}-{job_type}", notes=notes)
    tracker = RunLogger(run_dir, wandb_kwargs=kwargs)
    tracker.log_pictures(pictures, metrics=metrics)
    tracker.finish()


def clip_to_uint8(clip: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """Undo the eval transform's normalisation: (T, C, H, W) float -> (T, H, W, C) uint8 RGB."""
    m = torch.as_tensor(mean, dtype=clip.dtype).view(1, -1, 1, 1)
    s = torch.as_tensor(std, dtype=clip.dtype).view(1, -1, 1, 1)
    rgb = ((clip * s + m) * 255.0).round().clamp(0, 255).to(torch.uint8)
    return rgb.permute(0, 2, 3, 1).contiguous().numpy()


def encode_gif(frames: np.ndarray, fps: int = 4) -> bytes:
    """(T, H, W, 3) uint8 -> looping GIF bytes.

    GIF via Pillow (already a matplotlib dependency) because ``wandb.Video`` needs moviepy to
    encode raw arrays, while it takes an encoded GIF as is.
    """
    from PIL import Image

    images = [Image.fromarray(f) for f in frames]
    buf = io.BytesIO()
    images[0].save(buf, format="GIF", save_all=True, append_images=images[1:], duration=int(1000 / fps), loop=0)
    return buf.getvalue()


def _append(path: Path, text: str) -> None:
    """Append to a history file; a failed write (disk full, read-only) names the file."""
    try:
        with open(path, "a") as f:
            f.write(text)
    except OSError as e:
        raise OSError(e.errno, e.strerror, str(path)) from None
