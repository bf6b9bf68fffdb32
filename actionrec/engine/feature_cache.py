"""Frozen-backbone feature cache: run the CNN once per clip, then train the temporal head on features.

With a frozen backbone every epoch recomputes the same expensive CNN features; caching them makes
a head-only epoch cost a small fraction of a full step (the LSTM over (T, D) features instead of
T CNN forwards, and no video decoding).

Which clips: a clip's features are only reusable if the clip is the same every time it is read.
With one view per video (``train.cache_views=1``) cached training uses the deterministic EVAL
sampling and transform for the training videos too (centre crop, evenly spaced clip). With K > 1
views, view k of a training video is the TRAIN pipeline's clip of epoch k (its own temporal
sampling, crop, flip where allowed, colour jitter and frame occlusion, all drawn from
(seed, k, video)), and epoch e trains on view e mod K: a frozen backbone's head still sees varied
inputs, at cached speed. Each view is its own cache (the view number and seed are key parts).

Cache key, so a stale entry is never read:

* global part: backbone name, its feature pooling grid, and a digest of its weights and buffers (batch-norm statistics),
  the transform (the albumentations pipeline's repr, which lists every parameter), the sampling
  parameters, the decoder backend and seek mode, and the precision (device type and AMP mode);
* per video: resolved path, size and mtime. Eval clip indices are a pure function of the sampling
  parameters and the frame count, and the frame count is fixed by the file, so the indices are
  covered without opening the video.

Storage: ``<root>/<global key>/<video key>.pt`` (written to a temp file then renamed, so parallel
ranks and interrupted runs never leave half-written entries), or memory only when ``root`` is None.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.nn as nn
from torch.utils.data import DataLoader, Dataset, Subset

from actionrec.data.dataset import collate_clips

log = logging.getLogger(__name__)


def state_dict_digest(module: nn.Module) -> str:
    """sha256 over a module's parameters and buffers (names, dtypes, shapes and values)."""
    h = hashlib.sha256()
    for name, t in module.state_dict().items():
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def transform_fingerprint(transform) -> str:
    """A string that changes whenever the transform's output could change.

    ``ClipTransform`` wraps an albumentations ``Compose`` whose repr lists every step with all its
    parameters; the occlusion (train only) is a frozen dataclass with a complete repr too.
    """
    pipeline = getattr(transform, "pipeline", transform)
    return f"{type(transform).__name__}|{pipeline!r}|{getattr(transform, 'occlusion', None)!r}"


