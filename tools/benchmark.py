#!/usr/bin/env python
"""Speed and memory benchmarks. Figures are ratios measured side by side in one run.

    python tools/benchmark.py all --json bench.json       # every benchmark (~1 h on a shared 2-core CPU)
    python tools/benchmark.py train-step --profile        # one benchmark, plus a torch.profiler table
    python tools/benchmark.py all --quick                 # tiny sizes: checks the tool, not the speed

Subcommands: decode (clips/s per decoder), loader (train pipeline clips/s per worker count and the
trainer's data-wait share on the quickstart), train-step (per-frame loop vs the default and options,
GFLOP/s vs matmul peak, the frozen-backbone feature cache, the recipe's motion correlation and head
inputs, and an eval-mode backbone in pieces vs one call), demo (streaming vs re-running the
window), memory (peak RSS of quickstart training and of the demo). Variants of one benchmark run in
rotating rounds and ratios are medians of per-round ratios, so other jobs on the machine slow both
sides of a ratio alike. Prints a Markdown table (and the machine) to stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from actionrec import build
from actionrec.cli import run_tool
from actionrec.config import config_to_dict, load_config
from actionrec.data.loader import build_loader
from actionrec.data.synthetic import generate_synthetic_dataset
from actionrec.engine.checkpoint import make_checkpoint
from actionrec.engine.loop import cpu_threads, setup_amp, train_one_epoch
from actionrec.engine.optim import create_optimizer, create_scheduler
from actionrec.perf import benches as B
from actionrec.perf.memory import run_with_peak_memory
from actionrec.perf.timing import Row, cprofile_top, interleaved, machine_info, markdown_table

REPO = Path(__file__).resolve().parents[1]
QUICKSTART = REPO / "configs" / "quickstart.yaml"
COMMANDS = ("decode", "loader", "train-step", "demo", "memory")
# Full sizes follow the issue: UCF-like 320x240 videos, resnet18 at 224^2, T=16, batch 4.
FULL = dict(videos=8, width=320, height=240, frames=180, clip_len=16, resize=256, crop=224, batch=4, workers=(0, 1, 2),
            backbone="resnet18", classes=101, wait_steps=24, bf16=(1, 2, 112), qs_step=None,
            small="mobilenetv3_small_100",
            demo_frames=64, rerun_frames=32, mem_steps=20, mem_frames=100, overrides=[], thread_video=(768, 576),
            stream_frames=160)
QUICK = dict(videos=2, width=64, height=48, frames=24, clip_len=4, resize=40, crop=32, batch=2, workers=(0, 1),
             backbone="test_resnet", classes=8, wait_steps=3, bf16=(1, 2, 32), qs_step=(2, 2, 32), small=None,
             demo_frames=12, rerun_frames=8, mem_steps=2, mem_frames=12, thread_video=(96, 72), stream_frames=12,
             overrides=["data.clip_len=4", "data.resize_short=40", "data.crop_size=32", "model.backbone=test_resnet",
                        "model.hidden_size=16", "train.batch_size=4", "data.num_workers=0"])


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("command", choices=COMMANDS + ("serve", "deploy", "all"),
                   help="serve (tools/serve.py under 1, 4, 16 clients, batching on vs off) and deploy (tools/demo.py: "
                        "auto vs fixed threads with and without a busy core; torch vs onnxruntime fp32 vs int8 "
                        "streaming) are not part of 'all'")
    p.add_argument("--quick", action="store_true", help="tiny sizes (smoke test of the tool; figures meaningless)")
    p.add_argument("--repeats", type=int, default=0, help="timed rounds per benchmark (default: 3, quick: 1)")
    p.add_argument("--threads", type=int, default=0,
                   help="torch intra-op threads, also for the memory subprocesses (default: torch's choice; quick: 1)")
    p.add_argument("--options", default="channels_last,compile",
                   help="train-step options besides the default: channels_last, compile, threadsN (fp32 with N threads, "
                        "at the reduced size; also a streaming demo variant); bf16 always runs, at a reduced size")
    p.add_argument("--work-dir", type=Path, default=None, help="generated videos and runs (default: a temp dir)")
    p.add_argument("--json", type=Path, default=None, help="also write rows, machine and profiles as JSON")
    p.add_argument("--profile", action="store_true", help="torch.profiler tables of a train step and demo frames")
    p.add_argument("--debug", action="store_true", help="show full tracebacks")
    args = p.parse_args(argv)
    for option in (o for o in args.options.split(",") if o):
        if option not in ("channels_last", "compile") and not re.fullmatch(r"threads[1-9]\d*", option):
            p.error(f"--options: unknown option {option!r}; choose from channels_last, compile, threadsN")
    return args


def quickstart_size() -> tuple[int, int, int]:
    """(batch, clip_len, crop) of configs/quickstart.yaml, so the comparison follows the config."""
    cfg = load_config(QUICKSTART)
    return cfg.train.batch_size, cfg.data.sampling.clip_len, cfg.data.crop_size


def quickstart_cfg(work: Path, s: dict):
    """The quickstart config; in --quick mode on a tiny generated dataset with tiny sizes."""
    overrides = [f"train.output_dir={work / 'runs'}", "logging.wandb.mode=disabled", *s["overrides"]]
    if s["overrides"]:
        root = work / "tiny_data"
        if not root.exists():
            generate_synthetic_dataset(root, num_groups=2, clips_per_group=1, width=64, height=48, max_frames=16)
        overrides.append(f"data.root={root}")
    return load_config(QUICKSTART, overrides), overrides


def quickstart(cfg, steps: int, repeats: int) -> list[Row]:
    """Quickstart training steps: throughput and the trainer's data-wait share, per thread count.

    Compares torch's default thread count (all cores) with the trainer's CPU default
    (``train.cpu_threads=0``: cores minus data workers), in rotating rounds.
    """
    split = build.dataset_split(cfg.data)
    ds = build.train_dataset(cfg, split)
    waits: dict[int, list[tuple[float, float]]] = {}

    def run(threads: int):
        def one() -> tuple[float, float]:
            before = torch.get_num_threads()
            torch.set_num_threads(threads)
            try:
                loader = B.WaitTimer(build_loader(ds, batch_size=cfg.train.batch_size, train=True,
                                                  num_workers=cfg.data.num_workers, seed=cfg.train.seed))
                model = build.model_from(cfg, len(split.classes))
                optimizer = create_optimizer(model, cfg.optim.name, **build.optimizer_kwargs(cfg))
                autocast, scaler = setup_amp(torch.device("cpu"), cfg.train.amp)
                tr = train_one_epoch(model, loader, build.loss_from(cfg, ds.labels, list(split.classes)), optimizer,
                                     create_scheduler(optimizer, warmup_steps=0, total_steps=steps, min_ratio=1.0),
                                     epoch=0, autocast=autocast, scaler=scaler, max_steps=steps, show_progress=False,
                                     clip_grad_norm=cfg.optim.clip_grad_norm)
            finally:
                torch.set_num_threads(before)
            later = sum(loader.waits[1:steps]) / max(tr["time_s"] - loader.waits[0], 1e-9)  # after worker start-up
            waits.setdefault(threads, []).append((tr["data_wait_frac"], later))
            return tr["clips_per_s"] * tr["time_s"], tr["time_s"]
        return one

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    auto = cpu_threads(0, num_workers=cfg.data.num_workers)
    names = {cores: f"quickstart training, {cores} threads (torch default)"}
    names.setdefault(auto, f"quickstart training, {auto} threads (train.cpu_threads=0)")
    timed = interleaved({name: run(th) for th, name in names.items()}, repeats=repeats, warmup=0)
    rows = timed.rows("quickstart", "clips/s", baseline=names[cores])
    w = cfg.data.num_workers
    for th, name in names.items():
        rows.append(Row("quickstart", f"data wait, {th} threads, {steps} steps, {w} workers",
                        100 * statistics.median(a for a, _ in waits[th]), "% of time", runs=len(waits[th]),
                        note="train_one_epoch's data_wait_frac (includes worker start-up)"))
        rows.append(Row("quickstart", f"data wait after the first batch, {th} threads",
                        100 * statistics.median(b for _, b in waits[th]), "% of time", runs=len(waits[th])))
    return rows


def demo_checkpoint(work: Path, s: dict) -> Path:
    """A random-weight checkpoint at the demo's benchmark size (resnet18 224^2, T=16 when full)."""
    cfg = load_config(None, [f"model.backbone={s['backbone']}", f"data.clip_len={s['clip_len']}",
                             f"data.resize_short={s['resize']}", f"data.crop_size={s['crop']}"])
    names = [f"class{i}" for i in range(s["classes"])]
    ckpt = make_checkpoint(model=build.model_from(cfg, len(names)), optimizer=None, scheduler=None, scaler=None,
                           epoch=0, step=0, config=config_to_dict(cfg), class_names=names)
    path = work / "demo_model.pt"
    torch.save(ckpt, path)
    return path


