"""transcode_video output format and the data_prep/transcode.py dataset run, verified by check_videos."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pytest

from actionrec.data.check import check_video
from actionrec.data.splits import load_split
from actionrec.data.synthetic import generate_synthetic_dataset
from actionrec.data.transcode import output_size, transcode_video
from actionrec.data.video_io import read_all_frames

REPO = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("broken_videos", Path(__file__).with_name("broken_videos.py"))
broken = importlib.util.module_from_spec(spec)
spec.loader.exec_module(broken)


def _packets(path: Path) -> tuple[str, list[bool]]:
    """Codec name and key-frame flags in presentation order."""
    with av.open(str(path)) as c:
        stream = c.streams.video[0]
        pkts = sorted((p.pts, p.is_keyframe) for p in c.demux(stream) if p.size)
        return stream.codec_context.name, [k for _, k in pkts]


@pytest.mark.parametrize(
    "size, short, expected",
    [((320, 240), 256, (342, 256)), ((240, 320), 256, (256, 342)), ((16, 12), 256, (342, 256)),
     ((640, 32), 64, (1280, 64)), ((65, 49), 0, (64, 48)), ((66, 50), 0, (66, 50))],
)
def test_output_size_scales_short_side_to_even(size, short, expected):
    assert output_size(*size, short) == expected


def test_transcode_video_keyframes_size_and_frames(frame_index_video, frame_index_of, tmp_path):
    out = tmp_path / "a" / "index.mp4"
    res = transcode_video(frame_index_video, out, short_side=64, gop=8)
    assert (res.status, res.frames_in, res.frames_out, res.width, res.height) == ("ok", 48, 48, 64, 64)
    codec, keys = _packets(out)
    assert codec == "h264"
    assert [i for i, k in enumerate(keys) if k] == list(range(0, 48, 8))  # exactly every gop frames
    frames = read_all_frames(out)
    assert frames.shape == (48, 64, 64, 3)
    assert [frame_index_of(f) for f in frames] == list(range(48))  # same frames, same order
    assert not list(tmp_path.rglob(".*partial*"))  # temp file renamed away
    # Frame-exact random access is what the format is for.
    assert check_video(out, clip_len=16).status == "ok"
    # A rerun leaves finished files alone.
    assert transcode_video(frame_index_video, out).status == "skipped"


def test_transcode_video_resamples_fps(frame_index_video, frame_index_of, tmp_path):
    out = tmp_path / "slow.mp4"
    res = transcode_video(frame_index_video, out, short_side=64, fps=10)  # 48 frames at 25 fps: 1.92 s
    assert (res.status, res.frames_out, res.fps) == ("ok", 20, 10.0)
    with av.open(str(out)) as c:
        assert c.streams.video[0].average_rate == 10
    # Output frame k at k/10 s shows the source frame covering that time: floor(k * 2.5).
    assert [frame_index_of(f) for f in read_all_frames(out)] == [int(k * 2.5) for k in range(20)]


def test_transcode_video_broken_sources(tmp_path):
    expected = broken.write_corpus(tmp_path / "in", ["text.mp4", "no_frames.mp4", "truncated_xvid.avi", "grayscale.mp4"])
    assert expected  # written
    res = {n: transcode_video(tmp_path / "in" / n, tmp_path / "out" / f"{n}.mp4", short_side=32)
           for n in ["text.mp4", "no_frames.mp4", "truncated_xvid.avi", "grayscale.mp4"]}
    assert res["text.mp4"].status == "failed" and "InvalidData" in res["text.mp4"].reason
    assert res["no_frames.mp4"].status == "failed"
    assert not (tmp_path / "out" / "text.mp4.mp4").exists() and not list((tmp_path / "out").glob(".*"))
    # A truncated source keeps the frames it has: the output is complete and honest about its length.
    t = res["truncated_xvid.avi"]
    assert t.status == "partial" and "header says 40 frames" in t.reason and 0 < t.frames_out < 40
    assert check_video(tmp_path / "out" / "truncated_xvid.avi.mp4", clip_len=4).status == "ok"
    g = res["grayscale.mp4"]
    assert (g.status, g.frames_out, g.width, g.height) == ("ok", 40, 42, 32)


def test_transcode_script_keeps_layout_and_split_lists(tmp_path):
    src, dst = tmp_path / "src", tmp_path / "dst"
    generate_synthetic_dataset(src, num_groups=2, clips_per_group=1, width=64, height=48, max_frames=16, seed=1)
    broken.write_corpus(src / "Grow", ["text.mp4", "bframes.avi"])
    with open(src / "ucfTrainTestlist" / "trainlist01.txt", "a") as f:
        f.write("Grow/text.mp4 3\nGrow/bframes.avi 3\n")
    assert check_video(src / "Grow" / "bframes.avi", clip_len=4).status == "seek_unreliable"
    sources = sorted(p.relative_to(src) for p in src.rglob("*") if p.suffix in (".avi", ".mp4"))

    cmd = [sys.executable, str(REPO / "data_prep" / "transcode.py"), str(src), str(dst), "--short-side", "32",
           "--gop", "4", "--workers", "2", "--report", str(tmp_path / "report.json")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stderr  # text.mp4 failed
    assert "1 failed" in proc.stdout and "failed   Grow/text.mp4" in proc.stdout
    outputs = sorted(p.relative_to(dst) for p in dst.rglob("*.mp4"))
    assert outputs == sorted(p.with_suffix(".mp4") for p in sources if p.name != "text.mp4")
    report = {Path(r["src"]).name: r for r in json.loads((tmp_path / "report.json").read_text())}
    for rel in sources:
        if rel.name == "text.mp4":
            continue
        r = report[rel.name]
        assert r["status"] == "ok" and min(r["width"], r["height"]) == 32
        assert r["frames_out"] == len(read_all_frames(src / rel))

    # Split lists: same classes, same lines with .mp4, the undecodable entry left out.
    lists_src, lists_dst = src / "ucfTrainTestlist", dst / "ucfTrainTestlist"
    assert (lists_dst / "classInd.txt").read_text() == (lists_src / "classInd.txt").read_text()
    for name in ("trainlist01.txt", "testlist01.txt"):
        want = [line.replace(".avi", ".mp4") for line in (lists_src / name).read_text().splitlines()
                if not line.startswith("Grow/text.mp4")]
        assert (lists_dst / name).read_text().splitlines() == want
    a, b = load_split(src), load_split(dst)
    assert a.classes == b.classes
    assert [(s.path.with_suffix("").relative_to(src), s.label) for s in a.train if s.path.name != "text.mp4"] == \
           [(s.path.with_suffix("").relative_to(dst), s.label) for s in b.train]

    # Verified by check_videos: every output decodes fully and seeks exactly.
    check = subprocess.run([sys.executable, str(REPO / "data_prep" / "check_videos.py"), str(dst), "--clip-len", "4",
                            "--workers", "2", "--report", str(tmp_path / "check.json")],
                           capture_output=True, text=True, timeout=300)
    assert check.returncode == 0, check.stdout
    statuses = {v["path"]: v["status"] for v in json.loads((tmp_path / "check.json").read_text())["videos"]}
    assert statuses["Grow/bframes.mp4"] == "ok"
    assert set(statuses.values()) <= {"ok", "too_short"}
    codec, keys = _packets(dst / "Grow" / "bframes.mp4")
    assert codec == "h264" and [i for i, k in enumerate(keys) if k] == list(range(0, 90, 4))

    # Restartable: a second run skips what exists.
    again = subprocess.run(cmd[:-2] + ["--workers", "0"], capture_output=True, text=True, timeout=300)
    assert f"{len(sources) - 1} skipped" in again.stdout


def test_transcode_script_rejects_dst_inside_src(tmp_path):
    (tmp_path / "A").mkdir()
    proc = subprocess.run([sys.executable, str(REPO / "data_prep" / "transcode.py"), str(tmp_path), str(tmp_path / "out")],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.startswith("error: DST") and "Traceback" not in proc.stderr


def test_frames_helper_differs_between_frames():
    clip = broken.frames(3, 16, 12)
    assert clip.shape == (3, 12, 16, 3) and clip.dtype == np.uint8
    assert np.abs(clip[0].astype(int) - clip[1]).mean() > 5
