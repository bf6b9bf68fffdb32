"""Turn an uploaded video file into model inputs, in a decode worker process (``workers.WorkerPool``).

One job decodes one file once with ``data.video_io.VideoReader`` and returns the preprocessed
frames two answers need: the evaluation views (``num_clips`` evenly spaced clips x crops, the
clip indices and transforms of ``build.eval_dataset``, i.e. what ``tools/eval.py`` feeds the model)
and the streaming timeline's frames (every ``frame_step``-th frame through the per-frame eval
transform, what ``tools/demo.py`` feeds its ``StreamingClassifier``). A frame that both need, or
that several clips share, is preprocessed (and later encoded by the CNN) once: ``rows`` holds
each distinct (crop, frame) image and ``view_rows`` / ``timeline_rows`` index into it. The eval
transforms work frame by frame (resize, crop, normalise), so this equals building each view on its
own as ``VideoClipDataset.load`` does. An export folder (``kind='onnx'``) is served without torch:
the same sampling (``data.sampling.eval_clip_indices``) and the numpy twin of the eval transform
(``backends.FramePreprocessor``), as ``tools/demo.py --onnx`` does.

Bad files come back as ``{"status": 4xx, "error": "..."}`` rather than raising, so the server can
answer with the status; messages are written with ``{name}`` where the file's path would be,
and the server puts the client's file name there (temp paths never reach a client).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np

WARMUP = "warmup"
_CHUNK = 32  # frames decoded and preprocessed at a time, so a long upload never sits in memory raw


@dataclass(frozen=True)
class DecodeSpec:
    """What a decode worker needs to know about the model (picklable, sent once per process).

    Attributes:
        kind: 'checkpoint' (the eval dataset and transforms of ``config``) or 'onnx'.
        clip_len: frames per clip.
        config: the checkpoint's ``Config`` (kind 'checkpoint').
        sampling: ONNX: ``mode``, ``frame_interval``, ``short_video`` of the training config.
        preprocess: ONNX: ``FramePreprocessor`` arguments (resize_short, crop_size, mean, std).
        backend, seek: ``VideoReader`` settings (the checkpoint's ``data.backend`` / ``data.seek``).
    """

    kind: str
    clip_len: int
    config: Any = None
    sampling: dict = field(default_factory=dict)
    preprocess: dict = field(default_factory=dict)
    backend: str = "auto"
    seek: str = "auto"


@dataclass(frozen=True)
class DecodeJob:
    path: str
    num_clips: int
    num_crops: int
    frame_step: int
    max_seconds: float
    max_frames: int


class _Sample:  # what VideoClipDataset reads from a split entry
    def __init__(self, path: str):
        self.path, self.label = path, 0


_transforms: dict[tuple, Any] = {}  # (num_crops,) -> (view transforms, index of the centre one); per process


def _crop_transforms(spec: DecodeSpec, num_crops: int) -> tuple[list, int]:
    """Per-crop functions (n, H, W, 3) uint8 RGB -> (n, 3, S, S) float32, and which one is the centre crop.

    A checkpoint's are ``build.eval_transforms_from`` (eval's own: ``eval_dataset`` builds them the
    same way; the demo's frame transform is the centre one). An export has the centre crop only.
    """
    key = (num_crops,)
    if key not in _transforms:
        if spec.kind == "checkpoint":
            from actionrec import build

            tfs = build.eval_transforms_from(spec.config.data, num_crops)  # [centre] or [left, centre, right]
            fns = [lambda frames, _tf=tf: _tf(frames).numpy() for tf in tfs]
            _transforms[key] = (fns, len(tfs) // 2)
        else:
            from actionrec.deploy.backends import FramePreprocessor

            pre = FramePreprocessor(**spec.preprocess)
            _transforms[key] = ([lambda frames: np.stack([pre(f) for f in frames])], 0)
    return _transforms[key]


def _clip_indices(spec: DecodeSpec, job: DecodeJob, num_frames: int) -> np.ndarray:
    """(num_clips, T) frame indices of the evaluation clips."""
    if spec.kind == "checkpoint":
        from actionrec import build

        ds = build.eval_dataset(spec.config, [_Sample(job.path)], num_clips=job.num_clips, num_crops=job.num_crops)
        return ds.clip_indices(num_frames, np.random.default_rng(0))  # eval mode: deterministic, rng unused
    from actionrec.data.sampling import eval_clip_indices

    return eval_clip_indices(num_frames, spec.clip_len, job.num_clips, **spec.sampling)


def _warmup(spec: DecodeSpec) -> str:
    import cv2

    cv2.setNumThreads(1)  # one job per process; the server's inference thread needs the cores
    if spec.kind == "checkpoint":
        import torch

        torch.set_num_threads(1)
        import actionrec.data.dataset  # noqa: F401 - the slow imports, before the first job's clock starts
    _crop_transforms(spec, 1)
    from actionrec.data import video_io  # noqa: F401

    return "ready"


def _limits(reader, job: DecodeJob) -> dict | None:
    n, fps = len(reader), float(reader.info.fps or 0.0)
    seconds = n / fps if fps > 0 else None
    if seconds is not None and seconds > job.max_seconds:
        return {"status": 413, "error": f"{{name}}: video is {seconds:.1f} s long; this server takes at most "
                                        f"{job.max_seconds:g} s (--max-seconds)"}
    if n > job.max_frames:
        return {"status": 413, "error": f"{{name}}: video has {n} frames; this server takes at most {job.max_frames} "
                                        f"(--max-seconds at up to 120 fps)"}
    return None


def _truncated(path: str, reader, clip_len: int) -> str:
    """``check_video``'s verdict when the header promises more frames than decode, else ''.

    Counts that disagree are either a cut file or an intact one whose header overstates (packed
    B-frame XviD); only the full check (one more decode) tells, so it runs only then.
    """
    if reader.declared is None or reader.declared <= len(reader):
        return ""
    from actionrec.data.check import check_video

    res = check_video(path, clip_len=clip_len)
    return res.reason if res.status in ("unreadable", "zero_frames", "truncated") else ""


def _forget(path: str) -> None:
    """Drop the reader's per-process memo of this (deleted) temp file, or a long-running worker grows."""
    from actionrec.data import video_io

    for memo in (getattr(video_io, "_CHECKED", None), getattr(video_io, "_FELL_BACK", None)):
        if isinstance(memo, dict):
            for key in [k for k in memo if (k[0] if isinstance(k, tuple) else k) == path]:
                memo.pop(key, None)
        elif isinstance(memo, set):
            memo.discard(path)


def _preprocess(reader, spec: DecodeSpec, job: DecodeJob) -> dict:
    n = len(reader)
    clips = _clip_indices(spec, job, n)  # (C, T)
    timeline = np.arange(0, n, job.frame_step)
    fns, centre = _crop_transforms(spec, job.num_crops)
    # Distinct frames per crop: the centre crop serves the views and the timeline, side crops the views.
    want = [np.unique(clips) for _ in fns]
    want[centre] = np.union1d(want[centre], timeline)
    rows, offsets, chunks = [], [], [[] for _ in fns]
    every = np.unique(np.concatenate(want))
    for i in range(0, len(every), _CHUNK):  # ascending chunks: a sequential reader goes on where it stopped
        idx = every[i : i + _CHUNK]
        frames = reader.get_frames(idx)
        for c, fn in enumerate(fns):
            keep = np.isin(idx, want[c])
            if keep.any():
                chunks[c].append(fn(frames[keep]))
    start = 0
    for c in range(len(fns)):
        rows.append(np.concatenate(chunks[c]))
        offsets.append(start)
        start += len(want[c])
    # Row of (crop c, frame f) = offsets[c] + position of f in want[c]. View order is eval's: clip-major, then crop.
    view_rows = np.stack([offsets[c] + np.searchsorted(want[c], clip) for clip in clips for c in range(len(fns))])
    return {"rows": np.concatenate(rows), "view_rows": view_rows,
            "timeline_rows": offsets[centre] + np.searchsorted(want[centre], timeline),
            "timeline_frames": timeline.tolist()}


def decode_upload(spec: DecodeSpec, job: DecodeJob | str) -> dict | str:
    """The worker function: preprocessed frames of ``job.path``, or a 4xx status and message.

    Returns:
        ``{"frames", "fps", "width", "height", "rows" (R, 3, S, S) float32, "view_rows" (V, T),
        "timeline_rows" (N,), "timeline_frames" [N source indices]}``, or ``{"status", "error"}``.
    """
    if job == WARMUP:
        return _warmup(spec)
    from actionrec.data.video_io import VideoDecodeError, VideoReader

    def bad(reason: str) -> dict:
        return {"status": 422, "error": "{name}: " + reason.replace(job.path, "{name}")}

    try:
        # The reader settings of VideoClipDataset.load (eval's): the checkpoint's backend and seek, self-check on.
        with VideoReader(job.path, backend=spec.backend, seek=spec.seek) as reader:
            info = reader.info
            too_big = _limits(reader, job)
            if too_big:
                return too_big
            cut = _truncated(job.path, reader, spec.clip_len)
            if cut:
                return bad(f"truncated: {cut}")
            out = _preprocess(reader, spec, job)
    except VideoDecodeError as e:
        reason = e.reason
        if "Invalid data found" in reason:  # FFmpeg's words for "no container or stream I can read"
            reason = "not a video (FFmpeg finds no container or video stream it can read)"
        return bad(reason)
    except IndexError as e:  # the header promised frames the decoder then did not find
        return bad(f"truncated: {e}")
    finally:
        _forget(job.path)
    return {"frames": info.num_frames, "fps": info.fps, "width": info.width, "height": info.height, **out}


def reader_settings(data_config) -> tuple[str, str]:
    """(backend, seek) of a checkpoint's data config (``data.backend``, ``data.seek``)."""
    return getattr(data_config, "backend", "auto"), getattr(data_config, "seek", "auto")


def safe_suffix(filename: str | None) -> str:
    """The upload's extension if it is a known video one (the reader picks its strategy by it), else ''."""
    from actionrec.data.splits import VIDEO_EXTENSIONS

    ext = os.path.splitext(os.path.basename(filename or ""))[1].lower()
    return ext if ext in VIDEO_EXTENSIONS else ""
