#!/usr/bin/env python
"""Action recognition on a video file, a webcam or a stream, with streaming inference.

    python tools/demo.py video.mp4                         # model: the newest runs/**/best.pt
    python tools/demo.py 0                                 # webcam 0 (same as --webcam 0)
    python tools/demo.py rtsp://camera/stream --checkpoint runs/ucf101/best.pt
    python tools/demo.py video.mp4 --no-show --output annotated.mp4 --json preds.json
    python tools/demo.py video.mp4 --onnx runs/quickstart/export   # onnxruntime, no training stack
    python tools/demo.py video.mp4 --explain --output explained.mp4  # Grad-CAM heatmap of the shown label

Every sampled frame goes through the CNN once; the temporal head runs over the last clip_len
features every --stride sampled frames, and the shown scores average the last --smooth windows.
--frame-step N samples every Nth frame so that a window spans about as much time as a training
clip (training clips are spread over whole videos): roughly typical video length / clip_len.
Class names, preprocessing and defaults for stride/smooth/topk/frame-step come from the checkpoint
(demo.* config keys) or the export's model.json. --explain blends the Grad-CAM heatmap of the shown
label (the newest frame, in the context of its window) into the view and the --output video: torch
checkpoints only, one backward pass per sampled frame. Press q in the window to quit.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import cv2
import numpy as np

from actionrec.cli import run_tool
from actionrec.deploy.backends import ModelFileError, TorchBackend, load_onnx_backend
from actionrec.deploy.overlay import crop_box, draw_heatmap, draw_overlay
from actionrec.deploy.sources import VideoSourceError, display_available, open_source
from actionrec.deploy.streaming import FpsMeter, StreamingClassifier, iter_frames
from actionrec.engine.threads import cpu_threads
from actionrec.errors import UsageError

WINDOW = "actionrec demo (q quits)"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("source", nargs="?", help="video file, camera index (0) or stream URL")
    p.add_argument("--webcam", type=int, default=None, metavar="INDEX", help="camera index (instead of SOURCE)")
    p.add_argument("--checkpoint", type=Path, default=None, help="checkpoint (default: newest best.pt under --runs)")
    p.add_argument("--runs", type=Path, default=Path("runs"), help="where to look for the default checkpoint")
    p.add_argument("--onnx", type=Path, default=None, help="export folder of tools/export.py: run in onnxruntime")
    p.add_argument("--int8", action="store_true",
                   help="int8: with --onnx the statically quantised backbone and int8 head (tools/export.py --int8); "
                        "torch: the dynamically quantised head")
    p.add_argument("--device", default="cpu", help="torch device for --checkpoint (cpu, cuda, cuda:N)")
    p.add_argument("--threads", type=int, default=0,
                   help="CPU threads for inference (0: auto, the cores other programs leave free; README 'CPU threads')")
    p.add_argument("--batch", type=int, default=0,
                   help="frames per CNN call (0: auto, 16 for a file without a window (throughput), 1 for a camera, "
                        "a stream, a window or --explain (latency))")
    p.add_argument("--stride", type=int, default=None, help="run the head every N sampled frames (demo.stride)")
    p.add_argument("--smooth", type=int, default=None, help="average the last K windows (demo.smooth)")
    p.add_argument("--topk", type=int, default=None, help="labels shown (demo.topk)")
    p.add_argument("--frame-step", type=int, default=None, help="sample every Nth frame (demo.frame_step)")
    p.add_argument("--output", type=Path, default=None, help="write the annotated video here (.mp4 or .avi)")
    p.add_argument("--json", type=Path, default=None, help="write the prediction timeline here")
    p.add_argument("--no-show", action="store_true", help="no window (also automatic without a display)")
    p.add_argument("--explain", action="store_true",
                   help="overlay the Grad-CAM heatmap of the shown label (torch checkpoints; one backward per frame)")
    p.add_argument("--max-frames", type=int, default=0, help="stop after N frames (0: until the source ends)")
    p.add_argument("--debug", action="store_true", help="show full tracebacks")
    return p.parse_args(argv)


def load_model(args: argparse.Namespace, threads: int) -> tuple[object, dict]:
    """(backend, info) with info: class_names, clip_len, demo defaults, model (what was loaded)."""
    if args.explain and (args.onnx is not None or args.int8):
        raise UsageError("--explain needs the torch fp32 model (gradients): drop --onnx / --int8")
    if args.onnx is not None:
        backend, meta = load_onnx_backend(args.onnx, int8=args.int8, threads=threads)
        return backend, {"class_names": meta["class_names"], "clip_len": meta["clip_len"], "demo": meta["demo"],
                         "model": str(args.onnx)}
    # The torch path imports the training stack only here, so --onnx runs without it.
    import torch

    from actionrec import build
    from actionrec.engine.checkpoint import latest_checkpoint
    from actionrec.engine.distributed import resolve_device

    path = args.checkpoint or latest_checkpoint(args.runs)
    cfg, model, classes = build.model_from_checkpoint(path)
    if args.int8:
        from actionrec.deploy.export import quantize_head

        model = quantize_head(model)  # int8 kernels are CPU-only
    else:
        device = resolve_device(args.device)
        model.place(device, device)
    if threads > 0:
        torch.set_num_threads(threads)
    preprocess = build.eval_transforms_from(cfg.data)[0].frame
    if args.explain:
        from actionrec.deploy.explain import GradCamBackend

        backend = GradCamBackend(model, preprocess)
    else:
        backend = TorchBackend(model, preprocess)
    demo = {"stride": cfg.demo.stride, "smooth": cfg.demo.smooth, "topk": cfg.demo.topk, "frame_step": cfg.demo.frame_step}
    return backend, {"class_names": classes, "clip_len": cfg.data.sampling.clip_len, "demo": demo, "model": str(path),
                     "crop": {"resize_short": cfg.data.resize_short, "crop_size": cfg.data.crop_size}}


def open_writer(path: Path, fps: float, size: tuple[int, int]) -> cv2.VideoWriter:
    fourcc = cv2.VideoWriter_fourcc(*("MJPG" if path.suffix.lower() == ".avi" else "mp4v"))
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = cv2.VideoWriter(str(path), fourcc, fps, size)
    if not writer.isOpened():
        raise UsageError(f"--output {path}: OpenCV cannot write this file (use .mp4 or .avi)")
    return writer


def encoded(source, clf: StreamingClassifier, backend, *, batch: int, max_frames: int):
    """(index, BGR frame, CNN feature or None) for every frame; sampled frames encoded ``batch`` at a time.

    Throughput mode for files: the sampled frames of a chunk go through the CNN in one call (fewer,
    larger ops, which use the threads better), then the chunk is replayed in order, so predictions
    equal frame-at-a-time ones. With ``batch`` 1 the feature is None: ``clf.push`` encodes the frame.
    """
    frames = iter_frames(source, max_frames=max_frames)
    if batch <= 1:
        yield from ((index, frame, None) for index, frame in frames)
        return
    chunk: list = []
    while True:
        for index, frame in frames:
            chunk.append((index, frame))
            if len(clf.sampled([i for i, _ in chunk])) >= batch:
                break
        if not chunk:
            return
        wanted = set(clf.sampled([i for i, _ in chunk]))
        rgbs = [cv2.cvtColor(f, cv2.COLOR_BGR2RGB) for i, f in chunk if i in wanted]
        feats = iter(backend.features_batch(np.stack([np.asarray(backend.preprocess(x), np.float32) for x in rgbs]))
                     if rgbs else [])
        for index, frame in chunk:
            yield index, frame, next(feats) if index in wanted else None
        chunk = []


def main(args: argparse.Namespace) -> dict:
    if args.batch < 0 or args.threads < 0:
        raise UsageError(f"--batch and --threads must be >= 0 (0: auto), got {args.batch} and {args.threads}")
    threads = cpu_threads(args.threads) if args.device == "cpu" or args.onnx is not None else args.threads
    backend, info = load_model(args, threads)
    demo = {k: v if (v := getattr(args, k)) is not None else info["demo"][k]
            for k in ("stride", "smooth", "topk", "frame_step")}
    clf = StreamingClassifier(backend, info["class_names"], clip_len=info["clip_len"], **demo)
    source = open_source(args.source, webcam=args.webcam)
    show = not args.no_show and display_available()
    # Latency mode (one frame per CNN call) wherever a frame must be shown as soon as it arrives.
    batch = args.batch or (1 if source.live or show or args.explain else 16)
    if args.explain and batch > 1:
        raise UsageError("--explain runs one frame at a time: drop --batch")
    fps_src = source.fps if source.fps > 0 else 25.0
    writer, meter, last, timeline, cam = None, FpsMeter(), None, [], None
    frames, t0 = 0, time.monotonic()
    print(f"{source.name}: model {info['model']} | clip_len {info['clip_len']} | "
          + " | ".join(f"{k} {v}" for k, v in demo.items()) + f" | threads {threads} | batch {batch}", file=sys.stderr)
    try:
        for index, frame, feat in encoded(source, clf, backend, batch=batch, max_frames=args.max_frames):
            frames += 1
            if clf.wants(index):
                pred = (clf.push(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB), index) if feat is None
                        else clf.push_features(feat, index))
                if pred is not None:
                    last = pred
                    # Files: time in the video; live sources: seconds since the demo started.
                    t = index / fps_src if not source.live else time.monotonic() - t0
                    timeline.append(pred.to_json(t))
                if args.explain:  # the shown label's evidence in the newest frame
                    shown = info["class_names"].index(last.topk[0][0]) if last else None
                    cam = backend.newest_cam(clf.window()[0], shown)
            meter.tick()
            if cam is not None:
                frame = draw_heatmap(frame, cam, box=crop_box(*frame.shape[:2], **info["crop"]))
            draw_overlay(frame, last.topk if last else [], meter.fps,
                         note=f"dropped {source.dropped}" if source.live else "")
            if args.output is not None:
                writer = writer or open_writer(args.output, fps_src, (frame.shape[1], frame.shape[0]))
                writer.write(frame)
            if show:
                cv2.imshow(WINDOW, frame)
                if cv2.waitKey(1) & 0xFF == ord("q"):
                    break
    finally:
        source.release()
        if writer is not None:
            writer.release()
        if show:
            cv2.destroyAllWindows()
    if frames == 0:
        raise VideoSourceError(f"{source.name}: no frames could be read")
    elapsed = time.monotonic() - t0
    result = {"source": source.name, "model": info["model"], "live": source.live, "fps": source.fps,
              "processing_fps": round(frames / elapsed, 2) if elapsed > 0 else None,
              "clip_len": info["clip_len"], **demo, "threads": threads, "batch": batch,
              "class_names": info["class_names"], "frames": frames,
              "frames_encoded": backend.frames_encoded, "dropped": source.dropped, "explain": args.explain,
              "predictions": timeline}
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1))
    final = ", ".join(f"{n} {p:.2f}" for n, p in last.topk) if last else "no prediction (too few frames)"
    print(f"{frames} frames ({result['processing_fps']} fps), {backend.frames_encoded} through the CNN, {len(timeline)} predictions; "
          f"last: {final}", file=sys.stderr)
    return result


def cli(argv=None) -> dict | None:
    # actionrec.cli imports no torch, so the ONNX path can use it too. ValueError: the tool's own checks.
    return run_tool(parse_args, main, argv, extra=(ValueError, ModelFileError, VideoSourceError))


if __name__ == "__main__":
    cli()
