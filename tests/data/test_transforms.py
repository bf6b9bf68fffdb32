import numpy as np
import pytest
import torch

from actionrec.data.transforms import FrameOcclusion, eval_transform, train_transform

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


def marker_clip(t=8, h=120, w=160, y=30, x=110):
    """Dark noisy frames, each a different brightness, with one white 3x3 marker at the same spot."""
    rng = np.random.default_rng(0)
    clip = rng.integers(0, 60, size=(t, h, w, 3), dtype=np.uint8)
    clip += np.arange(t, dtype=np.uint8)[:, None, None, None] * 5
    clip[:, y - 1 : y + 2, x - 1 : x + 2] = 255
    return clip


def marker_position(frame: torch.Tensor) -> tuple[int, int]:
    lum = frame.mean(0)
    return tuple(int(v) for v in np.unravel_index(int(lum.argmax()), lum.shape))


def test_train_transform_same_geometry_on_every_frame():
    tf = train_transform(resize_short=128, crop_size=96, crop_scale=(0.3, 1.0), hflip=True, color_jitter=0.4, mean=MEAN, std=STD)
    positions_seen = set()
    for seed in range(12):
        out = tf(marker_clip(), np.random.default_rng(seed))
        assert out.shape == (8, 3, 96, 96) and out.dtype == torch.float32
        if out.mean(1).amax(dim=(1, 2)).min() < 1.0:  # marker cropped away in this draw
            continue
        pos = {marker_position(f) for f in out}
        assert len(pos) == 1, f"frames disagree on the marker position: {pos}"
        positions_seen |= pos
    assert len(positions_seen) >= 3  # the crop really is random across clips


def test_hflip_switch():
    clip = marker_clip(x=140)  # marker near the right edge
    flipped_any = False
    tf_off = train_transform(resize_short=120, crop_size=120, crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), hflip=False, color_jitter=0, mean=MEAN, std=STD)
    tf_on = train_transform(resize_short=120, crop_size=120, crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), hflip=True, color_jitter=0, mean=MEAN, std=STD)
    for seed in range(10):
        assert marker_position(tf_off(clip, np.random.default_rng(seed))[0])[1] > 60
        pos_on = {marker_position(f)[1] for f in tf_on(clip, np.random.default_rng(seed))}
        assert len(pos_on) == 1
        flipped_any |= pos_on.pop() < 60
    assert flipped_any


def test_same_generator_state_same_clip():
    tf = train_transform(resize_short=128, crop_size=96, mean=MEAN, std=STD, occlusion=FrameOcclusion(prob=0.5, patch_prob=0.5))
    a = tf(marker_clip(), np.random.default_rng(7))
    b = tf(marker_clip(), np.random.default_rng(7))
    c = tf(marker_clip(), np.random.default_rng(8))
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not torch.equal(a, c)


def test_eval_transform_is_deterministic_resize_and_center_crop():
    tf = eval_transform(resize_short=60, crop_size=48, mean=(0, 0, 0), std=(1, 1, 1))
    clip = marker_clip(y=60, x=80)  # centre of a 160x120 frame
    a, b = tf(clip), tf(clip)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert a.shape == (8, 3, 48, 48)
    y, x = marker_position(a[0])
    assert abs(y - 24) <= 1 and abs(x - 24) <= 1  # centre stays at the centre
    # normalisation with mean 0, std 1 is x / 255
    assert float(a.max()) == pytest.approx(1.0, abs=1e-6)


def test_three_crop_covers_left_centre_right():
    clip = marker_clip(y=60, x=5)
    outs = {c: eval_transform(resize_short=120, crop_size=120, mean=MEAN, std=STD, crop=c)(clip) for c in ("left", "center", "right")}
    assert abs(marker_position(outs["left"][0])[1] - 5) <= 1  # left crop starts at x=0
    peak = {c: float(o[0].mean(0).max()) for c, o in outs.items()}
    assert peak["center"] < peak["left"] and peak["right"] < peak["left"]  # marker outside both other crops


def test_occlusion_rate_matches_probability():
    occ = FrameOcclusion(prob=0.3, max_frac=0.25, mode="blank")
    rng = np.random.default_rng(0)
    hits, frames = 0, []
    for _ in range(2000):
        clip = np.ones((16, 4, 4, 3), np.float32)
        _, mask = occ(clip, rng)
        if mask.any():
            hits += 1
            frames.append(mask.sum())
            assert np.all(clip[mask] == 0) and np.all(clip[~mask] == 1)
    assert hits / 2000 == pytest.approx(0.3, abs=0.03)
    assert min(frames) == 1 and max(frames) == 4  # 1 .. max_frac * T


def test_neighbour_occlusion_repeats_previous_frame():
    occ = FrameOcclusion(prob=1.0, max_frac=0.5, mode="neighbour")
    clip = np.arange(8, dtype=np.float32)[:, None, None, None] * np.ones((8, 2, 2, 3), np.float32) + 1
    out, mask = occ(clip.copy(), np.random.default_rng(3))
    for i in np.flatnonzero(mask):
        expected = out[i - 1] if i > 0 else 0
        assert np.all(out[i] == expected)


def test_patch_erasing_hits_requested_share_of_frames():
    occ = FrameOcclusion(prob=0.0, patch_prob=1.0, patch_frame_frac=0.5, patch_max_area=0.2)
    clip = np.ones((10, 32, 32, 3), np.float32)
    out, mask = occ(clip, np.random.default_rng(1))
    erased = [(out[i] == 0).all(-1).mean() for i in range(10)]
    assert sum(e > 0 for e in erased) == 5
    assert max(erased) <= 0.2 + 1e-6 and not mask.any()