def memory(work: Path, s: dict, video: Path, threads: int) -> list[Row]:
    cfg, overrides = quickstart_cfg(work, s)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)} if threads else None
    train = [sys.executable, str(REPO / "tools" / "train.py"), "--config", str(QUICKSTART), *overrides,
             "train.epochs=1", f"train.max_steps_per_epoch={s['mem_steps']}", "train.name=memory"]
    demo = [sys.executable, str(REPO / "tools" / "demo.py"), str(video), "--checkpoint", str(demo_checkpoint(work, s)),
            "--no-show", "--max-frames", str(s["mem_frames"])]
    rows = []
    for name, cmd in ((f"quickstart training ({s['mem_steps']} steps + validation, "
                       f"{cfg.data.num_workers} workers)", train), (f"demo ({s['backbone']} {s['crop']}px)", demo)):
        peak = run_with_peak_memory(cmd, cwd=REPO, env=env)
        if peak.returncode != 0:
            raise RuntimeError(f"{name} failed ({peak.returncode}):\n{peak.output_tail}")
        rows.append(Row("memory", name, peak.tree_peak_mb, "MB peak RSS (all processes)",
                        note=f"main process {peak.main_hwm_mb:.0f} MB; {peak.max_processes} processes; {peak.seconds:.0f} s"))
    return rows


