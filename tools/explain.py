#!/usr/bin/env python
"""Why a label, and where in the video: Grad-CAM on frames, attention over time, probability timeline.

    python tools/explain.py runs/quickstart/best.pt video.mp4 --out explain/
    python tools/explain.py runs/ucf101/best.pt match.mp4 --out explain/ --class Basketball --json

Writes to --out:
  gradcam.png   the clip_len frames the model samples from the video (one clip, centre crop, as in
                tools/eval.py), each with its Grad-CAM heatmap for the predicted class (or --class),
                and under them the attention-pooling weight of each frame (model.pooling=attention);
  timeline.png  the streaming classifier of tools/demo.py run over every frame: class probabilities
                over time, and the top label as coloured bands;
  explain.json  with --json: the numbers behind both (probabilities, weights, low-resolution heatmaps,
                the timeline).
The heatmaps come from the feature map the backbone's forward_features returns (any timm CNN).
Both pictures are also logged to W&B as images, in the mode the checkpoint's logging.wandb.mode
gives (default offline, files under --out/wandb); WANDB_MODE=disabled turns that off.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

from actionrec import build
from actionrec.cli import run_tool
from actionrec.data.video_io import VideoReader
from actionrec.deploy.backends import TorchBackend
from actionrec.deploy.explain import explain_clip, overlay_frames, stream_timeline
from actionrec.deploy.sources import open_source
from actionrec.deploy.streaming import StreamingClassifier
from actionrec.engine.distributed import resolve_device
from actionrec.engine.plots import plot_gradcam_grid, plot_timeline
from actionrec.engine.tracking import clip_to_uint8, log_pictures_run
from actionrec.errors import UsageError


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", type=Path, help="checkpoint written by tools/train.py (torch, not ONNX)")
    p.add_argument("video", type=Path, help="video file to explain")
    p.add_argument("--out", type=Path, required=True, help="output folder for the PNGs (and explain.json)")
    p.add_argument("--class", dest="class_name", default=None, help="class to explain (default: the predicted one)")
    p.add_argument("--json", nargs="?", type=Path, const=True, default=None, metavar="PATH",
                   help="also write the numbers (default path: OUT/explain.json)")
    p.add_argument("--device", default="auto", help="auto (CUDA if present, else CPU), cpu, cuda, cuda:N")
    p.add_argument("--stride", type=int, default=None,
                   help="timeline: run the head every N sampled frames (demo.stride)")
    p.add_argument("--smooth", type=int, default=None, help="timeline: average the last K windows (demo.smooth)")
    p.add_argument("--frame-step", type=int, default=None, help="timeline: sample every Nth frame (demo.frame_step)")
    p.add_argument("--max-frames", type=int, default=0, help="timeline: stop after N frames (0: the whole video)")
    p.add_argument("--debug", action="store_true", help="show full tracebacks")
    return p.parse_args(argv)


def load_model(args: argparse.Namespace):
    cfg, model, classes = build.model_from_checkpoint(args.checkpoint)
    device = resolve_device(args.device)
    model.place(device, device)
    if args.class_name is not None and args.class_name not in classes:
        raise UsageError(f"--class {args.class_name!r}: not a class of this checkpoint; classes: {', '.join(classes)}")
    return cfg, model, classes


def sample_clip(cfg, path: Path) -> tuple[list[int], torch.Tensor]:
    """The frame indices and the normalised (T, C, H, W) clip tools/eval.py would take (one clip, centre crop)."""
    d = cfg.data
    with VideoReader(path, backend=d.backend, seek=d.seek) as reader:
        idx = d.sampling.eval_indices(len(reader))[0]  # num_clips 1
        frames = reader.get_frames(idx)
    return idx.tolist(), build.eval_transforms_from(d)[0](frames)


def gradcam_picture(args, cfg, model, classes, out: Path) -> dict:
    indices, clip = sample_clip(cfg, args.video)
    target = classes.index(args.class_name) if args.class_name is not None else None
    exp = explain_clip(model, clip, target)
    frames = clip_to_uint8(clip, cfg.data.mean, cfg.data.std)
    pred = int(np.argmax(exp.probs))
    name = classes[exp.class_index]
    title = (f"{args.video.name}: Grad-CAM for '{name}' (p={exp.probs[exp.class_index]:.2f}), "
             f"predicted '{classes[pred]}' ({exp.probs[pred]:.2f}) | {cfg.model.backbone}.{exp.layer}")
    plot_gradcam_grid(frames, overlay_frames(frames, exp.cams), indices, out / "gradcam.png", title=title,
                      attention=exp.attention)
    return {"class": name, "class_index": exp.class_index, "predicted": classes[pred], "layer": exp.layer,
            "frame_indices": indices, "probs": {c: round(float(p), 5) for c, p in zip(classes, exp.probs)},
            "attention": None if exp.attention is None else [round(float(w), 5) for w in exp.attention],
            "cams": np.round(exp.cams_lowres, 4).tolist()}


def timeline_picture(args, cfg, model, classes, out: Path, highlight: int) -> dict:
    demo = cfg.demo
    settings = {k: getattr(demo, k) if getattr(args, k) is None else getattr(args, k)
                for k in ("stride", "smooth", "frame_step")}
    backend = TorchBackend(model, build.eval_transforms_from(cfg.data)[0].frame)
    clf = StreamingClassifier(backend, classes, clip_len=cfg.data.sampling.clip_len, topk=demo.topk, **settings)
    source = open_source(str(args.video))
    try:
        tl = stream_timeline(clf, source, max_frames=args.max_frames)
    finally:
        source.release()
    title = (f"{args.video.name}: {tl.num_frames} frames, window {cfg.data.sampling.clip_len} x step {settings['frame_step']}, "
             f"head every {settings['stride']}, smoothed over {settings['smooth']}")
    plot_timeline(tl.frames, tl.probs, tl.top, classes, out / "timeline.png", fps=source.fps, title=title,
                  highlight=highlight)
    return {"fps": source.fps, "clip_len": cfg.data.sampling.clip_len, **settings, **tl.to_json(classes)}


def log_to_wandb(cfg, args, out: Path, clip: dict) -> None:
    caption = f"{args.video.name}: {clip['class']} (predicted {clip['predicted']})"
    log_pictures_run(out, build.wandb_kwargs(cfg, out), job_type="explain", notes=f"{args.checkpoint} on {args.video}",
                     pictures={"explain/gradcam": (out / "gradcam.png", caption),
                               "explain/timeline": (out / "timeline.png", args.video.name)})


def main(args: argparse.Namespace) -> dict:
    open_source(str(args.video)).release()  # a missing or undecodable video fails before the model loads
    cfg, model, classes = load_model(args)
    args.out.mkdir(parents=True, exist_ok=True)
    clip = gradcam_picture(args, cfg, model, classes, args.out)
    timeline = timeline_picture(args, cfg, model, classes, args.out, highlight=clip["class_index"])
    result = {"video": str(args.video), "checkpoint": str(args.checkpoint), "clip": clip, "timeline": timeline}
    if args.json is not None:
        path = args.out / "explain.json" if args.json is True else args.json
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=1))
    log_to_wandb(cfg, args, args.out, clip)
    bands = ", ".join(f"{b['label']} {b['start']}-{b['end']}" for b in timeline["bands"]) or "none"
    print(f"clip: {clip['predicted']} ({clip['probs'][clip['predicted']]:.2f}); explained '{clip['class']}' at "
          f"{clip['layer']}\ntimeline: {timeline['num_frames']} frames, top label by frame: {bands}\n"
          f"wrote {args.out / 'gradcam.png'} and {args.out / 'timeline.png'}", file=sys.stderr)
    return result


def cli(argv=None) -> dict:
    return run_tool(parse_args, main, argv)


if __name__ == "__main__":
    cli()
