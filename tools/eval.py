#!/usr/bin/env python
"""Evaluate a checkpoint with multi-clip x multi-crop testing.

    python tools/eval.py runs/quickstart/best.pt
    python tools/eval.py runs/ucf101/best.pt eval.num_clips=10 eval.num_crops=3 data.root=/data/UCF-101
    python tools/eval.py runs/ucf101/best.pt --device cpu          # a GPU-trained (fp16) checkpoint on a CPU

Softmax scores are averaged over a video's clips and crops. Writes top-1/top-5/mean class
accuracy, per-class accuracy and the confusion matrix (JSON + PNG) next to the checkpoint
(or to --out), and mistakes.png: the most confident wrong predictions (frames of each video's
first clip, true and predicted class, score). Works under torchrun too: each rank evaluates a
shard, every video counted once. The numbers and both pictures go to W&B as well, in the mode of
the checkpoint's logging.wandb.mode (WANDB_MODE overrides; logging.wandb.mode=disabled: no W&B).
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from actionrec import build
from actionrec.cli import run_tool, setup_logging
from actionrec.config import config_to_dict
from actionrec.engine import distributed as D
from actionrec.engine.loop import evaluate, resolve_amp, setup_amp
from actionrec.engine.metrics import confident_mistakes
from actionrec.engine.plots import plot_confusion, plot_mistakes
from actionrec.engine.tracking import clip_to_uint8, log_pictures_run

log = logging.getLogger("actionrec.eval")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", type=Path, help="checkpoint written by tools/train.py (best.pt or last.pt)")
    p.add_argument("overrides", nargs="*", help="dotted overrides applied to the checkpoint's config")
    p.add_argument("--split", choices=["test", "train"], default="test", help="which split to evaluate")
    p.add_argument("--out", type=Path, default=None, help="output folder (default: <checkpoint dir>/eval)")
    p.add_argument("--device", default="auto",
                   help="where to evaluate: auto (CUDA if present, else CPU), cpu, cuda, cuda:N (default: %(default)s)")
    p.add_argument("--amp", choices=["auto", "none", "bf16", "fp16"], default="auto",
                   help="precision on that device; auto: bf16 on GPUs with native bf16, fp16 on older GPUs, fp32 on "
                        "CPUs without native bf16. The checkpoint's train.amp and train.device are not used")
    p.add_argument("--threads", type=int, default=0,
                   help="CPU threads (0: auto, the cores that other programs and data.num_workers leave free, as in "
                        "training; README 'CPU threads')")
    p.add_argument("--mistakes", type=int, default=8, help="videos in mistakes.png (default: %(default)s)")
    p.add_argument("--debug", action="store_true", help="show full tracebacks")
    return p.parse_args(argv)


def write_mistakes(ds, rep: dict, classes: list[str], cfg, path: Path, num: int) -> Path:
    """Gallery of the ``num`` most confident mistakes: frames of each video's first view."""
    strips, captions = [], []
    for row, pred, score in confident_mistakes(rep["scores"], rep["labels"], num):
        index = int(rep["indices"][row])
        item = ds[index]  # re-decoded (as W&B's val_videos does) rather than every clip kept from evaluate
        if item["clip"] is None:
            continue
        strips.append(clip_to_uint8(item["clip"][0], cfg.data.mean, cfg.data.std))  # first view (T, C, H, W)
        captions.append(f"{Path(ds.paths[index]).name}: true {classes[int(rep['labels'][row])]}, "
                        f"predicted {classes[pred]} ({score:.2f})")
    wrong = int((rep["scores"].argmax(1) != rep["labels"]).sum()) if len(rep["labels"]) else 0
    return plot_mistakes(strips, captions, path, title=f"most confident mistakes: {len(strips)} of {wrong} "
                                                        f"wrong out of {rep['num_videos']} videos")


