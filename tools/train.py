#!/usr/bin/env python
"""Train a CNN + BiLSTM action recogniser on a UCF101-style folder.

    python tools/train.py                                   # quickstart on built-in synthetic data
    python tools/train.py --config configs/ucf101_resnet50_bilstm.yaml data.root=/data/UCF-101
    python tools/train.py --config configs/quickstart.yaml optim.lr=1e-3 train.epochs=5 --resume auto
    torchrun --nproc_per_node=4 tools/train.py --config ...  # DDP
"""

import argparse
import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from actionrec import build
from actionrec.cli import exit_on_error, setup_logging
from actionrec.config import Config, config_to_dict, load_config, save_config
from actionrec.data.loader import set_epoch
from actionrec.engine import distributed as D
from actionrec.engine.checkpoint import Position, RunCheckpoints, resume_training, unwrap
from actionrec.engine.loop import evaluate, resolve_amp, setup_amp, train_one_epoch
from actionrec.engine.metrics import EPOCH_HEADER, epoch_line, epoch_row, val_columns
from actionrec.engine.optim import create_optimizer, describe_parameters
from actionrec.engine.plots import plot_confusion, plot_curves
from actionrec.engine.preemption import PREEMPTED_EXIT, StopRequest
from actionrec.engine.tracking import RunLogger

log = logging.getLogger("actionrec.train")
DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "quickstart.yaml"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="experiment YAML (default: %(default)s)")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. optim.lr=3e-4 data.clip_len=8")
    p.add_argument("--resume", default="", help="'auto' (last.pt of this run, if any) or a checkpoint path")
    p.add_argument("--stop-after", type=int, default=0, metavar="N",
                   help="exit after N epochs in this invocation (time-limited cluster jobs); continue with --resume auto")
    p.add_argument("--debug", action="store_true", help="show full tracebacks")
    return p.parse_args(argv)


@dataclass
class Run:
    """What the epoch loop uses, built once by ``main``."""

    cfg: Config
    dist: D.DistInfo
    run_dir: Path
    devices: tuple[torch.device, torch.device]  # (cnn, head); inputs, autocast and pinned memory follow the cnn
    data: build.TrainData
    model: torch.nn.Module  # possibly DDP-wrapped
    core: torch.nn.Module  # the plain model: optimizer and checkpoints see no 'module.' keys
    criterion: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    autocast: Any
    scaler: torch.amp.GradScaler
    distill: Any  # engine.distill.Distiller or None
    steps_per_epoch: int
    checkpoints: RunCheckpoints | None = None
    tracker: RunLogger | None = None


def setup_process(cfg: Config, dist: D.DistInfo, device: torch.device, run_dir: Path) -> None:
    """Logging, CPU threads, seed and determinism of this process."""
    setup_logging(run_dir / "train.log" if dist.is_main else None, main=dist.is_main)
    if device.type == "cpu":  # leave the data workers their cores: oversubscribed OpenMP threads stall
        log.info("torch CPU threads: %d", D.set_cpu_threads(cfg.train.cpu_threads, num_workers=cfg.data.num_workers))
    D.seed_process(cfg.train.seed, dist.rank, dist.world_size, deterministic=cfg.train.deterministic)


