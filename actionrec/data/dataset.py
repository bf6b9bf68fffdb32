"""Manifest row (video path, label) to transformed clip(s) and label.

Randomness is a pure function of (seed, epoch, index): each item builds its own numpy Generator,
so the data a run sees does not depend on the number of workers, and a resumed run sees the same
clips as an uninterrupted one.

A video that fails to decode is not fatal: the item records (path, reason) in ``failed`` and, in
training, substitutes another video of the same split; the training loop counts and reports them.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Callable, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from actionrec.data.sampling import ClipSampling
from actionrec.data.video_io import VideoDecodeError, VideoReader
from actionrec.errors import UserError

log = logging.getLogger(__name__)


class VideoClipDataset(Dataset):
    """Clips from a list of (path, label) samples.

    Args:
        samples: sequence of objects with ``path`` and ``label`` (e.g. ``splits.VideoSample``).
        sampling: clip sampling parameters.
        transforms: one transform per view; train uses a single random transform, eval may pass
            several deterministic crops (three-crop testing).
        train: random sampling and augmentation; otherwise ``num_clips`` evenly spaced clips.
        backend: video decoder ('auto', 'decord', 'pyav' or 'opencv'); see ``video_io``.
        seek: seek policy of the frame-exact reader ('auto', 'always', 'never').
        seed: base seed of the per-item random generators.
        max_retries: train only: how many other videos to try when a video fails to decode.
        reversal: train only: a ``reversal.TimeReversal`` that plays some clips backwards with
            their twin class's label (``data.reverse_pairs``).
        mirror: train only: a ``mirror.Mirror`` that flips some clips left-right with their mirror
            label (``data.mirror_pairs``).

    Items are dicts: ``clip`` float tensor (T, C, H, W) in train mode, (V, T, C, H, W) in eval
    mode with V = num_clips * len(transforms); ``label`` int; ``index`` int (the sample actually
    used); ``failed`` list of (path, reason) for videos that could not be decoded.
    """

    def __init__(
        self,
        samples: Sequence,
        *,
        sampling: ClipSampling,
        transforms: Sequence[Callable],
        train: bool,
        backend: str = "auto",
        seek: str = "auto",
        seed: int = 0,
        max_retries: int = 10,
        reversal=None,
        mirror=None,
    ):
        if not samples:
            raise ValueError("dataset has no samples")
        self.paths = [str(s.path) for s in samples]
        self.labels = [int(s.label) for s in samples]
        self.sampling = sampling
        self.transforms = list(transforms)
        self.train = train
        self.backend, self.seek = backend, seek
        self.seed = seed
        self.max_retries = max_retries
        self.reversal = reversal if train else None
        self.mirror = mirror if train else None
        # Shared memory: persistent DataLoader workers hold a copy of the dataset, and must still
        # see the epoch the main process sets.
        self._epoch = torch.zeros((), dtype=torch.int64).share_memory_()
        self.decode_table: DecodeTable | None = None  # set by the loader: which file each worker decodes
        # The reader's self-check result per video, shared by all DataLoader workers so each file
        # is checked once per run: 0 not yet, 1 the backend agrees with PyAV, 2 read it with PyAV.
        self.decoder_checked = torch.zeros(len(self.paths), dtype=torch.uint8).share_memory_()

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def epoch(self) -> int:
        return int(self._epoch)

    def set_epoch(self, epoch: int) -> None:
        """Changes the random draws; call before each epoch (before iterating the loader).

        Reaches persistent workers too: they read the epoch from shared memory when an item is drawn.
        """
        self._epoch.fill_(epoch)

    def clip_indices(self, num_frames: int, rng: np.random.Generator) -> np.ndarray:
        """(num_clips, clip_len) frame indices: one random clip in training."""
        return self.sampling.train_indices(num_frames, rng)[None] if self.train else self.sampling.eval_indices(num_frames)

    def load(self, index: int, rng: np.random.Generator) -> torch.Tensor:
        """Decode and transform the clip(s) of one video; raises VideoDecodeError."""
        table = self.decode_table
        if table is not None:
            table.start(self.paths[index])
        checked = int(self.decoder_checked[index])
        backend = "pyav" if checked == 2 else self.backend
        try:
            with VideoReader(self.paths[index], backend=backend, seek=self.seek, verify=checked == 0) as reader:
                if checked == 0:
                    self.decoder_checked[index] = 2 if reader.fallback else 1
                clips = self.clip_indices(len(reader), rng)  # (num_clips, clip_len)
                # One decode for all clips: the reader sorts and de-duplicates indices.
                frames = reader.get_frames(clips.reshape(-1))
        finally:
            if table is not None:
                table.done()
        frames = frames.reshape(clips.shape[0], clips.shape[1], *frames.shape[1:])
        if self.train:
            return self.transforms[0](frames[0], rng)
        views = [tf(clip) for clip in frames for tf in self.transforms]
        return torch.stack(views)

    def __getitem__(self, index: int) -> dict:
        rng = np.random.default_rng([self.seed, self.epoch, index])
        failed: list[tuple[str, str]] = []
        tries = self.max_retries + 1 if self.train else 1
        current = index
        for _ in range(tries):
            try:
                clip, label = self.load(current, rng), self.labels[current]
                if self.reversal is not None:
                    clip, label = self.reversal(clip, label, self.epoch, current)
                if self.mirror is not None:
                    clip, label = self.mirror(clip, label, self.epoch, current)
                return {"clip": clip, "label": label, "index": current, "failed": failed}
            except (VideoDecodeError, FileNotFoundError) as e:  # a file can vanish after the split was read
                failed.append((self.paths[current], e.reason if isinstance(e, VideoDecodeError) else "file not found"))
                # Substitute another video of the same split, drawn from the item's own generator.
                current = int(rng.integers(len(self)))
        if self.train:
            raise TooManyBadVideos(
                f"{len(failed)} videos in a row failed to decode (item {index} and {len(failed) - 1} substitutes); "
                "the dataset looks broken: run data_prep/check_videos.py on it. Files:\n"
                + "\n".join(f"  {p}: {r}" for p, r in failed))
        return {"clip": None, "label": self.labels[index], "index": index, "failed": failed}


def collate_clips(items: list[dict]) -> dict:
    """Batch dataset items; eval items whose video failed (clip None) are left out but reported."""
    failed = [f for it in items for f in it["failed"]]
    good = [it for it in items if it["clip"] is not None]
    if not good:
        return {"clip": None, "label": None, "index": None, "failed": failed}
    return {
        "clip": torch.stack([it["clip"] for it in good]),
        "label": torch.tensor([it["label"] for it in good], dtype=torch.long),
        "index": torch.tensor([it["index"] for it in good], dtype=torch.long),
        "failed": failed,
    }


def class_counts(labels: Sequence[int], num_classes: int) -> list[int]:
    """Number of samples per class (for focal-loss alpha='auto')."""
    return np.bincount(np.asarray(labels, dtype=np.int64), minlength=num_classes).tolist()



class TooManyBadVideos(UserError, RuntimeError):
    """More videos failed to decode than ``max_bad_fraction`` allows."""


class DecodeTable:
    """Which file each DataLoader worker is decoding, in shared memory, for the main process.

    A hung or crashed decoder surfaces in the main process only as "DataLoader timed out" or
    "worker exited unexpectedly"; this table lets that message name the file. Workers write one
    row each (their ``worker_id``); writes from the main process (``num_workers=0``) are ignored.

    Args:
        num_workers: rows of the table.
        max_path_bytes: longer paths keep their tail (the file name is what matters).
    """

    def __init__(self, num_workers: int, max_path_bytes: int = 1024):
        self.paths = torch.zeros(num_workers, max_path_bytes, dtype=torch.uint8).share_memory_()
        self.since = torch.zeros(num_workers, dtype=torch.float64).share_memory_()

    def start(self, path: str) -> None:
        info = torch.utils.data.get_worker_info()
        if info is None or info.id >= len(self.since):
            return
        raw = os.fsencode(path)[-self.paths.shape[1]:]
        row = torch.zeros(self.paths.shape[1], dtype=torch.uint8)
        row[: len(raw)] = torch.frombuffer(bytearray(raw), dtype=torch.uint8)
        self.paths[info.id] = row
        self.since[info.id] = time.time()

    def done(self) -> None:
        info = torch.utils.data.get_worker_info()
        if info is not None and info.id < len(self.since):
            self.since[info.id] = 0.0

    def busy(self) -> list[tuple[int, str, float]]:
        """(worker id, path, seconds so far) for every worker in the middle of a decode."""
        now, out = time.time(), []
        for wid in range(len(self.since)):
            t = float(self.since[wid])
            if t > 0:
                raw = bytes(self.paths[wid].numpy()).rstrip(b"\0")
                out.append((wid, os.fsdecode(raw), now - t))
        return out


class DecodeFailures:
    """Unique videos that failed to decode during a run: logged once each, capped as a fraction.

    Args:
        dataset_size: number of videos the fraction refers to.
        max_fraction: more failures than ``max_fraction * dataset_size`` stop the run.
    """

    def __init__(self, dataset_size: int, max_fraction: float):
        self.dataset_size = dataset_size
        self.max_fraction = max_fraction
        self.reasons: dict[str, str] = {}

    def add(self, failed: Sequence[tuple[str, str]]) -> int:
        """Record failures; logs new ones; returns how many were new."""
        new = 0
        for path, reason in failed:
            if path not in self.reasons:
                self.reasons[path] = reason
                new += 1
                log.warning("skipping unreadable video %s: %s", path, reason)
        return new

    def record(self, failed: Sequence[tuple[str, str]]) -> None:
        """``add`` then ``check``: for failures reported while an epoch runs."""
        self.add(failed)
        self.check()

    def check(self) -> None:
        """Raise RuntimeError listing the files when the failures exceed the limit."""
        if len(self.reasons) > self.max_fraction * self.dataset_size:
            files = "\n".join(f"  {p}: {r}" for p, r in sorted(self.reasons.items()))
            raise TooManyBadVideos(
                f"{len(self.reasons)} of {self.dataset_size} videos failed to decode, more than "
                f"data.max_bad_fraction={self.max_fraction}. Run data_prep/check_videos.py on the dataset. Files:\n{files}"
            )
