"""Tests for the synthetic dataset generator (real encoded videos, UCF layout)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from actionrec.data import synthetic
from actionrec.data.splits import load_split, parse_ucf_group
from actionrec.data.synthetic import (
    SYNTHETIC_CLASSES,
    ensure_synthetic_dataset,
    generate_synthetic_dataset,
    render_synthetic_video,
)

REPO = Path(__file__).resolve().parents[2]
TINY = dict(num_groups=4, clips_per_group=2, width=64, height=48, max_frames=16)


def decode(path: Path) -> np.ndarray:
    """All frames of a video, (T, H, W, 3) uint8 BGR."""
    cap = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        frames.append(frame)
    cap.release()
    return np.stack(frames)


def videos(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("v_*") if p.suffix in (".avi", ".mp4"))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_synthetic_dataset(tmp_path_factory.mktemp("syn") / "data", **TINY)


def test_classes_are_three_temporal_pairs_and_two_appearance_classes():
    assert SYNTHETIC_CLASSES == (
        "MoveLeft", "MoveRight", "Grow", "Shrink", "RotateCW", "RotateCCW", "BlinkingStripes", "Checkerboard",
    )


def test_layout_file_names_and_counts(tiny: Path):
    files = videos(tiny)
    assert len(files) == len(SYNTHETIC_CLASSES) * 4 * 2
    for path in files:
        assert re.fullmatch(rf"v_{path.parent.name}_g0[1-4]_c0[12]\.(avi|mp4)", path.name), path
    # 25% of the 8 (group, clip) slots are .mp4, the same slots for every class.
    mp4 = [p for p in files if p.suffix == ".mp4"]
    assert len(mp4) == len(SYNTHETIC_CLASSES) * 2
    slots = {p.stem.split("_", 2)[2] for p in mp4}
    for name in SYNTHETIC_CLASSES:
        assert {p.stem.split("_", 2)[2] for p in mp4 if p.parent.name == name} == slots


def test_videos_decode_with_expected_size_and_length(tiny: Path):
    lengths = []
    for path in videos(tiny):
        cap = cv2.VideoCapture(str(path))
        assert cap.isOpened(), path
        reported = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
        cap.release()
        frames = decode(path)
        assert frames.shape[1:] == (48, 64, 3), path
        assert len(frames) == reported, path
        assert 6 <= len(frames) <= 16, path
        lengths.append(len(frames))
    assert min(lengths) < 8, "a video shorter than a typical 8-frame clip must exist"
    assert max(lengths) >= 8


def test_decoded_video_matches_rendering(tiny: Path):
    path = next((tiny / "RotateCW").glob("v_RotateCW_g02_c01.*"))
    decoded = decode(path).astype(np.float32)
    rendered = render_synthetic_video("RotateCW", 2, 1, len(decoded), width=64, height=48).astype(np.float32)
    # Lossy codec: close on average, not exact.
    assert np.abs(decoded - rendered).mean() < 8.0


def test_split_files_have_ucf_format_and_group_disjoint(tiny: Path):
    split_dir = tiny / "ucfTrainTestlist"
    class_lines = (split_dir / "classInd.txt").read_text().splitlines()
    assert class_lines == [f"{i} {name}" for i, name in enumerate(SYNTHETIC_CLASSES, start=1)]
    train_lines = (split_dir / "trainlist01.txt").read_text().splitlines()
    test_lines = (split_dir / "testlist01.txt").read_text().splitlines()
    assert len(train_lines) + len(test_lines) == len(videos(tiny))
    for line in train_lines:
        m = re.fullmatch(r"(\w+)/v_\1_g\d\d_c\d\d\.(avi|mp4) (\d+)", line)
        assert m, line
        assert SYNTHETIC_CLASSES[int(m.group(3)) - 1] == m.group(1)
        assert (tiny / line.split(" ")[0]).is_file()
    for line in test_lines:
        assert re.fullmatch(r"(\w+)/v_\1_g\d\d_c\d\d\.(avi|mp4)", line), line
        assert (tiny / line).is_file()
    train_groups = {parse_ucf_group(line.split(" ")[0]) for line in train_lines}
    test_groups = {parse_ucf_group(line) for line in test_lines}
    assert test_groups == {"g01"}  # round(0.3 * 4) = 1, the first group as in UCF
    assert train_groups == {"g02", "g03", "g04"}


def test_split_files_load_with_splits_module(tiny: Path):
    split = load_split(tiny)
    assert split.classes == SYNTHETIC_CLASSES
    assert len(split.train) == 48 and len(split.test) == 16
    for sample in split.train + split.test:
        assert sample.path.parent.name == SYNTHETIC_CLASSES[sample.label]


def test_temporal_twin_is_exactly_reversed_before_encoding():
    for forward, backward in synthetic.TEMPORAL_PAIRS:
        a = render_synthetic_video(forward, 3, 2, 12, width=64, height=48)
        b = render_synthetic_video(backward, 3, 2, 12, width=64, height=48)
        np.testing.assert_array_equal(b, a[::-1])
        # Same frames, different order: a temporal model has something to learn.
        assert not np.array_equal(a, b)


def test_temporal_twin_decoded_frames_are_reversed(tiny: Path):
    for forward, backward in synthetic.TEMPORAL_PAIRS:
        fwd = decode(next((tiny / forward).glob(f"v_{forward}_g03_c02.*"))).astype(np.float32)
        bwd = decode(next((tiny / backward).glob(f"v_{backward}_g03_c02.*"))).astype(np.float32)
        assert fwd.shape == bwd.shape
        # Equal up to codec noise once reversed, and clearly different in original order: in
        # original order the moving figure is elsewhere, so some pixels differ by far more than
        # codec noise (share of pixels with a channel off by > 60 grey levels).
        reversed_err = np.abs(fwd - bwd[::-1])
        assert reversed_err.mean() < 4.0
        assert (reversed_err.max(-1) > 60).mean() < 0.001
        assert (np.abs(fwd - bwd).max(-1) > 60).mean() > 0.02
        # So the per-video mean frame (what frame averaging sees) matches too.
        assert np.abs(fwd.mean(0) - bwd.mean(0)).mean() < 2.0


def test_move_covers_a_large_part_of_the_width():
    video = render_synthetic_video("MoveRight", 2, 1, 20, width=160, height=120).astype(np.float32)
    # The object is at different places in the first and last frame: the union of
    # changed columns spans at least ~40% of the width.
    changed = np.abs(video[-1] - video[0]).max(axis=(0, 2)) > 60
    cols = np.flatnonzero(changed)
    assert cols.max() - cols.min() >= 0.4 * 160


def test_appearance_classes_differ_from_temporal_classes_per_frame():
    def strong_edges(video: np.ndarray) -> float:
        v = video.astype(np.float32)  # (T, H, W, C)
        dx = np.abs(np.diff(v, axis=2)).max(-1)[:, :-1, :]
        dy = np.abs(np.diff(v, axis=1)).max(-1)[:, :, :-1]
        # Threshold far above pixel noise: only object and texture edges count.
        return float((np.maximum(dx, dy) > 80).mean())

    # Stripes and checkerboards add many sharp edges; single frames show it.
    for g in (1, 2, 3):
        textured = min(strong_edges(render_synthetic_video(c, g, 1, 10)) for c in ("BlinkingStripes", "Checkerboard"))
        plain = max(strong_edges(render_synthetic_video(c, g, 1, 10)) for c in ("MoveLeft", "Grow", "RotateCW"))
        assert textured > plain


def test_same_seed_gives_identical_frames_and_other_seed_differs(tmp_path: Path, tiny: Path):
    again = generate_synthetic_dataset(tmp_path / "again", **TINY)
    other = generate_synthetic_dataset(tmp_path / "other", **TINY, seed=1)
    rel = [p.relative_to(tiny) for p in videos(tiny)]
    assert [p.relative_to(again) for p in videos(again)] == rel
    for r in rel:
        np.testing.assert_array_equal(decode(tiny / r), decode(again / r))
    different = 0
    for r in rel:
        match = list((other / r.parent).glob(r.stem + ".*"))
        a, b = decode(tiny / r), decode(match[0])
        different += a.shape != b.shape or not np.array_equal(a, b)
    assert different == len(rel)


def test_render_is_independent_of_generation_order():
    a = render_synthetic_video("Grow", 2, 2, 9, width=64, height=48, seed=5)
    render_synthetic_video("Checkerboard", 1, 1, 9, width=64, height=48, seed=5)
    b = render_synthetic_video("Grow", 2, 2, 9, width=64, height=48, seed=5)
    np.testing.assert_array_equal(a, b)


def test_generate_refuses_non_empty_dir_and_bad_params(tmp_path: Path):
    (tmp_path / "x.txt").write_text("mine")
    with pytest.raises(FileExistsError):
        generate_synthetic_dataset(tmp_path, **TINY)
    with pytest.raises(ValueError, match="width"):
        generate_synthetic_dataset(tmp_path / "odd", **{**TINY, "width": 63})
    with pytest.raises(ValueError, match="max_frames"):
        generate_synthetic_dataset(tmp_path / "len", **{**TINY, "min_frames": 20})


def test_missing_codec_raises_runtime_error_naming_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    class ClosedWriter:
        def __init__(self, *args, **kwargs):
            pass

        def isOpened(self) -> bool:
            return False

    monkeypatch.setattr(synthetic.cv2, "VideoWriter", ClosedWriter)
    with pytest.raises(RuntimeError, match=r"v_MoveRight_g01_c01\.(avi|mp4)"):
        generate_synthetic_dataset(tmp_path / "d", **TINY)


def test_ensure_skips_complete_and_regenerates_on_change(tmp_path: Path):
    root = tmp_path / "cache"
    ensure_synthetic_dataset(root, **TINY)
    marker = root / ".complete"
    assert json.loads(marker.read_text())["num_groups"] == 4
    stamp = marker.stat().st_mtime_ns
    probe = videos(root)[0]
    probe.write_bytes(b"tampered")  # a skipped call must not touch files
    ensure_synthetic_dataset(root, **TINY)
    assert marker.stat().st_mtime_ns == stamp and probe.read_bytes() == b"tampered"

    ensure_synthetic_dataset(root, **{**TINY, "num_groups": 3})
    assert json.loads(marker.read_text())["num_groups"] == 3
    assert not any(parse_ucf_group(p.name) == "g04" for p in videos(root))
    assert len(videos(root)) == len(SYNTHETIC_CLASSES) * 3 * 2
    # No temporary or stale siblings left behind.
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == ["cache"]


def test_ensure_replaces_partial_dir_but_not_foreign_one(tmp_path: Path):
    partial = tmp_path / "partial"
    (partial / "MoveLeft").mkdir(parents=True)
    (partial / "MoveLeft" / "v_MoveLeft_g01_c01.avi").write_bytes(b"")
    ensure_synthetic_dataset(partial, **TINY)
    assert (partial / ".complete").is_file() and len(videos(partial)) == 64

    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError):
        ensure_synthetic_dataset(foreign, **TINY)
    assert (foreign / "notes.txt").read_text() == "keep me"


def test_make_synthetic_cli(tmp_path: Path):
    out = tmp_path / "cli"
    cmd = [sys.executable, str(REPO / "data_prep" / "make_synthetic.py"), str(out), "--groups", "3",
           "--clips-per-group", "1", "--width", "32", "--height", "32", "--max-frames", "10", "--no-progress"]
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "24 (16 train, 8 test)" in result.stdout
    assert len(videos(out)) == 24


def test_make_synthetic_help_gives_each_styles_own_default(capsys: pytest.CaptureFixture):
    """--min-frames/--max-frames default to 6-64 synthetic and 40-80 real: the help says both, and
    nothing extra for the options whose defaults agree."""
    from actionrec.data.real_footage import real_default_params
    from actionrec.prep.make_synthetic import parse_args

    assert (real_default_params()["min_frames"], real_default_params()["max_frames"]) == (40, 80)
    with pytest.raises(SystemExit):
        parse_args(["--help"])
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps at the terminal width
    assert "shortest video (default: 6) (--style real: 40)" in text
    assert "longest video (default: 64) (--style real: 80)" in text
    assert "frame width, even (default: 160) (both styles)" in text
    assert "random seed (default: 0) (both styles)" in text
    assert "40-80 frames" not in text
