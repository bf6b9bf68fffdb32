"""Which frame indices form a clip. Pure functions: no decoding, no I/O.

Train: TSN-style segment sampling (one random frame from each of ``clip_len`` equal segments, so
a clip always spans the whole video), uniform sampling (the same segments, one random position
shared by all of them: evenly spaced frames, the whole clip shifted at random) or dense clips
(``clip_len`` frames ``frame_interval`` apart, starting at a random offset). Test: ``num_clips``
evenly spaced clips, deterministic (segment and uniform sampling test alike).
Videos with fewer frames than a clip needs are padded by looping or by repeating the last frame.

``ClipSampling`` holds the parameters and computes a video's indices (as MMAction2's ``SampleFrames``);
numpy only, so ``actionrec.config`` takes it as the ``data`` section's sampling without importing torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np


def _pad_short(num_frames: int, clip_len: int, short_video: str) -> np.ndarray:
    """Indices for a video with fewer than ``clip_len`` frames (always in temporal order)."""
    if short_video == "loop":
        return np.arange(clip_len) % num_frames
    if short_video == "repeat_last":
        return np.minimum(np.arange(clip_len), num_frames - 1)
    raise ValueError(f"short_video must be 'loop' or 'repeat_last', got {short_video!r}")


def _check(num_frames: int, clip_len: int) -> None:
    if num_frames < 1:
        raise ValueError(f"video has no frames (num_frames={num_frames})")
    if clip_len < 1:
        raise ValueError(f"clip_len must be >= 1, got {clip_len}")


def _segments(num_frames: int, clip_len: int) -> tuple[np.ndarray, np.ndarray]:
    """TSN's ``clip_len`` equal segments of a video: each one's first frame and length (>= 1), int64."""
    edges = np.linspace(0, num_frames, clip_len + 1)
    starts = np.floor(edges[:-1]).astype(np.int64)
    return starts, np.maximum(np.floor(edges[1:]).astype(np.int64) - starts, 1)


def segment_indices(
    num_frames: int, clip_len: int, *, rng: np.random.Generator | None, short_video: str = "loop"
) -> np.ndarray:
    """TSN segment sampling: split the video into ``clip_len`` segments, take one frame of each.

    Args:
        num_frames: frames in the video.
        clip_len: frames in the clip.
        rng: random generator (train: random frame per segment); None takes each segment's centre.
        short_video: 'loop' or 'repeat_last' for videos shorter than ``clip_len``.

    Returns:
        int64 array of ``clip_len`` non-decreasing frame indices.
    """
    _check(num_frames, clip_len)
    if num_frames < clip_len:
        return _pad_short(num_frames, clip_len, short_video)
    starts, lengths = _segments(num_frames, clip_len)
    if rng is None:
        return starts + (lengths - 1) // 2
    return starts + (rng.random(clip_len) * lengths).astype(np.int64)


def uniform_indices(
    num_frames: int, clip_len: int, *, rng: np.random.Generator | None, short_video: str = "loop"
) -> np.ndarray:
    """Evenly spaced frames: the ``clip_len`` segments of ``segment_indices``, one random position
    (a fraction of the segment) shared by all of them, so consecutive frames are one segment apart
    (up to rounding) wherever the clip starts.

    TSN's independent draw per segment puts consecutive frames 1 frame to 2 segments apart, so the motion
    between two frames of a training clip is up to twice (or a fraction of) what it is at test
    time, where the frames are the segments' centres; with a shared position it is what the test
    clips show, and the clip still moves through the video from draw to draw. None takes the
    centres, as ``segment_indices``.
    """
    _check(num_frames, clip_len)
    if num_frames < clip_len:
        return _pad_short(num_frames, clip_len, short_video)
    if rng is None:
        return segment_indices(num_frames, clip_len, rng=None)
    starts, lengths = _segments(num_frames, clip_len)
    return starts + (rng.random() * lengths).astype(np.int64)


def dense_indices(
    num_frames: int,
    clip_len: int,
    *,
    frame_interval: int = 1,
    rng: np.random.Generator | None,
    short_video: str = "loop",
) -> np.ndarray:
    """A dense clip: ``clip_len`` frames ``frame_interval`` apart from a random (or centred) start.

    When the video is shorter than the clip's span the interval shrinks first (so the clip still
    covers the video), and only a video with fewer than ``clip_len`` frames is padded.
    """
    _check(num_frames, clip_len)
    if num_frames < clip_len:
        return _pad_short(num_frames, clip_len, short_video)
    interval = max(1, min(frame_interval, (num_frames - 1) // max(clip_len - 1, 1)))
    span = (clip_len - 1) * interval + 1
    max_start = num_frames - span
    start = int(rng.integers(0, max_start + 1)) if rng is not None else max_start // 2
    return start + np.arange(clip_len, dtype=np.int64) * interval


def eval_clip_indices(
    num_frames: int,
    clip_len: int,
    num_clips: int,
    *,
    mode: str = "segment",
    frame_interval: int = 1,
    short_video: str = "loop",
) -> np.ndarray:
    """``num_clips`` evenly spaced, deterministic clips for testing.

    Segment mode (and uniform, whose test clips are the same): clip k takes, in every segment, the
    frame at fraction (k + 0.5) / num_clips of the segment (clip 0 of 1 is the segment centres).
    Dense mode: clip starts evenly spread over the valid start range (as in MMAction2's test-time
    SampleFrames).

    Returns:
        int64 array of shape (num_clips, clip_len).
    """
    _check(num_frames, clip_len)
    if num_clips < 1:
        raise ValueError(f"num_clips must be >= 1, got {num_clips}")
    if num_frames < clip_len:
        return np.tile(_pad_short(num_frames, clip_len, short_video), (num_clips, 1))
    clips = []
    if mode in ("segment", "uniform"):
        starts, lengths = _segments(num_frames, clip_len)
        for k in range(num_clips):
            clips.append(starts + np.floor(lengths * (k + 0.5) / num_clips).astype(np.int64))
    elif mode == "dense":
        interval = max(1, min(frame_interval, (num_frames - 1) // max(clip_len - 1, 1)))
        span = (clip_len - 1) * interval + 1
        max_start = num_frames - span
        for k in range(num_clips):
            start = int(round(max_start * (k + 0.5) / num_clips)) if num_clips > 1 else max_start // 2
            clips.append(start + np.arange(clip_len, dtype=np.int64) * interval)
    else:
        raise ValueError(f"mode must be 'segment', 'uniform' or 'dense', got {mode!r}")
    return np.stack(clips)


def train_clip_indices(
    num_frames: int,
    clip_len: int,
    *,
    mode: str,
    rng: np.random.Generator,
    frame_interval: int = 1,
    short_video: str = "loop",
) -> np.ndarray:
    """Dispatch to segment, uniform or dense sampling for training."""
    if mode == "segment":
        return segment_indices(num_frames, clip_len, rng=rng, short_video=short_video)
    if mode == "uniform":
        return uniform_indices(num_frames, clip_len, rng=rng, short_video=short_video)
    if mode == "dense":
        return dense_indices(num_frames, clip_len, frame_interval=frame_interval, rng=rng, short_video=short_video)
    raise ValueError(f"mode must be 'segment', 'uniform' or 'dense', got {mode!r}")


@dataclass(frozen=True)
class ClipSampling:
    """How clips are drawn from a video; also the config's sampling keys (``data.clip_len``,
    ``data.train_sampling``, ``data.frame_interval``, ``data.short_video``: see ``config.DataConfig``)."""

    clip_len: int = 16
    mode: Literal["segment", "uniform", "dense"] = "segment"
    frame_interval: int = 1  # stride between frames of a dense clip
    short_video: Literal["loop", "repeat_last"] = "loop"
    num_clips: int = 1  # eval only: evenly spaced clips per video

    def train_indices(self, num_frames: int, rng: np.random.Generator) -> np.ndarray:
        """One random clip: int64 array (clip_len,)."""
        return train_clip_indices(num_frames, self.clip_len, mode=self.mode, rng=rng, frame_interval=self.frame_interval,
                                  short_video=self.short_video)

    def eval_indices(self, num_frames: int) -> np.ndarray:
        """``num_clips`` deterministic clips: int64 array (num_clips, clip_len)."""
        return eval_clip_indices(num_frames, self.clip_len, self.num_clips, mode=self.mode,
                                 frame_interval=self.frame_interval, short_video=self.short_video)