def log_to_wandb(cfg, args, out: Path, rep: dict) -> None:
    """An eval run in W&B (job_type eval): the metrics, the confusion matrix and the mistakes as images."""
    log_pictures_run(out, build.wandb_kwargs(cfg, out), job_type="eval", notes=f"{args.checkpoint} ({args.split} split)",
                     pictures={"eval/confusion": (out / "confusion.png", args.checkpoint.name),
                               "eval/mistakes": (out / "mistakes.png", "most confident mistakes")},
                     metrics={f"eval/{k}": rep[k] for k in ("top1", "top5", "mean_class_acc", "loss")})


def main(args: argparse.Namespace) -> dict:
    cfg, model, classes = build.model_from_checkpoint(args.checkpoint, args.overrides)
    # Device and precision are this machine's: a checkpoint trained on a GPU with fp16 evaluates on a CPU.
    dist = D.init_distributed(cfg.train.dist_backend, device=args.device)
    setup_logging(main=dist.is_main)
    device = D.resolve_device(args.device, dist.local_rank)
    split = build.checkpoint_split(cfg.data, classes, args.checkpoint)
    samples = split.test if args.split == "test" else split.train
    ds = build.eval_dataset(cfg, samples, num_clips=cfg.eval.num_clips, num_crops=cfg.eval.num_crops)
    loader = build.eval_loader(cfg, ds, rank=dist.rank, world_size=dist.world_size, pin_memory=device.type == "cuda")
    model.place(device, device)
    if device.type == "cpu":  # as in training: leave the loader workers and other programs their cores
        D.set_cpu_threads(args.threads, num_workers=cfg.data.num_workers)
    autocast, _ = setup_amp(device, args.amp)
    criterion = build.loss_from(cfg, [s.label for s in split.train], list(classes)).to(device)
    views = cfg.eval.num_clips * cfg.eval.num_crops
    backwards = model.test_twins is not None  # eval.reverse_views with twins: each view played backwards too
    log.info("evaluating %s on %d %s videos: %d clips x %d crops = %d views each%s | %s, amp %s",
             args.checkpoint, len(ds), args.split, cfg.eval.num_clips, cfg.eval.num_crops, views,
             ", each also played backwards (eval.reverse_views)" if backwards else "", device, resolve_amp(device, args.amp))
    rep = evaluate(model, loader, criterion, class_names=classes, autocast=autocast, show_progress=dist.is_main)
    result = {k: rep[k] for k in ("top1", "top5", "mean_class_acc", "loss", "num_videos", "per_class_acc", "confusion")}
    result.update(checkpoint=str(args.checkpoint), split=args.split, num_clips=cfg.eval.num_clips,
                  num_crops=cfg.eval.num_crops, reverse_views=backwards, class_names=classes, failed=rep["failed"], config=config_to_dict(cfg))
    if dist.is_main:
        out = args.out or args.checkpoint.parent / "eval"
        out.mkdir(parents=True, exist_ok=True)
        (out / "metrics.json").write_text(json.dumps(result, indent=2))
        plot_confusion(rep["confusion"], classes, out / "confusion.png",
                       title=f"{args.checkpoint.name}: top-1 {rep['top1']:.3f} ({views} views)")
        print(f"top-1 {rep['top1']:.4f} | top-5 {rep['top5']:.4f} | mean class acc {rep['mean_class_acc']:.4f} "
              f"| {rep['num_videos']} videos | loss {rep['loss']:.4f}")
        width = max(len(c) for c in classes)
        for name in classes:
            acc = rep["per_class_acc"].get(name)
            print(f"  {name:<{width}}  {'-' if acc is None else f'{acc:.3f}'}")
        if rep["failed"]:
            print(f"{len(rep['failed'])} videos could not be decoded and were left out: "
                  + ", ".join(p for p, _ in rep["failed"]))
        write_mistakes(ds, rep, classes, cfg, out / "mistakes.png", args.mistakes)
        log_to_wandb(cfg, args, out, rep)
        print(f"wrote {out / 'metrics.json'}, {out / 'confusion.png'} and {out / 'mistakes.png'}")
    D.cleanup()
    return result


if __name__ == "__main__":
    run_tool(parse_args, main)