def build_run(cfg: Config, args: argparse.Namespace) -> Run:
    """Devices, data, model, loss, optimizer, schedule and precision."""
    dist = D.init_distributed(cfg.train.dist_backend, device=cfg.model.placement.cnn or cfg.train.device)
    # Devices first, so a missing GPU or two ranks sharing one fails before any data is read.
    place = cfg.model.placement
    cnn_dev, head_dev = D.resolve_placement(cfg.train.device, place.cnn, place.lstm, dist.local_rank)
    D.bind_devices([cnn_dev, head_dev])
    run_dir = Path(cfg.train.output_dir) / (cfg.train.name or Path(args.config).stem)
    setup_process(cfg, dist, cnn_dev, run_dir)
    # The synthetic dataset is generated under a file lock, so ranks can race safely.
    split = build.dataset_split(cfg.data)
    loader_kw = dict(rank=dist.rank, world_size=dist.world_size, pin_memory=cnn_dev.type == "cuda")
    data = build.train_data(cfg, split, **loader_kw)
    model = build.model_from(cfg, len(data.classes)).place(cnn_dev, head_dev)
    if dist.distributed:
        # model.heads > 1: the heads not training are out of the graph
        model = D.wrap_ddp(model, sync_bn=cfg.train.sync_bn, find_unused_parameters=cfg.model.heads > 1)
    core = unwrap(model)
    if cfg.train.cache_features:
        # Once the cache is filled, the twin search and the head epochs read it in this process: no
        # decode workers need cores now.
        def rechoose_threads():
            if head_dev.type == "cpu":
                log.info("torch CPU threads for the twin search and the head epochs: %d",
                         D.set_cpu_threads(cfg.train.cpu_threads, num_workers=0))
        # auto reverse_pairs / mirror_pairs: found
        cfg = build.use_cached_features(cfg, data, split, core, barrier=D.barrier, on_cached=rechoose_threads,
                                        **loader_kw)
    core.set_test_twins(build.test_twins_from(cfg, data.classes))  # eval.reverse_views: validation as tools/eval.py
    criterion = build.loss_from(cfg, data.train_ds.labels, data.classes).to(head_dev)
    optimizer = create_optimizer(core, cfg.optim.name, **build.optimizer_kwargs(cfg))
    steps_per_epoch = min(len(data.train_loader), cfg.train.max_steps_per_epoch or len(data.train_loader))
    scheduler = build.scheduler_from(cfg, optimizer, steps_per_epoch)
    autocast, scaler = setup_amp(cnn_dev, cfg.train.amp)
    distill = build.distiller_from(cfg, data.classes, cnn_dev, head_dev, autocast)  # None without train.distill.teacher
    return Run(cfg, dist, run_dir, (cnn_dev, head_dev), data, model, core, criterion, optimizer, scheduler, autocast,
               scaler, distill, steps_per_epoch)


def resume(run: Run, resume_arg: str) -> tuple[Position, str | None]:
    """(where training continues, the W&B run id to continue): model, optimizer, schedule, scaler, RNG,
    position and W&B run id come from the checkpoint."""
    pos, wandb_id, path = resume_training(run.run_dir, resume_arg, model=run.core, optimizer=run.optimizer,
                                          scheduler=run.scheduler, scaler=run.scaler, class_names=run.data.classes)
    if path is not None:
        if run.dist.distributed:  # the checkpoint holds rank 0's RNG state; give each rank its own stream again
            torch.manual_seed(D.rank_seed(run.cfg.train.seed, run.dist.rank, run.dist.world_size, pos.step))
        log.info("resumed from %s: epoch %d, batch %d, step %d", path, pos.epoch + 1, pos.batches_done, pos.step)
    return pos, wandb_id


def start_logging(run: Run, pos: Position, wandb_id: str | None) -> None:
    """Checkpoint saver, run logger, the resolved config on disk and the start-of-run summary."""
    cfg, dist, core, (cnn_dev, head_dev) = run.cfg, run.dist, run.core, run.devices
    saver = build.checkpoint_saver(cfg, run.run_dir)
    run.tracker = RunLogger(run.run_dir, wandb_kwargs=build.wandb_kwargs(cfg, run.run_dir, resume_id=wandb_id),
                            enabled=dist.is_main)
    run.checkpoints = RunCheckpoints(saver, model=core, optimizer=run.optimizer, scheduler=run.scheduler,
                                     scaler=run.scaler, config=config_to_dict(cfg), class_names=run.data.classes,
                                     wandb_id=run.tracker.wandb_id)
    if dist.is_main:
        save_config(cfg, run.run_dir / "config.yaml")
        run.tracker.truncate(pos.epoch, pos.step)
        for stale in saver.remove_stale_temp_files():
            log.info("removed %s, left by a run killed while saving", stale.name)
    log.info("run %s | %d train / %d val videos, %d classes | world size %d | device %s (cnn %s, head %s) | amp %s (%s)",
             run.run_dir, len(run.data.train_ds), len(run.data.val_ds), len(run.data.classes), dist.world_size,
             cnn_dev, cnn_dev, head_dev, resolve_amp(cnn_dev, cfg.train.amp), cfg.train.amp)
    params, groups = describe_parameters(core, run.optimizer)
    log.info("model %s + %s head: %s | effective batch %d | %s groups: %s", cfg.model.backbone, cfg.model.temporal,
             params, cfg.train.batch_size * dist.world_size * cfg.optim.accum_steps, cfg.optim.name, groups)