def deploy(work: Path, s: dict, repeats: int) -> list[Row]:
    """tools/demo.py end to end: thread choice under load, and resnet18 streaming fp32 vs int8 (perf/deploy.py)."""
    from actionrec.perf import deploy as DP

    big = B.make_videos(work / "videos_768", count=1, width=s["thread_video"][0], height=s["thread_video"][1],
                        num_frames=s["frames"], h264=False)["xvid.avi"][0]
    qs_cfg, _ = quickstart_cfg(work, s)
    qs = work / "quickstart_model.pt"  # random weights at the quickstart's size: speed does not depend on them
    torch.save(make_checkpoint(model=build.model_from(qs_cfg, 8), optimizer=None, scheduler=None, scaler=None, epoch=0,
                               step=0, config=config_to_dict(qs_cfg), class_names=[f"c{i}" for i in range(8)]), qs)
    big_ckpt = demo_checkpoint(work, s)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    rows = DP.bench_threads(big, {"quickstart model": ["--checkpoint", str(qs)],
                                  f"{s['backbone']} {s['crop']}px": ["--checkpoint", str(big_ckpt), "--max-frames",
                                                                      str(s["demo_frames"])]},
                            cores=cores, repeats=repeats)
    # The int8 backbone is calibrated on frames of a small generated dataset (speed only: weights are random).
    calib = work / "calib_data"
    if not calib.exists():
        generate_synthetic_dataset(calib, num_groups=2, clips_per_group=1, width=320, height=240, max_frames=32)
    export = work / "export_int8"
    proc = subprocess.run([sys.executable, str(REPO / "tools" / "export.py"), str(big_ckpt), f"data.root={calib}",
                           "data.num_workers=0", "--out", str(export), "--int8", "--no-eval", "--calib-frames", "64",
                           "--bench-iters", "3"], capture_output=True, text=True, cwd=REPO)
    if proc.returncode != 0:
        raise RuntimeError(f"tools/export.py --int8 failed:\n{proc.stderr[-2000:]}")
    avi = B.make_videos(work / "videos", count=s["videos"], width=s["width"], height=s["height"],
                        num_frames=s["frames"])["xvid.avi"][0]
    rows += DP.bench_streaming(avi, big_ckpt, export, frames=s["stream_frames"], repeats=repeats)
    return rows


def write_result(args: argparse.Namespace, info: dict, rows: list[Row], profiles: dict) -> dict:
    table = markdown_table(rows)
    result = {"machine": info, "command": " ".join(["python", "tools/benchmark.py"] + sys.argv[1:]),
              "rows": [r.to_dict() for r in rows], "table": table, "profiles": profiles}
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1))
    return result


