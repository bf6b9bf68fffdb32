#!/usr/bin/env python
"""Train a CNN + BiLSTM action recogniser on a UCF101-style folder.

    python tools/train.py                                   # quickstart on built-in synthetic data
    python tools/train.py --config configs/ucf101_resnet50_bilstm.yaml data.root=/data/UCF-101
    python tools/train.py --config configs/quickstart.yaml optim.lr=1e-3 train.epochs=5 --resume auto
    torchrun --nproc_per_node=4 tools/train.py --config ...  # DDP
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

import torch

from actionrec import build
from actionrec.cli import exit_on_error, setup_logging
from actionrec.config import config_to_dict, load_config, save_config
from actionrec.data.dataset import DecodeFailures
from actionrec.data.loader import build_loader, set_epoch
from actionrec.engine import checkpoint as ckpt_io
from actionrec.engine import distributed as D
from actionrec.engine.loop import cpu_threads, evaluate, resolve_amp, setup_amp, train_one_epoch
from actionrec.engine.metrics import format_per_class
from actionrec.engine.optim import create_optimizer, create_scheduler, updates_per_epoch
from actionrec.engine.plots import plot_confusion, plot_curves
from actionrec.engine.preemption import PREEMPTED_EXIT, StopRequest
from actionrec.engine.tracking import RunLogger

log = logging.getLogger("actionrec.train")
DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "quickstart.yaml"
HEADER = f"{'epoch':>5} {'loss':>7} {'acc':>6} {'val_loss':>8} {'top1':>6} {'top5':>6} {'mca':>6} {'lr':>9} {'clips/s':>7} {'time':>6} {'bad':>4}"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="experiment YAML (default: %(default)s)")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. optim.lr=3e-4 data.clip_len=8")
    p.add_argument("--resume", default="", help="'auto' (last.pt of this run, if any) or a checkpoint path")
    p.add_argument("--stop-after", type=int, default=0, metavar="N",
                   help="exit after N epochs in this invocation (time-limited cluster jobs); continue with --resume auto")
    p.add_argument("--debug", action="store_true", help="show full tracebacks")
    return p.parse_args(argv)


def main(args: argparse.Namespace, stop: StopRequest | None = None) -> dict:
    """Train; ``stop`` (installed signal handlers) ends the run at the next step with a checkpoint."""
    stop = stop if stop is not None else StopRequest()  # not installed: never requested
    cfg = load_config(args.config, args.overrides)
    dist = D.init_distributed(cfg.train.dist_backend, device=cfg.model.placement.cnn or cfg.train.device)
    # Devices first, so a missing GPU or two ranks sharing one fails before any data is read.
    place = cfg.model.placement
    cnn_dev, head_dev = D.resolve_placement(cfg.train.device, place.cnn, place.lstm, dist.local_rank)
    D.bind_devices([cnn_dev, head_dev])
    device = cnn_dev  # inputs, autocast and pinned memory follow the backbone
    run_dir = Path(cfg.train.output_dir) / (cfg.train.name or Path(args.config).stem)
    setup_logging(run_dir / "train.log" if dist.is_main else None, main=dist.is_main)
    if device.type == "cpu":  # leave the data workers their cores: oversubscribed OpenMP threads stall
        torch.set_num_threads(cpu_threads(cfg.train.cpu_threads, num_workers=cfg.data.num_workers,
                                          procs_per_node=int(os.environ.get("LOCAL_WORLD_SIZE", 1))))
        log.info("torch CPU threads: %d", torch.get_num_threads())
    torch.manual_seed(D.rank_seed(cfg.train.seed, dist.rank, dist.world_size))
    if cfg.train.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False

    # Data. The synthetic dataset is generated under a file lock, so ranks can race safely.
    split = build.dataset_split(cfg.data)
    classes, num_classes = list(split.classes), len(split.classes)
    train_ds, val_ds = build.train_dataset(cfg, split), build.eval_dataset(cfg, split.test, num_clips=cfg.train.val_clips)
    loader_kw = dict(num_workers=cfg.data.num_workers, rank=dist.rank, world_size=dist.world_size,
                     seed=cfg.train.seed, pin_memory=device.type == "cuda", timeout=cfg.data.loader_timeout)
    train_loader = build_loader(train_ds, batch_size=cfg.train.batch_size, train=True, labels=train_ds.labels,
                                balance=cfg.data.balance, **loader_kw)
    val_loader = build_loader(val_ds, batch_size=cfg.eval.batch_size, train=False, **loader_kw)
    failures = DecodeFailures(len(train_ds) + len(val_ds), cfg.data.max_bad_fraction)

    # Model, loss, optimizer, schedule, precision.
    model = build.model_from(cfg, num_classes).place(cnn_dev, head_dev)
    if dist.distributed:
        model = D.wrap_ddp(model, sync_bn=cfg.train.sync_bn)
    core = ckpt_io.unwrap(model)  # optimizer and checkpoints see the plain model (no 'module.' keys)
    if cfg.train.cache_features:  # frozen backbone: its features are computed once, epochs train the head only
        train_feats, val_feats, bad = build.feature_datasets(cfg, split, core, rank=dist.rank,
                                                             world_size=dist.world_size, barrier=D.barrier)
        failures.add(bad)
        feat_kw = {**loader_kw, "num_workers": 0}  # in-memory tensors: worker processes would only add overhead
        train_loader = build_loader(train_feats, batch_size=cfg.train.batch_size, train=True, labels=train_feats.labels,
                                    balance=cfg.data.balance, **feat_kw)
        val_loader = build_loader(val_feats, batch_size=cfg.eval.batch_size, train=False, **feat_kw)
    criterion = build.loss_from(cfg, train_ds.labels, num_classes).to(head_dev)
    optimizer = create_optimizer(core, cfg.optim.name, **build.optimizer_kwargs(cfg))
    steps_per_epoch = len(train_loader) if not cfg.train.max_steps_per_epoch else min(len(train_loader), cfg.train.max_steps_per_epoch)
    updates = updates_per_epoch(steps_per_epoch, cfg.optim.accum_steps)
    scheduler = create_scheduler(optimizer, warmup_steps=int(cfg.optim.warmup_epochs * updates),
                                 total_steps=cfg.train.epochs * updates, min_ratio=cfg.optim.min_lr_ratio,
                                 kind=cfg.optim.scheduler, patience=cfg.optim.plateau_patience,
                                 factor=cfg.optim.plateau_factor)
    autocast, scaler = setup_amp(device, cfg.train.amp)
    distill = build.distiller_from(cfg, classes, cnn_dev, head_dev, autocast)  # None without train.distill.teacher
    if distill is not None:
        log.info("distilling from %s: weight %g, temperature %g", cfg.train.distill.teacher, distill.weight,
                 distill.temperature)

    # Resume: model, optimizer, schedule, scaler, RNG, epoch and W&B run id come from the checkpoint.
    start_epoch, skip_batches, step, wandb_id = 0, 0, 0, None
    resume_path = ckpt_io.find_resume(run_dir, args.resume)
    if resume_path is not None:
        ckpt = ckpt_io.load_checkpoint(resume_path)
        start_epoch, skip_batches, step = ckpt_io.restore_training_state(
            ckpt, model=core, optimizer=optimizer, scheduler=scheduler, scaler=scaler, class_names=classes,
            source=resume_path)
        wandb_id = ckpt["extra"].get("wandb_id")
        if dist.distributed:  # the checkpoint holds rank 0's RNG state; give each rank its own stream again
            torch.manual_seed(D.rank_seed(cfg.train.seed, dist.rank, dist.world_size, step))
        log.info("resumed from %s: epoch %d, batch %d, step %d", resume_path, start_epoch + 1, skip_batches, step)
        del ckpt
    best_key = f"val_{cfg.train.best_metric}"  # the history row's key of the metric that ranks best.pt
    saver = ckpt_io.CheckpointSaver(run_dir, cfg.train.keep_best, metric=cfg.train.best_metric,
                                    higher_is_better=cfg.train.best_metric != "loss")
    tracker = RunLogger(run_dir, wandb_kwargs=build.wandb_kwargs(cfg, run_dir, resume_id=wandb_id), enabled=dist.is_main)
    if dist.is_main:
        save_config(cfg, run_dir / "config.yaml")
        tracker.truncate(start_epoch, step)
        for stale in saver.remove_stale_temp_files():
            log.info("removed %s, left by a run killed while saving", stale.name)
    n_params = sum(p.numel() for p in core.parameters())
    n_train = sum(p.numel() for p in core.parameters() if p.requires_grad)
    log.info("run %s | %d train / %d val videos, %d classes | world size %d | device %s (cnn %s, head %s) | amp %s (%s)",
             run_dir, len(train_ds), len(val_ds), num_classes, dist.world_size, device, cnn_dev, head_dev,
             resolve_amp(device, cfg.train.amp), cfg.train.amp)
    log.info("model %s + %s head: %.2fM params (%.2fM trainable) | effective batch %d | %s groups: %s",
             cfg.model.backbone, cfg.model.temporal, n_params / 1e6, n_train / 1e6,
             cfg.train.batch_size * dist.world_size * cfg.optim.accum_steps, cfg.optim.name,
             ", ".join(f"{g['name']}(lr={g['lr']:.2e}, wd={g['weight_decay']})" for g in optimizer.param_groups))

    def save(epoch: int, *, complete: bool, batches_done: int = 0, metrics: dict | None = None,
             at_step: int | None = None) -> dict:
        ckpt = ckpt_io.make_checkpoint(
            model=core, optimizer=optimizer, scheduler=scheduler, scaler=scaler, epoch=epoch,
            step=step if at_step is None else at_step,
            config=config_to_dict(cfg), class_names=classes, metrics=metrics, epoch_complete=complete,
            extra={"batches_done": batches_done, "wandb_id": tracker.wandb_id})
        saver.save_last(ckpt)
        return ckpt

    def save_preempted(epoch: int, batches_done: int, *, written: bool = False) -> str:
        if dist.is_main and not written:
            save(epoch, complete=False, batches_done=batches_done)
        D.barrier()  # every rank stopped at this step; the checkpoint is on disk before anyone exits
        log.warning("%s received: stopped after step %d (epoch %d, batch %d); checkpoint %s written; "
                    "continue with --resume auto (exit status %d)", stop.name or "another rank's stop request", step,
                    epoch + 1, batches_done, run_dir / "last.pt", PREEMPTED_EXIT)
        return stop.name or "another rank's stop request"

    if dist.is_main:
        print(HEADER, flush=True)
    last_val: dict = {}
    preempted = ""
    end_epoch = min(cfg.train.epochs, start_epoch + args.stop_after) if args.stop_after else cfg.train.epochs
    for epoch in range(start_epoch, end_epoch):
        set_epoch(train_loader, epoch)
        if skip_batches:
            train_loader.sampler.set_skip(skip_batches * cfg.train.batch_size)
        tr = train_one_epoch(
            model, train_loader, criterion, optimizer, scheduler, epoch=epoch, autocast=autocast, scaler=scaler,
            accum_steps=cfg.optim.accum_steps, clip_grad_norm=cfg.optim.clip_grad_norm, nan_policy=cfg.train.nan_policy,
            max_steps=cfg.train.max_steps_per_epoch, skip_batches=skip_batches, log_every=cfg.train.log_every,
            show_progress=dist.is_main and sys.stderr.isatty(), on_log=tracker.log_step, step=step,
            # No mid-epoch save after the last batch: the epoch-end save follows, and resuming into
            # an epoch with nothing left to run would log that epoch with empty training metrics.
            on_save=lambda done, at: dist.is_main and done < steps_per_epoch and save(
                epoch, complete=False, batches_done=done, at_step=at),
            save_every_steps=cfg.train.save_every_steps, on_failed=failures.record, stop_requested=stop.requested,
            distill=distill)
        step, skip_batches = tr["step"], 0
        if tr["preempted"] and tr["batches_done"] < steps_per_epoch:
            preempted = save_preempted(epoch, tr["batches_done"])
            break
        failures.add(tr["failed"])
        row = {"epoch": epoch + 1, "step": step, "train_loss": tr["loss"], "train_acc": tr["acc"], "lr": tr["lr"],
               "clips_per_s": tr["clips_per_s"], "data_wait_frac": tr["data_wait_frac"], "time_s": tr["time_s"],
               "skipped_nonfinite": tr["skipped_nonfinite"]}
        if (epoch + 1) % cfg.train.val_every == 0 or epoch + 1 == cfg.train.epochs:
            last_val = evaluate(model, val_loader, criterion, class_names=classes, autocast=autocast,
                                show_progress=dist.is_main and sys.stderr.isatty())
            failures.add(last_val["failed"])
            row.update({f"val_{k}": last_val[k] for k in ("loss", "top1", "top5", "mean_class_acc")})
            row.update({f"val/acc/{c}": a for c, a in last_val["per_class_acc"].items()})
            if cfg.optim.scheduler == "plateau":  # every rank sees the same gathered loss, so lrs stay equal
                scheduler.step_metric(last_val["loss"])
        row["bad_videos"] = len(failures.reasons)
        failures.check()
        if dist.is_main:
            media = tracker.eval_media(last_val, classes) if "val_top1" in row else {}
            if media and build.wandb_videos_due(cfg, epoch):
                media.update(tracker.val_videos(val_ds, last_val, classes, mean=cfg.data.mean, std=cfg.data.std))
            tracker.log_epoch(row, step=step, extra_wandb=media)
            ckpt = save(epoch, complete=True, metrics=row)
            if "val_top1" in row and saver.update_best(ckpt, row[best_key], epoch + 1):
                plot_confusion(last_val["confusion"], classes, run_dir / "plots" / "confusion_best.png",
                               title=f"best: epoch {epoch + 1}, {cfg.train.best_metric} {row[best_key]:.3f}")
            plot_curves(tracker.history(), run_dir / "plots" / "curves.png")
            v = lambda k: f"{row[k]:.3f}" if k in row else "-"  # noqa: E731
            print(f"{epoch + 1:>5} {tr['loss']:>7.4f} {tr['acc']:>6.3f} {v('val_loss'):>8} {v('val_top1'):>6} "
                  f"{v('val_top5'):>6} {v('val_mean_class_acc'):>6} {tr['lr']:>9.2e} {tr['clips_per_s']:>7.1f} "
                  f"{tr['time_s']:>5.0f}s {len(failures.reasons):>4}", flush=True)
            if "val_top1" in row:
                print(f"{'':8}per-class: {format_per_class(last_val['per_class_acc'])}", flush=True)
        D.barrier()
        if tr["preempted"]:  # stopped on the epoch's last batch: its checkpoint is written above
            preempted = save_preempted(epoch, steps_per_epoch, written=True)
            break
    if dist.is_main:
        best = saver.best[0] if saver.best else None
        log.info("done: best val %s %s | checkpoints in %s", cfg.train.best_metric,
                 f"{best['metric']:.4f} (epoch {best['epoch']})" if best else "n/a", run_dir)
        if failures.reasons:
            log.warning("%d videos were skipped as unreadable: %s", len(failures.reasons), ", ".join(sorted(failures.reasons)))
        if best and cfg.logging.wandb.log_model:
            tracker.log_model(saver.best_path, aliases=["best", f"epoch-{best['epoch']}"], metadata={
                "config": config_to_dict(cfg), "class_names": classes, "epoch": best["epoch"],
                "best_metric": cfg.train.best_metric, best_key: best["metric"]})
    tracker.finish()
    D.cleanup()
    return {"run_dir": str(run_dir), "last_val": {k: last_val.get(k) for k in ("top1", "top5", "mean_class_acc", "loss")},
            "best": saver.best, "preempted": preempted}


if __name__ == "__main__":
    args = parse_args()
    # SIGTERM/SIGUSR1 (a scheduler's preemption notice) end the run at the next step, checkpointed.
    with exit_on_error(args.debug), StopRequest() as stop:
        if main(args, stop)["preempted"]:
            sys.exit(PREEMPTED_EXIT)
