"""Manifest row -> clip: shapes, determinism, short videos, corrupt files, DDP-aware loaders."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from actionrec.data.dataset import ClipSampling, DecodeFailures, TooManyBadVideos, VideoClipDataset, collate_clips
from actionrec.data.loader import ShardSampler, build_loader, set_epoch
from actionrec.data.splits import VideoSample, load_split
from actionrec.data.transforms import eval_transform, train_transform
from actionrec.data.video_io import VideoReader

KW = dict(resize_short=40, crop_size=32, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))


@pytest.fixture(scope="module")
def split(tiny_dataset):
    return load_split(tiny_dataset)


def make_ds(samples, train=True, num_clips=1, clip_len=8, **kw):
    tfs = [train_transform(**KW, hflip=False)] if train else [eval_transform(**KW)]
    return VideoClipDataset(samples, sampling=ClipSampling(clip_len=clip_len, num_clips=num_clips), transforms=tfs, train=train, **kw)


def test_train_item_shape_label_and_determinism(split):
    ds = make_ds(split.train, seed=3)
    a, b = ds[5], ds[5]
    assert a["clip"].shape == (8, 3, 32, 32) and a["clip"].dtype == torch.float32
    assert a["label"] == split.train[5].label and a["index"] == 5 and a["failed"] == []
    torch.testing.assert_close(a["clip"], b["clip"], rtol=0, atol=0)  # same (seed, epoch, index)
    ds.set_epoch(1)
    assert not torch.equal(ds[5]["clip"], a["clip"])  # new epoch, new draw


def test_eval_item_has_all_views_and_is_deterministic(split):
    ds = make_ds(split.test, train=False, num_clips=3)
    a = ds[0]["clip"]
    assert a.shape == (3, 8, 3, 32, 32)
    ds.set_epoch(4)
    torch.testing.assert_close(ds[0]["clip"], a, rtol=0, atol=0)


def test_video_shorter_than_clip_gives_full_clip(split):
    short = [s for s in split.train + split.test if len(VideoReader(s.path)) < 8]
    assert short, "the tiny dataset should contain a video shorter than 8 frames"
    ds = make_ds(short, train=False, clip_len=8)
    item = ds[0]
    assert item["clip"].shape == (1, 8, 3, 32, 32)
    n = len(VideoReader(short[0].path))
    # looped: frame t equals frame t + n
    torch.testing.assert_close(item["clip"][0, 0], item["clip"][0, n])


def test_clip_frames_are_the_decoded_frames(split, monkeypatch):
    """With an identity-like eval transform the clip equals the reader's frames at the sampled indices."""
    from actionrec.data.sampling import eval_clip_indices
    from actionrec.data.video_io import read_all_frames

    s = split.test[0]
    frames = read_all_frames(s.path)
    h, w = frames.shape[1:3]
    tf = eval_transform(resize_short=min(h, w), crop_size=min(h, w), mean=(0, 0, 0), std=(1, 1, 1))
    ds = VideoClipDataset([s], sampling=ClipSampling(clip_len=4), transforms=[tf], train=False)
    idx = eval_clip_indices(len(frames), 4, 1)[0]
    expected = frames[idx]
    x0 = (w - min(h, w)) // 2
    expected = expected[:, :, x0 : x0 + min(h, w)]
    got = (ds[0]["clip"][0].permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)
    np.testing.assert_array_equal(got, expected)


def test_corrupt_video_substituted_in_train_and_reported_in_eval(split, tmp_path):
    bad = tmp_path / "Broken" / "v_Broken_g01_c01.avi"
    bad.parent.mkdir()
    bad.write_bytes(b"not a video at all" * 100)
    samples = [VideoSample(bad, 0), *split.train[:3]]
    ds = make_ds(samples)
    item = ds[0]
    assert item["clip"].shape == (8, 3, 32, 32) and item["index"] != 0
    assert item["failed"][0][0] == str(bad) and item["failed"][0][1]
    ev = make_ds(samples, train=False)
    batch = collate_clips([ev[0], ev[1]])
    assert batch["clip"].shape[0] == 1 and batch["index"].tolist() == [1]
    assert batch["failed"][0][0] == str(bad)


def test_decode_failures_logged_once_and_capped(caplog):
    f = DecodeFailures(dataset_size=10, max_fraction=0.2)
    assert f.add([("a.avi", "broken"), ("a.avi", "broken")]) == 1
    f.add([("b.avi", "truncated")])
    f.check()  # 2 of 10 is within 20 %
    f.add([("c.avi", "empty")])
    with pytest.raises(TooManyBadVideos, match=r"(?s)3 of 10 videos failed.*a\.avi: broken"):
        f.check()
    assert sum("a.avi" in r.message for r in caplog.records) == 1


def test_shard_sampler_visits_every_index_once():
    for world in (1, 2, 3):
        seen = sorted(i for r in range(world) for i in ShardSampler(7, r, world))
        assert seen == list(range(7))


def test_train_loader_shuffles_per_epoch_and_workers_do_not_change_data(split):
    ds = make_ds(split.train[:8], seed=0)
    l0 = build_loader(ds, batch_size=4, train=True, num_workers=0, seed=1)
    l2 = build_loader(ds, batch_size=4, train=True, num_workers=2, seed=1)
    set_epoch(l0, 0), set_epoch(l2, 0)
    b0, b2 = list(l0), list(l2)
    for x, y in zip(b0, b2):
        assert torch.equal(x["index"], y["index"])
        torch.testing.assert_close(x["clip"], y["clip"], rtol=0, atol=0)
    set_epoch(l0, 1)
    assert [b["index"].tolist() for b in l0] != [b["index"].tolist() for b in b0]


def test_self_check_runs_once_per_file_across_workers_and_clips_equal_pyav(tmp_path):
    """decord shifts this MPEG-2 TS by 12 frames; the dataset's clips must still be PyAV's frames."""
    from actionrec.data.sampling import eval_clip_indices
    from actionrec.data.video_io import read_all_frames
    from tests.data.test_video_corpus import _build, _source_frames

    ts = _build("mpeg2_ts.ts", tmp_path, _source_frames())
    frames = read_all_frames(ts)  # PyAV's sequential decode: (96, 96, 128, 3)
    tf = eval_transform(resize_short=96, crop_size=96, mean=(0, 0, 0), std=(1, 1, 1))
    ds = VideoClipDataset([VideoSample(ts, 0)] * 4, sampling=ClipSampling(clip_len=6), transforms=[tf],
                          train=False, backend="decord", seek="never")
    expected = frames[eval_clip_indices(len(frames), 6, 1)[0]][:, :, 16:112]
    loader = build_loader(ds, batch_size=1, train=False, num_workers=2)
    for batch in loader:
        got = (batch["clip"][0, 0].permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)
        np.testing.assert_array_equal(got, expected)
    # Shared with the workers: each sample was checked and marked "read with PyAV" (2).
    assert ds.decoder_checked.tolist() == [2, 2, 2, 2]
    item = ds[0]  # the main process now skips the check and reads with PyAV at once
    got = (item["clip"][0].permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)
    np.testing.assert_array_equal(got, expected)