def main(args: argparse.Namespace) -> dict:
    # --quick defaults to one thread: on a busy shared CPU a second OpenMP thread spin-waits for a
    # descheduled partner and made small ops 10x slower.
    threads = args.threads or (1 if args.quick else 0)
    if threads:
        torch.set_num_threads(threads)
    s = QUICK if args.quick else FULL
    repeats = args.repeats or (1 if args.quick else 3)
    todo = COMMANDS if args.command == "all" else (args.command,)
    work_ctx = tempfile.TemporaryDirectory(prefix="actionrec-bench-") if args.work_dir is None else None
    work = Path(work_ctx.name) if work_ctx else args.work_dir
    info, rows, profiles = machine_info(), [], {}  # after set_num_threads: records the thread count
    print(f"machine: {json.dumps(info)}", file=sys.stderr, flush=True)
    videos = B.make_videos(work / "videos", count=s["videos"], width=s["width"], height=s["height"],
                           num_frames=s["frames"])
    avi = videos["xvid.avi"]
    for cmd in todo:
        print(f"running {cmd} ...", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        if cmd == "decode":
            rows += B.bench_decode(videos, clip_len=s["clip_len"], repeats=repeats)
        elif cmd == "loader":
            rows += B.bench_loader(avi * 2, clip_len=s["clip_len"], resize_short=s["resize"], crop_size=s["crop"],
                                   batch_size=s["batch"], workers=s["workers"], repeats=repeats)
            rows += quickstart(quickstart_cfg(work, s)[0], s["wait_steps"], repeats)
            if args.profile:
                ds = B.pipeline_dataset(avi, naive=False, clip_len=s["clip_len"], resize_short=s["resize"],
                                        crop_size=s["crop"], occlusion=B.FrameOcclusion(prob=0.3, patch_prob=0.3))
                profiles["loader items, 0 workers (cProfile)"] = cprofile_top(lambda: [ds[i] for i in range(len(ds))])
        elif cmd == "train-step":
            step_rows, prof = B.bench_train_suite(
                backbone=s["backbone"], batch=s["batch"], clip_len=s["clip_len"], size=s["crop"], num_classes=s["classes"],
                repeats=repeats, options=[o for o in args.options.split(",") if o], reduced=s["bf16"],
                quickstart_size=s["qs_step"] or quickstart_size(), peak_sizes=(256, 128) if args.quick else (2048, 1024), profile=args.profile)
            rows += step_rows
            if prof:
                profiles["train-step default (torch.profiler)"] = prof
        elif cmd == "demo":
            thr = [int(o[7:]) for o in args.options.split(",") if o.startswith("threads") and o[7:].isdigit()]
            demo_kw = dict(size=s["crop"], clip_len=s["clip_len"], frames=s["demo_frames"], rerun_frames=s["rerun_frames"])
            stride = 4 if not args.quick else 2  # demo.stride's default
            rows += B.bench_demo(avi[0], backbone=s["backbone"], stride=stride, repeats=repeats, channels_last=True,
                                 threads=thr[0] if thr else 0, **demo_kw)
            # A prediction every frame: the re-run approach pays clip_len CNN passes per frame.
            rows += B.bench_demo(avi[0], backbone=s["backbone"], stride=1, repeats=repeats,
                                 **dict(demo_kw, frames=s["demo_frames"] // 2, rerun_frames=s["rerun_frames"] // 4))
            if s["small"]:
                rows += B.bench_demo(avi[0], backbone=s["small"], stride=stride, repeats=repeats, **demo_kw)
            if args.profile:
                stream = list(B.demo_variants(avi[0], backbone=s["backbone"], stride=stride, **demo_kw).values())[1]
                stream()
                profiles["demo streaming (cProfile)"] = cprofile_top(stream)
        elif cmd == "memory":
            rows += memory(work, s, avi[0], threads)
        elif cmd == "deploy":
            rows += deploy(work, s, repeats)
        elif cmd == "serve":
            from actionrec.perf.serve import run_serve_benchmark

            serve_rows, profiles["serve"] = run_serve_benchmark(work, quick=args.quick, repeats=repeats, threads=threads)
            rows += serve_rows
        print(f"{cmd} took {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
        result = write_result(args, info, rows, profiles)  # after every benchmark: a crash keeps the rest
    print(result["table"])
    for name, prof in profiles.items():
        print(f"\nprofile: {name}\n{prof}")
    if work_ctx:
        work_ctx.cleanup()
    return result


if __name__ == "__main__":
    run_tool(parse_args, main)