def video_identity(path: str | os.PathLike) -> dict:
    """Resolved path, size and mtime: a re-encoded or replaced file gets a new cache entry."""
    p = Path(path).resolve()
    st = p.stat()
    return {"path": str(p), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


class FeatureCache:
    """Per-video CNN features, keyed by everything that changes them (see the module docstring).

    Args:
        root: folder for the entries (a sub-folder per global key is created), or None for memory.
        backbone_name: the timm model name.
        backbone: the backbone module (its weights and buffers are hashed).
        feature_grid: the model's feature pooling grid (``model.feature_grid``; 1 = global pooling).
        transforms: the per-view transforms the clips go through.
        sampling: clip sampling parameters (a dataclass or a dict).
        backend: decoder backend; ``seek``: the reader's seek mode.
        precision: how features are computed, e.g. "cpu:none" or "cuda:bf16".
        view: (seed, view number) of an augmented training view; None for deterministic clips.
        motion: ``model.motion_map`` when the features carry the motion map (0: they do not).
        contrast: 0, or ``model.contrast_grid`` when the features carry the stride-16 stage's channel
            means (1) and its cells (> 1) (``model.contrast``).
    """

    def __init__(
        self,
        root: str | os.PathLike | None,
        *,
        backbone_name: str,
        backbone: nn.Module,
        feature_grid: int = 1,
        transforms: Sequence,
        sampling,
        backend: str,
        seek: str,
        precision: str,
        view: tuple[int, int] | None = None,
        motion: int = 0,
        contrast: int = 0,
    ):
        if dataclasses.is_dataclass(sampling):
            sampling = dataclasses.asdict(sampling)
        self.parts = {
            "backbone": backbone_name,
            "feature_grid": feature_grid,
            "weights": state_dict_digest(backbone),
            "transforms": [transform_fingerprint(t) for t in transforms],
            "sampling": dict(sampling),
            "decoder": [backend, seek],
            "precision": precision,
            "format": 2,  # 2: grid features run the backbone's pre-logits layers per cell (cnn_lstm.grid_cells)
        }
        if motion:  # features carry the pooled stride-8 map (model.motion), this many cells a side
            self.parts["motion_map"] = int(motion)
        if contrast:  # features end with the stride-16 stage's channel means (model.contrast)
            self.parts["contrast_stage"] = 16
            if int(contrast) > 1:  # and its N x N cells (model.contrast_grid); grid 1 keeps the key it always had
                self.parts["contrast_grid"] = int(contrast)
        if view is not None:  # an augmented training view: (seed, view number) fixes its random draws
            self.parts["view"] = list(view)
        self.key = _digest(self.parts)[:20]
        self.dir = Path(root).expanduser() / self.key if root is not None else None
        self._memory: dict[str, torch.Tensor] = {}

    def entry_key(self, path: str | os.PathLike) -> str:
        return _digest([self.key, video_identity(path)])[:32]

    def _file(self, path) -> Path:
        return self.dir / f"{self.entry_key(path)}.pt"

    def get(self, path: str | os.PathLike) -> torch.Tensor | None:
        """The cached (V, T, D) features of ``path``, or None when absent or stale."""
        key = self.entry_key(path)
        if key in self._memory:
            return self._memory[key]
        if self.dir is None:
            return None
        f = self.dir / f"{key}.pt"
        if not f.is_file():
            return None
        feats = torch.load(f, map_location="cpu", weights_only=True)["feats"]
        self._memory[key] = feats
        return feats

    def put(self, path: str | os.PathLike, feats: torch.Tensor) -> None:
        key = self.entry_key(path)
        # A compact copy: a row of the extraction batch shares the batch's storage, and torch.save writes a
        # tensor's whole storage (every entry on disk was batch_size times its size).
        feats = feats.detach().float().cpu().clone(memory_format=torch.contiguous_format)
        self._memory[key] = feats
        if self.dir is None:
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        if not (self.dir / "key.json").exists():
            (self.dir / "key.json").write_text(json.dumps(self.parts, indent=1, default=str))
        fd, tmp = tempfile.mkstemp(dir=self.dir, suffix=".tmp")
        os.close(fd)
        try:
            torch.save({"feats": feats, "video": video_identity(path)}, tmp)
            os.replace(tmp, self.dir / f"{key}.pt")
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)


@torch.no_grad()
def extract_features(
    model: nn.Module,
    dataset,
    cache: FeatureCache,
    *,
    batch_size: int,
    num_workers: int = 0,
    autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
    rank: int = 0,
    world_size: int = 1,
) -> list[tuple[str, str]]:
    """Compute and cache the features of every video of ``dataset`` that has no entry yet.

    Args:
        model: a ``CNNLSTM``; only ``clip_features`` (the backbone, in eval mode) runs.
        dataset: an eval-mode ``VideoClipDataset`` (deterministic clips, items (V, T, C, H, W)).
        cache: where the features go.
        batch_size: videos per backbone call.
        num_workers: decoding processes.
        autocast: context factory from ``setup_amp`` (the precision must match the cache's).
        rank, world_size: under DDP each rank computes its share of the missing entries.

    Returns:
        (path, reason) of the videos that failed to decode (they get no entry).
    """
    missing = [i for i in range(len(dataset)) if cache.get(dataset.paths[i]) is None][rank::world_size]
    if not missing:
        return []
    log.info("computing backbone features of %d videos (cache %s)", len(missing), cache.dir or "in memory")
    was_training = model.training
    model.eval()
    loader = DataLoader(Subset(dataset, missing), batch_size=batch_size, num_workers=num_workers, collate_fn=collate_clips)
    failed: list[tuple[str, str]] = []
    try:
        for batch in loader:
            failed.extend(batch["failed"])
            if batch["clip"] is None:
                continue
            clips = batch["clip"]  # (B, V, T, C, H, W); a train-mode dataset gives one view (B, T, C, H, W)
            if clips.dim() == 5:
                clips = clips[:, None]
            b, v = clips.shape[:2]
            with autocast():
                feats = model.clip_features(clips.flatten(0, 1))  # (B*V, T, D)
            feats = feats.float().view(b, v, *feats.shape[1:])
            for i, idx in enumerate(batch["index"].tolist()):
                cache.put(dataset.paths[idx], feats[i])
    finally:
        model.train(was_training)
    return failed


