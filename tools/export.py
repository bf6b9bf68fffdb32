#!/usr/bin/env python
"""Export a checkpoint to ONNX and quantise its temporal head to int8; verify and measure both.

    python tools/export.py runs/quickstart/best.pt                    # -> runs/quickstart/export/
    python tools/export.py runs/quickstart/best.pt --out deploy/quickstart --no-eval
    python tools/export.py runs/ucf101/best.pt data.root=/data/UCF-101 --num-clips 3

Writes to --out: clip.onnx (whole model, (B, T, 3, S, S) -> logits), backbone.onnx (per frame,
(N, 3, S, S) -> features) and head.onnx ((B, T, D) features -> logits), all with a dynamic batch
axis (the head also a dynamic time axis), head_int8.onnx (onnxruntime dynamic int8 quantisation),
model.json (class names, preprocessing, clip length, demo settings: what tools/demo.py --onnx
reads) and report.json. Each ONNX file is compared with torch in onnxruntime (fails above --atol).
The int8 heads (torch.ao dynamic quantisation of LSTM + Linear, and the onnxruntime one) are
compared with fp32 on the validation split (top-1 from the same backbone features) and timed.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import numpy as np
import torch

from actionrec import build
from actionrec.cli import run_tool, setup_logging
from actionrec.deploy import export as E
from actionrec.deploy.backends import write_meta
from actionrec.engine.threads import cpu_threads
from actionrec.errors import UsageError

log = logging.getLogger("actionrec.export")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", type=Path, help="checkpoint written by tools/train.py")
    p.add_argument("overrides", nargs="*", help="dotted overrides for the checkpoint's config (e.g. data.root=...)")
    p.add_argument("--out", type=Path, default=None, help="output folder (default: <checkpoint dir>/export)")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset (default: %(default)s)")
    p.add_argument("--atol", type=float, default=1e-4, help="largest allowed |onnxruntime - torch| (fp32)")
    p.add_argument("--no-eval", action="store_true", help="skip the accuracy comparison on the validation split")
    p.add_argument("--num-clips", type=int, default=1, help="clips per validation video (default: %(default)s)")
    p.add_argument("--bench-iters", type=int, default=30, help="timed repetitions per latency (default: %(default)s)")
    p.add_argument("--threads", type=int, default=0,
                   help="CPU threads for the timings, torch and onnxruntime alike (0: auto, the cores other programs "
                        "and data.num_workers leave free; README 'CPU threads')")
    p.add_argument("--int8", action="store_true",
                   help="also quantise the backbone: onnxruntime static int8 (QDQ, per-channel weights) calibrated on "
                        "training frames -> backbone_int8.onnx; report.json compares the int8 model with fp32")
    p.add_argument("--calib-frames", type=int, default=256,
                   help="training frames (eval transform) that calibrate the int8 backbone (default: %(default)s)")
    p.add_argument("--debug", action="store_true", help="show full tracebacks")
    return p.parse_args(argv)


def accuracy_report(model, qmodel, heads_onnx: dict, cfg, args) -> dict:
    """Top-1 of every head variant on the same validation backbone features, and what changed."""
    split = build.dataset_split(cfg.data)
    ds = build.eval_dataset(cfg, split.test, num_clips=args.num_clips)
    loader = build.eval_loader(cfg, ds)
    feats, labels = E.collect_features(model, loader)  # (N, V, T, D): the backbone runs once
    labels = labels.numpy()
    heads = {"torch_fp32": E.torch_head(model), "torch_int8": E.torch_head(qmodel),
             **{f"onnx_{k}": E.onnx_head(p) for k, p in heads_onnx.items()}}
    scores = {name: E.head_scores(h, feats) for name, h in heads.items()}
    ref = scores["torch_fp32"]
    top2 = np.sort(ref, axis=1)[:, -2:]
    rep = {"videos": int(len(labels)), "views": int(feats.shape[1]), "top1": {}, "changed_predictions": {},
           "max_score_diff": {}, "largest_fp32_margin_of_changed": {}}
    for name, s in scores.items():
        rep["top1"][name] = float((s.argmax(1) == labels).mean())
        changed = s.argmax(1) != ref.argmax(1)
        rep["changed_predictions"][name] = int(changed.sum())
        rep["max_score_diff"][name] = float(np.abs(s - ref).max())
        # A flip is expected only where fp32 itself was nearly tied between its top two classes.
        margins = (top2[:, 1] - top2[:, 0])[changed]
        rep["largest_fp32_margin_of_changed"][name] = float(margins.max()) if len(margins) else None
    rep["top1_change_points"] = {n: 100 * (rep["top1"][n] - rep["top1"]["torch_fp32"]) for n in scores}
    return rep


def speed_report(model, qmodel, paths: dict, *, clip_len: int, crop_size: int, iters: int, threads: int) -> dict:
    """Median latency (ms, batch 1, ``threads`` CPU threads) of fp32 vs int8 heads and whole clips."""
    x = E.example_inputs(model, clip_len=clip_len, crop_size=crop_size, batch=1)
    f, clip = x["head"], x["clip"]
    torch.set_num_threads(threads)
    onnx_head = {k: E.onnx_head(paths[k], threads) for k in ("head", "head_int8")}
    onnx_clip = E.onnx_session(paths["clip"], threads)
    with torch.inference_mode():
        ms = {
            "head_torch_fp32": E.median_ms(lambda: model.forward_head(f), iters=iters),
            "head_torch_int8": E.median_ms(lambda: qmodel.forward_head(f), iters=iters),
            "head_onnx_fp32": E.median_ms(lambda: onnx_head["head"](f.numpy()), iters=iters),
            "head_onnx_int8": E.median_ms(lambda: onnx_head["head_int8"](f.numpy()), iters=iters),
            "clip_torch_fp32": E.median_ms(lambda: model(clip), iters=iters),
            "clip_torch_int8_head": E.median_ms(lambda: qmodel(clip), iters=iters),
            "clip_onnx_fp32": E.median_ms(lambda: onnx_clip.run(None, {"clips": clip.numpy()}), iters=iters),
        }
    return {"ms": ms, "threads": threads, "head_speedup_torch": ms["head_torch_fp32"] / ms["head_torch_int8"],
            "head_speedup_onnx": ms["head_onnx_fp32"] / ms["head_onnx_int8"],
            "clip_speedup_torch": ms["clip_torch_fp32"] / ms["clip_torch_int8_head"]}


def calibration_frames(cfg, count: int) -> np.ndarray:
    """(count, 3, S, S) training frames as the deployed model sees them (eval transform, centre crop),
    from training videos spread over the split (one clip each, frames in turn) until ``count`` are taken."""
    split = build.dataset_split(cfg.data)
    ds = build.eval_dataset(cfg, split.train, num_clips=1)
    order = np.linspace(0, len(ds) - 1, num=min(len(ds), max(1, -(-count // cfg.data.sampling.clip_len)))).round().astype(int)
    frames = []
    for i in dict.fromkeys(order.tolist()):
        item = ds[i]
        if item["clip"] is not None:
            frames.extend(item["clip"][0].numpy())  # (T, C, H, W) of the one view
    if not frames:
        raise UsageError("no training video could be decoded for the int8 calibration")
    return np.stack(frames[:count]).astype(np.float32)


def int8_report(paths: dict, cfg, args, threads: int) -> dict:
    """The whole int8 model (static int8 backbone + dynamic int8 head) vs fp32, both in onnxruntime:
    top-1 on the validation split and per-frame backbone latency at batch 1 and 16."""
    s = cfg.data.crop_size
    rep: dict = {"calibration_frames": args.calib_frames, "format": "QDQ, per-channel int8 weights (7-bit), "
                 "uint8 activations, MinMax calibration"}
    enc = {k: E.onnx_head(paths[k], threads) for k in ("backbone", "backbone_int8")}
    x1, x16 = (np.random.default_rng(0).standard_normal((n, 3, s, s)).astype(np.float32) for n in (1, 16))
    rep["frame_ms"] = {f"{k}_batch{len(x)}": E.median_ms(lambda f=f, x=x: f(x), iters=args.bench_iters) / len(x)
                       for k, f in enc.items() for x in (x1, x16)}
    rep["speedup_batch1"] = rep["frame_ms"]["backbone_batch1"] / rep["frame_ms"]["backbone_int8_batch1"]
    rep["speedup_batch16"] = rep["frame_ms"]["backbone_batch16"] / rep["frame_ms"]["backbone_int8_batch16"]
    if args.no_eval:
        return rep
    split = build.dataset_split(cfg.data)
    ds = build.eval_dataset(cfg, split.test, num_clips=args.num_clips)
    loader = build.eval_loader(cfg, ds)
    feats, labels = E.collect_onnx_features(enc, loader)
    labels = labels.numpy()
    heads = {k: E.onnx_head(paths[k], threads) for k in ("head", "head_int8")}
    scores = {"fp32": E.head_scores(heads["head"], feats["backbone"]),
              "int8_backbone": E.head_scores(heads["head"], feats["backbone_int8"]),
              "int8": E.head_scores(heads["head_int8"], feats["backbone_int8"])}
    rep.update(videos=int(len(labels)), views=int(feats["backbone"].shape[1]),
               top1={k: float((v.argmax(1) == labels).mean()) for k, v in scores.items()},
               changed_predictions={k: int((v.argmax(1) != scores["fp32"].argmax(1)).sum()) for k, v in scores.items()},
               max_score_diff={k: float(np.abs(v - scores["fp32"]).max()) for k, v in scores.items()})
    rep["top1_change_points"] = {k: 100 * (v - rep["top1"]["fp32"]) for k, v in rep["top1"].items()}
    return rep


def main(args: argparse.Namespace) -> dict:
    setup_logging()
    if args.calib_frames < 1:
        raise UsageError(f"--calib-frames must be >= 1, got {args.calib_frames}")
    cfg, model, classes = build.model_from_checkpoint(args.checkpoint, args.overrides)
    threads = cpu_threads(args.threads, num_workers=cfg.data.num_workers)
    out = args.out or args.checkpoint.parent / "export"
    clip_len, crop = cfg.data.sampling.clip_len, cfg.data.crop_size

    paths = E.export_onnx(model, out, clip_len=clip_len, crop_size=crop, opset=args.opset)
    diffs = E.max_abs_diff_onnx(model, paths, clip_len=clip_len, crop_size=crop)
    for name, d in diffs.items():
        log.info("%-9s %s  max |onnxruntime - torch| = %.2e", name, paths[name], d)
    too_far = {k: v for k, v in diffs.items() if v > args.atol}
    if too_far:
        raise UsageError(f"ONNX outputs differ from torch by more than --atol {args.atol:g}: {too_far}")
    paths["head_int8"] = E.quantize_onnx_head(paths["head"], out / "head_int8.onnx")
    if args.int8:
        frames = calibration_frames(cfg, args.calib_frames)
        log.info("calibrating the int8 backbone on %d training frames", len(frames))
        paths["backbone_int8"] = E.quantize_onnx_backbone(paths["backbone"], out / "backbone_int8.onnx", frames)
    qmodel = E.quantize_head(model)
    write_meta(out, {
        "class_names": classes, "clip_len": clip_len, "feature_dim": model.feature_dim, "backbone": cfg.model.backbone,
        "preprocess": build.transform_kwargs(cfg.data),
        "demo": {"stride": cfg.demo.stride, "smooth": cfg.demo.smooth, "topk": cfg.demo.topk,
                 "frame_step": cfg.demo.frame_step},
        # tools/serve.py's multi-clip scores: the checkpoint's test-time sampling (as tools/eval.py).
        "eval": {"num_clips": cfg.eval.num_clips, "sampling": build.sampling_spec(cfg.data),
                 "backend": cfg.data.backend, "seek": cfg.data.seek},
        "files": {k: p.name for k, p in paths.items()}, "checkpoint": str(args.checkpoint), "opset": args.opset,
    })
    report = {"checkpoint": str(args.checkpoint), "out": str(out), "onnx_max_abs_diff": diffs, "atol": args.atol,
              "sizes_bytes": {k: p.stat().st_size for k, p in paths.items()},
              "head_state_bytes": {"fp32": E.state_dict_bytes(model.head), "int8": E.state_dict_bytes(qmodel.head)},
              "speed": speed_report(model, qmodel, paths, clip_len=clip_len, crop_size=crop, iters=args.bench_iters,
                                    threads=threads)}
    if not args.no_eval:
        report["accuracy"] = accuracy_report(model, qmodel, {"fp32": paths["head"], "int8": paths["head_int8"]}, cfg, args)
    if args.int8:
        report["int8"] = int8_report(paths, cfg, args, threads)
    (out / "report.json").write_text(json.dumps(report, indent=2))

    ms = report["speed"]["ms"]
    print(f"ONNX files in {out}: max |onnxruntime - torch| " + ", ".join(f"{k} {v:.1e}" for k, v in diffs.items()))
    print(f"head latency (1 x {clip_len} features): torch fp32 {ms['head_torch_fp32']:.2f} ms -> int8 "
          f"{ms['head_torch_int8']:.2f} ms; onnx fp32 {ms['head_onnx_fp32']:.2f} ms -> int8 {ms['head_onnx_int8']:.2f} ms")
    print(f"clip latency (1 x {clip_len} frames): torch fp32 {ms['clip_torch_fp32']:.1f} ms, int8 head "
          f"{ms['clip_torch_int8_head']:.1f} ms, onnx fp32 {ms['clip_onnx_fp32']:.1f} ms")
    if "accuracy" in report:
        acc = report["accuracy"]
        print(f"validation top-1 ({acc['videos']} videos x {acc['views']} clips): " + ", ".join(
            f"{k} {100 * v:.2f}% ({report['accuracy']['top1_change_points'][k]:+.2f} pt, "
            f"{acc['changed_predictions'][k]} changed)" for k, v in acc["top1"].items()))
    if "int8" in report:
        q = report["int8"]
        print(f"int8 backbone per frame ({threads} threads): batch 1 {q['frame_ms']['backbone_batch1']:.2f} -> "
              f"{q['frame_ms']['backbone_int8_batch1']:.2f} ms ({q['speedup_batch1']:.2f}x), batch 16 "
              f"{q['frame_ms']['backbone_batch16']:.2f} -> {q['frame_ms']['backbone_int8_batch16']:.2f} ms "
              f"({q['speedup_batch16']:.2f}x)")
        if "top1" in q:
            print(f"int8 model top-1 ({q['videos']} videos x {q['views']} clips, onnxruntime): fp32 "
                  f"{100 * q['top1']['fp32']:.2f}%, int8 {100 * q['top1']['int8']:.2f}% "
                  f"({q['top1_change_points']['int8']:+.2f} pt, {q['changed_predictions']['int8']} changed)")
    print(f"wrote {out / 'model.json'} and {out / 'report.json'}")
    return report


if __name__ == "__main__":
    run_tool(parse_args, main)
