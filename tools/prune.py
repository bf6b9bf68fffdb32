#!/usr/bin/env python
"""Structured channel pruning of a checkpoint's backbone, then a short fine-tune; measured before and after.

    python tools/prune.py runs/quickstart/best.pt --flops 0.5              # -> runs/quickstart/pruned/
    python tools/prune.py runs/quickstart/best.pt --flops 0.5 --epochs 10 optim.lr=1e-3 --out pruned/

torch-pruning removes whole backbone channels (the weakest by L2 norm, dependency-aware: residual
adds, batch norms, the grid pooling and the LSTM's inputs shrink together) until at most --flops of
the model's multiply-adds remain, then fine-tunes for --epochs on the checkpoint's training split
(its config's optimizer and loss; dotted overrides change them), with the unpruned model as a
distillation teacher (--distill WEIGHT, 0: labels only). Writes --out/pruned.pt, a
checkpoint every tool loads (demo, eval, export, serve, explain: the channel counts are stored as
plain data, so it loads with weights_only=True), and --out/prune_report.json: FLOPs, parameters,
per-clip latency and validation top-1 before pruning, after pruning and after the fine-tune.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import torch

from actionrec import build
from actionrec.cli import run_tool, setup_logging
from actionrec.config import config_to_dict
from actionrec.data.loader import build_loader
from actionrec.deploy.export import median_ms
from actionrec.engine import checkpoint as ckpt_io
from actionrec.engine.distill import Distiller
from actionrec.engine.loop import evaluate, setup_amp, train_one_epoch
from actionrec.engine.optim import create_optimizer, create_scheduler
from actionrec.engine.threads import cpu_threads
from actionrec.errors import UsageError
from actionrec.models import pruning

log = logging.getLogger("actionrec.prune")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", type=Path, help="checkpoint written by tools/train.py")
    p.add_argument("overrides", nargs="*", help="dotted overrides for the fine-tune (e.g. optim.lr=1e-3 data.root=...)")
    p.add_argument("--flops", type=float, default=0.5, help="fraction of the FLOPs to keep, in (0, 1) (default: %(default)s)")
    p.add_argument("--epochs", type=int, default=5, help="fine-tuning epochs after pruning; 0: none (default: %(default)s)")
    p.add_argument("--distill", type=float, default=1.0, metavar="WEIGHT",
                   help="fine-tune with the unpruned model as the teacher (train.distill's loss, temperature "
                        "train.distill.temperature) at this weight; 0: labels only (default: %(default)s)")
    p.add_argument("--round-to", type=int, default=8,
                   help="keep channel counts multiples of this (CPU kernels prefer widths of 8/16; default: %(default)s)")
    p.add_argument("--out", type=Path, default=None, help="output folder (default: <checkpoint dir>/pruned)")
    p.add_argument("--num-clips", type=int, default=1, help="clips per validation video (default: %(default)s)")
    p.add_argument("--threads", type=int, default=0, help="CPU threads (0: auto, README 'CPU threads')")
    p.add_argument("--debug", action="store_true", help="show full tracebacks")
    args = p.parse_args(argv)
    if not 0 < args.flops < 1:
        p.error(f"--flops must be in (0, 1), the fraction of the FLOPs to keep; got {args.flops}")
    if args.epochs < 0 or args.num_clips < 1 or args.round_to < 1 or args.distill < 0:
        p.error("--epochs and --distill must be >= 0, --num-clips and --round-to >= 1")
    return args


def measure(model, loader, criterion, classes, example) -> dict:
    """MACs and parameters (torch-pruning's count), median latency of one clip, validation top-1."""
    macs, params = pruning.count_macs(model, example)
    with torch.inference_mode():
        ms = median_ms(lambda: model(example), iters=10)
    top1 = evaluate(model, loader, criterion, class_names=classes, autocast=setup_amp(torch.device("cpu"), "none")[0],
                    show_progress=False)["top1"]
    return {"macs": macs, "gflops": 2 * macs / 1e9, "params": params, "clip_ms": ms, "top1": top1}


def fine_tune(model, cfg, split, criterion, epochs: int, distill=None) -> list[dict]:
    """``epochs`` of the trainer's loop (config optimizer, cosine schedule without warmup), fp32 on the CPU,
    with ``distill`` (an ``engine.distill.Distiller``) adding the teacher's soft targets."""
    ds = build.train_dataset(cfg, split)
    loader = build_loader(ds, batch_size=cfg.train.batch_size, train=True, num_workers=cfg.data.num_workers,
                          seed=cfg.train.seed, timeout=cfg.data.loader_timeout)
    optimizer = create_optimizer(model, cfg.optim.name, **build.optimizer_kwargs(cfg))
    steps = len(loader) if not cfg.train.max_steps_per_epoch else min(len(loader), cfg.train.max_steps_per_epoch)
    scheduler = create_scheduler(optimizer, warmup_steps=0, total_steps=max(1, epochs * steps),
                                 min_ratio=cfg.optim.min_lr_ratio)
    autocast, scaler = setup_amp(torch.device("cpu"), "none")
    history, step = [], 0
    for epoch in range(epochs):
        tr = train_one_epoch(model, loader, criterion, optimizer, scheduler, epoch=epoch, autocast=autocast, scaler=scaler,
                             clip_grad_norm=cfg.optim.clip_grad_norm, max_steps=cfg.train.max_steps_per_epoch,
                             show_progress=False, step=step, distill=distill)
        step = tr["step"]
        log.info("fine-tune epoch %d: loss %.4f, train acc %.3f", epoch + 1, tr["loss"], tr["acc"])
        history.append({"epoch": epoch + 1, "loss": tr["loss"], "acc": tr["acc"]})
    return history


def save(model, cfg, classes, arch: dict, out: Path, report: dict) -> Path:
    """Write pruned.pt (atomically) and prune_report.json into ``out``, created only now."""
    ckpt = ckpt_io.make_checkpoint(model=model, optimizer=None, scheduler=None, scaler=None, epoch=0, step=0,
                                   config=config_to_dict(cfg), class_names=classes)
    ckpt["pruned"] = {"modules": arch, "flops_kept": report["after_fine_tune"]["macs"] / report["before"]["macs"]}
    out.mkdir(parents=True, exist_ok=True)
    ckpt_io.atomic_save(ckpt, out / "pruned.pt")
    ckpt_io.atomic_write_text(out / "prune_report.json", json.dumps(report, indent=2))
    return out / "pruned.pt"


def main(args: argparse.Namespace) -> dict:
    setup_logging()
    cfg, model, classes = build.model_from_checkpoint(args.checkpoint, args.overrides)
    if cfg.model.motion != "none" or cfg.model.contrast:
        # Their hooks read fixed backbone stages whose channels pruning would change.
        raise UsageError(f"{args.checkpoint}: pruning a model with model.motion or model.contrast is not supported "
                         "yet; prune one trained without them")
    if cfg.model.heads > 1:
        raise UsageError(f"{args.checkpoint}: pruning a model with model.heads={cfg.model.heads} is not supported "
                         "(pruning fine-tunes the backbone, which the heads were trained frozen on); prune one with one head")
    torch.set_num_threads(cpu_threads(args.threads, num_workers=cfg.data.num_workers))
    out = args.out or args.checkpoint.parent / "pruned"
    split = build.checkpoint_split(cfg.data, classes, args.checkpoint)
    val = build.eval_loader(cfg, build.eval_dataset(cfg, split.test, num_clips=args.num_clips))
    criterion = build.loss_from(cfg, [s.label for s in split.train], list(classes))
    s = cfg.data.crop_size
    example = torch.randn(1, cfg.data.sampling.clip_len, 3, s, s)
    report = {"checkpoint": str(args.checkpoint), "flops_target": args.flops, "threads": torch.get_num_threads(),
              "before": measure(model, val, criterion, classes, example)}
    reference = build.model_from(cfg, len(classes))  # the unpruned architecture the stored shapes are relative to
    report["pruning"] = pruning.prune_to_macs(model, example, args.flops, round_to=args.round_to)
    report["after_pruning"] = measure(model, val, criterion, classes, example)
    teacher = None
    if args.distill > 0:  # the unpruned model, as it was loaded, teaches its pruned copy
        teacher = Distiller(build.model_from_checkpoint(args.checkpoint, args.overrides)[1], weight=args.distill,
                            temperature=cfg.train.distill.temperature)
    report["fine_tune"] = fine_tune(model, cfg, split, criterion, args.epochs, teacher)
    report["after_fine_tune"] = measure(model.eval(), val, criterion, classes, example)
    arch = pruning.architecture(model, reference)
    path = save(model, cfg, classes, arch, out, report)
    # The saved file must rebuild into this very model (weights_only load, stored channel counts).
    _, again, _ = build.model_from_checkpoint(path)
    with torch.inference_mode():
        diff = float((again(example) - model(example)).abs().max())
    if diff > 1e-4:
        raise RuntimeError(f"{path}: reloaded model differs from the pruned one by {diff:g}")
    b, a = report["before"], report["after_fine_tune"]
    print(f"FLOPs {b['gflops']:.3g} -> {a['gflops']:.3g} G per clip ({a['macs'] / b['macs']:.0%}), params "
          f"{b['params'] / 1e6:.2f}M -> {a['params'] / 1e6:.2f}M, clip latency {b['clip_ms']:.1f} -> {a['clip_ms']:.1f} ms "
          f"({report['threads']} threads)")
    print(f"validation top-1: {100 * b['top1']:.2f}% before, {100 * report['after_pruning']['top1']:.2f}% pruned, "
          f"{100 * a['top1']:.2f}% after {args.epochs} fine-tuning epochs ({100 * (a['top1'] - b['top1']):+.2f} pt)")
    print(f"wrote {path} and {out / 'prune_report.json'}")
    return report


if __name__ == "__main__":
    run_tool(parse_args, main)
