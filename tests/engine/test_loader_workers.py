"""Loader workers persist across epochs and still see each epoch's random draws.

(A loader test, kept under tests/engine/ so it does not touch tests/data/, which holds the decoder tests.)
"""

from __future__ import annotations

import os

import pytest
import torch

from actionrec.data.dataset import ClipSampling, VideoClipDataset
from actionrec.data.loader import build_loader, set_epoch
from actionrec.data.splits import load_split
from actionrec.data.transforms import train_transform


class PidClips(VideoClipDataset):
    """Items also say which process decoded them."""

    def __getitem__(self, index: int) -> dict:
        return {**super().__getitem__(index), "pid": os.getpid()}


def _collate(items: list[dict]) -> dict:
    return {"clip": torch.stack([it["clip"] for it in items]), "index": [it["index"] for it in items],
            "pid": {it["pid"] for it in items}}


@pytest.fixture(scope="module")
def dataset(tiny_dataset):
    samples = load_split(tiny_dataset).train[:4]
    tf = train_transform(resize_short=40, crop_size=32, mean=(0.5,) * 3, std=(0.25,) * 3, hflip=False)
    return PidClips(samples, sampling=ClipSampling(clip_len=4), transforms=[tf], train=True, seed=0)


def _epochs(loader, n: int) -> list[dict]:
    out = []
    for epoch in range(n):
        set_epoch(loader, epoch)
        batches = list(loader)
        out.append({"index": [i for b in batches for i in b["index"]], "clip": torch.cat([b["clip"] for b in batches]),
                    "pid": set().union(*(b["pid"] for b in batches))})
    return out


def test_workers_persist_across_epochs_and_see_set_epoch(dataset):
    kw = dict(batch_size=2, train=True, seed=0)
    main = build_loader(dataset, num_workers=0, **kw)
    workers = build_loader(dataset, num_workers=1, **kw)
    workers.collate_fn = main.collate_fn = _collate
    assert workers.persistent_workers and not main.persistent_workers
    ref, got = _epochs(main, 3), _epochs(workers, 3)
    assert got[0]["pid"] == got[1]["pid"] == got[2]["pid"] != {os.getpid()}  # one worker, started once
    for r, g in zip(ref, got):
        assert r["index"] == g["index"]
        # The same clips as decoding in this process: set_epoch reached the running worker.
        torch.testing.assert_close(g["clip"], r["clip"], rtol=0, atol=0)
    assert not torch.equal(got[0]["clip"], got[1]["clip"])  # and each epoch draws anew
