"""Run logging on the main rank: local JSONL/CSV history (always) and Weights & Biases (optional).

Local files in the run folder: ``metrics.jsonl`` / ``metrics.csv`` (one row per epoch) and
``steps.jsonl`` (every ``log_every`` steps). On resume, rows at or after the resumed epoch are
dropped first, so the history has no duplicate and no gap whatever moment the run was killed at.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
from pathlib import Path
from typing import Any

from actionrec.engine.checkpoint import atomic_write_text

log = logging.getLogger(__name__)


def _clean(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


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
            self.wandb_run = wandb.init(dir=str(self.dir), **wandb_kwargs)

    @property
    def wandb_id(self) -> str | None:
        return self.wandb_run.id if self.wandb_run is not None else None

    def history(self) -> list[dict]:
        if not self.enabled or not self.jsonl.is_file():
            return []
        return [json.loads(line) for line in self.jsonl.read_text().splitlines() if line.strip()]

    def truncate(self, start_epoch: int) -> None:
        """Drop history rows of epochs >= ``start_epoch`` (1-based epochs in the files)."""
        if not self.enabled:
            return
        rows = [r for r in self.history() if r["epoch"] < start_epoch + 1]
        atomic_write_text(self.jsonl, "".join(json.dumps(r) + "\n" for r in rows))
        self._write_csv(rows)
        if self.steps.is_file():
            kept = [
                line
                for line in self.steps.read_text().splitlines()
                if line.strip() and json.loads(line).get("epoch", 0) < start_epoch
            ]
            atomic_write_text(self.steps, "".join(line + "\n" for line in kept))

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
        with open(self.steps, "a") as f:
            f.write(json.dumps({k: _clean(v) for k, v in metrics.items()}) + "\n")
        if self.wandb_run is not None:
            self.wandb_run.log({k: v for k, v in metrics.items() if k != "step"}, step=metrics["step"])

    def log_epoch(self, row: dict, *, step: int, extra_wandb: dict | None = None) -> None:
        """Append one epoch row (``row['epoch']`` is 1-based) to JSONL/CSV and W&B."""
        if not self.enabled:
            return
        row = {k: _clean(v) for k, v in row.items()}
        with open(self.jsonl, "a") as f:
            f.write(json.dumps(row) + "\n")
        self._write_csv(self.history())
        if self.wandb_run is not None:
            payload = {k: v for k, v in row.items() if v is not None}
            payload.update(extra_wandb or {})
            self.wandb_run.log(payload, step=step)

    def finish(self) -> None:
        if self.wandb_run is not None:
            self.wandb_run.finish()
            self.wandb_run = None