class FeatureDataset(Dataset):
    """Cached features as ``VideoClipDataset``-style items for the unchanged loops.

    Items: ``clip`` (T, D) in train mode (epoch e reads cache e mod K, its first view) or (V, T, D)
    in eval mode, ``label``, ``index`` (position in the original dataset) and an empty ``failed``.
    Videos without an entry in every cache (they failed to decode) are left out.
    ``CNNLSTM.forward`` takes such (B, T, D) features and runs only its head; training replaces them
    by the head's inputs first (``map_views(CNNLSTM.head_inputs)``).

    Args:
        dataset: the dataset the caches were filled from (its ``paths`` and ``labels``).
        caches: one cache, or one per augmented view.
        train: train-mode items.
        reversal: train only: a ``data.reversal.TimeReversal`` applied to the cached features
            (frames are independent in the backbone, so this equals reversing the frames; for head
            inputs it plays them backwards with ``CNNLSTM.reverse_inputs``).
        mirror: train only: a ``data.mirror.Mirror`` whose flip is ``CNNLSTM.mirror_features``
            (head inputs: ``CNNLSTM.mirror_inputs``).
    """

    def __init__(self, dataset, caches: FeatureCache | Sequence[FeatureCache], *, train: bool, reversal=None,
                 mirror=None):
        self.train = train
        self.reversal = reversal if train else None
        self.mirror = mirror if train else None
        caches = [caches] if isinstance(caches, FeatureCache) else list(caches)
        self.items: list[tuple[list[torch.Tensor], int, int]] = []
        for i, path in enumerate(dataset.paths):
            feats = [c.get(path) for c in caches]
            if all(f is not None for f in feats):
                self.items.append((feats, dataset.labels[i], i))
        if not self.items:
            raise ValueError("no video of the dataset has cached features")
        self.labels = [label for _, label, _ in self.items]
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.items)

    def map_views(self, fn) -> None:
        """Replace every cached view by ``fn`` of it (``fn``: (V, T, D) -> (V, T, H), one video's
        views at a time), e.g. ``CNNLSTM.head_inputs``: the parameter-free part of the head computed
        once instead of every epoch."""
        for feats, _, _ in self.items:
            sizes = [f.shape[0] for f in feats]
            feats[:] = fn(torch.cat(feats)).split(sizes)

    def set_epoch(self, epoch: int) -> None:
        """Epoch e reads view e mod K (the loaders of cached features run in this process)."""
        self.epoch = epoch

    def __getitem__(self, index: int) -> dict:
        views, label, orig = self.items[index]
        feats = views[self.epoch % len(views)]
        clip = feats[0] if self.train else feats
        if self.reversal is not None:
            clip, label = self.reversal(clip, label, self.epoch, orig)
        if self.mirror is not None:
            clip, label = self.mirror(clip, label, self.epoch, orig)
        return {"clip": clip, "label": label, "index": orig, "failed": []}