def save_preempted(run: Run, stop: StopRequest, pos: Position, *, written: bool = False) -> str:
    """Write last.pt at ``pos`` (unless ``written``) once every rank stopped; returns the signal's name."""
    if run.dist.is_main and not written:
        run.checkpoints.save_last(pos, complete=False)
    D.barrier()  # every rank stopped at this step; the checkpoint is on disk before anyone exits
    return stop.report(pos, run.run_dir / "last.pt")


def train_epoch(run: Run, pos: Position, stop: StopRequest) -> dict:
    cfg, loader = run.cfg, run.data.train_loader
    # The main rank writes last.pt every train.save_every_steps.
    on_save = run.checkpoints.mid_epoch(pos.epoch, run.steps_per_epoch) if run.dist.is_main else None
    set_epoch(loader, pos.epoch)
    if cfg.model.heads > 1:  # the heads train one after the other, train.epochs / model.heads epochs each
        per_head = cfg.train.epochs // cfg.model.heads
        run.core.train_head(pos.epoch // per_head)
        if pos.epoch % per_head == 0 and not pos.batches_done:
            log.info("model.heads: head %d of %d trains in epochs %d-%d", pos.epoch // per_head + 1, cfg.model.heads,
                     pos.epoch + 1, pos.epoch + per_head)
    if pos.batches_done:
        loader.sampler.set_skip(pos.batches_done * cfg.train.batch_size)
    return train_one_epoch(
        run.model, loader, run.criterion, run.optimizer, run.scheduler, epoch=pos.epoch, autocast=run.autocast,
        scaler=run.scaler, skip_batches=pos.batches_done, show_progress=run.dist.is_main and sys.stderr.isatty(),
        on_log=run.tracker.log_step, step=pos.step, on_save=on_save, on_failed=run.data.failures.record,
        stop_requested=stop.requested, distill=run.distill, **build.loop_kwargs(cfg))


def validate_epoch(run: Run, epoch: int, row: dict) -> dict:
    """Evaluate, add the val_* keys to ``row`` and step a plateau schedule; returns the report."""
    val = evaluate(run.model, run.data.val_loader, run.criterion, class_names=run.data.classes, autocast=run.autocast,
                   show_progress=run.dist.is_main and sys.stderr.isatty())
    run.data.failures.add(val["failed"])
    row.update(val_columns(val))
    if run.cfg.optim.scheduler == "plateau":  # every rank sees the same gathered loss, so lrs stay equal
        run.scheduler.step_metric(val["loss"])
    return val


def record_epoch(run: Run, epoch: int, step: int, tr: dict, row: dict, val: dict) -> None:
    """Main rank: log the row, save last.pt (and best.pt), plot, print the table line."""
    cfg, classes, tracker, validated = run.cfg, run.data.classes, run.tracker, "val_top1" in row
    best_key = f"val_{cfg.train.best_metric}"  # the history row's key of the metric that ranks best.pt
    media = tracker.eval_media(val, classes) if validated else {}
    if media and build.wandb_videos_due(cfg, epoch):
        media.update(tracker.val_videos(run.data.val_ds, val, classes, mean=cfg.data.mean, std=cfg.data.std))
    tracker.log_epoch(row, step=step, extra_wandb=media)
    ckpt = run.checkpoints.save_last(Position(epoch, 0, step), complete=True, metrics=row)
    if validated and run.checkpoints.saver.update_best(ckpt, row[best_key], epoch + 1):
        plot_confusion(val["confusion"], classes, run.run_dir / "plots" / "confusion_best.png",
                       title=f"best: epoch {epoch + 1}, {cfg.train.best_metric} {row[best_key]:.3f}")
    plot_curves(tracker.history(), run.run_dir / "plots" / "curves.png")
    print(epoch_line(row, tr, val["per_class_acc"] if validated else None), flush=True)


def train_epochs(run: Run, pos: Position, end_epoch: int, stop: StopRequest) -> tuple[dict, str]:
    """Epochs ``pos.epoch`` .. ``end_epoch - 1``: (the last validation report, the stop signal's name or '')."""
    cfg, failures, last_val = run.cfg, run.data.failures, {}
    while pos.epoch < end_epoch:
        epoch, tr = pos.epoch, train_epoch(run, pos, stop)
        pos = Position(epoch + 1, 0, tr["step"])
        if tr["preempted"] and tr["batches_done"] < run.steps_per_epoch:
            return last_val, save_preempted(run, stop, Position(epoch, tr["batches_done"], tr["step"]))
        failures.add(tr["failed"])
        row = epoch_row(epoch, tr)
        if (epoch + 1) % cfg.train.val_every == 0 or epoch + 1 == cfg.train.epochs:
            last_val = validate_epoch(run, epoch, row)
        row["bad_videos"] = len(failures.reasons)
        failures.check()
        if run.dist.is_main:
            record_epoch(run, epoch, tr["step"], tr, row, last_val)
        D.barrier()
        if tr["preempted"]:  # stopped on the epoch's last batch: its checkpoint is written above
            return last_val, save_preempted(run, stop, Position(epoch, run.steps_per_epoch, tr["step"]), written=True)
    return last_val, ""


def finish(run: Run) -> None:
    """Main rank: the best result, skipped videos and the best model as a W&B artifact; then teardown."""
    cfg, saver, failures = run.cfg, run.checkpoints.saver, run.data.failures
    if run.dist.is_main:
        best = saver.best[0] if saver.best else None
        log.info("done: best val %s %s | checkpoints in %s", cfg.train.best_metric,
                 f"{best['metric']:.4f} (epoch {best['epoch']})" if best else "n/a", run.run_dir)
        if failures.reasons:
            log.warning("%d videos were skipped as unreadable: %s", len(failures.reasons), ", ".join(sorted(failures.reasons)))
        if best and cfg.logging.wandb.log_model:
            run.tracker.log_model(saver.best_path, aliases=["best", f"epoch-{best['epoch']}"], metadata={
                "config": config_to_dict(cfg), "class_names": run.data.classes, "epoch": best["epoch"],
                "best_metric": cfg.train.best_metric, f"val_{cfg.train.best_metric}": best["metric"]})
    run.tracker.finish()
    D.cleanup()


def main(args: argparse.Namespace, stop: StopRequest | None = None) -> dict:
    """Train; ``stop`` (installed signal handlers) ends the run at the next step with a checkpoint."""
    stop = stop if stop is not None else StopRequest()  # not installed: never requested
    cfg = load_config(args.config, args.overrides)
    run = build_run(cfg, args)
    pos, wandb_id = resume(run, args.resume)
    start_logging(run, pos, wandb_id)
    if run.dist.is_main:
        print(EPOCH_HEADER, flush=True)
    end_epoch = min(cfg.train.epochs, pos.epoch + args.stop_after) if args.stop_after else cfg.train.epochs
    last_val, preempted = train_epochs(run, pos, end_epoch, stop)
    finish(run)
    return {"run_dir": str(run.run_dir), "last_val": {k: last_val.get(k) for k in ("top1", "top5", "mean_class_acc", "loss")},
            "best": run.checkpoints.saver.best, "preempted": preempted}


if __name__ == "__main__":
    args = parse_args()
    # SIGTERM/SIGUSR1 (a scheduler's preemption notice) end the run at the next step, checkpointed.
    with exit_on_error(args.debug), StopRequest() as stop:
        if main(args, stop)["preempted"]:
            sys.exit(PREEMPTED_EXIT)
