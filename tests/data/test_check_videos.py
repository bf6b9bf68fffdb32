"""check_video statuses on a corpus of broken files, the check_videos.py script, the hang-proof pool."""

from __future__ import annotations

import csv
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from actionrec.data.check import BAD_STATUSES, VideoCheck, check_video, find_videos, quarantine
from actionrec.data.parallel import map_unordered
from actionrec.data.splits import load_split
from actionrec.data.synthetic import generate_synthetic_dataset
from tests.helpers import load_module

REPO = Path(__file__).resolve().parents[2]


broken = load_module("broken_videos", Path(__file__).with_name("broken_videos.py"))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    folder = tmp_path_factory.mktemp("corpus")
    return folder, broken.write_corpus(folder)


def test_check_video_classifies_every_broken_file(corpus):
    folder, expected = corpus
    got = {name: check_video(folder / name, clip_len=4) for name in expected}
    assert {n: r.status for n, r in got.items()} == expected

    # The counts behind the statuses.
    assert got["truncated_faststart.mp4"].declared_frames == 40
    assert 0 < got["truncated_faststart.mp4"].decoded_frames < 40
    assert got["truncated_xvid.avi"].declared_frames == 40
    assert 0 < got["truncated_xvid.avi"].decoded_frames < 40
    assert "only" in got["truncated_xvid.avi"].reason
    assert (got["no_frames.mp4"].declared_frames, got["no_frames.mp4"].decoded_frames) == (10, 0)
    assert got["empty.avi"].reason == "empty file (0 bytes)"
    assert "random access returns other frames" in got["bframes.avi"].reason
    assert (got["wide_640x32.avi"].width, got["wide_640x32.avi"].height) == (640, 32)
    assert (got["tiny_16x12.mp4"].width, got["tiny_16x12.mp4"].height) == (16, 12)
    assert got["one_frame.avi"].decoded_frames == 1
    assert all(r.bad == (r.status in BAD_STATUSES) for r in got.values())


def test_too_short_depends_on_clip_span(corpus):
    folder, _ = corpus
    path = folder / "tiny_16x12.mp4"  # 20 frames
    assert check_video(path, clip_len=20).status == "ok"
    assert check_video(path, clip_len=21).status == "too_short"
    assert check_video(path, clip_len=8, frame_interval=3).status == "too_short"  # spans 22 frames


def test_pyav_backend_reads_what_decord_cannot(corpus):
    folder, _ = corpus
    # Truncated with the index at the front: decord refuses the file, PyAV decodes the first frames.
    res = check_video(folder / "truncated_faststart.mp4", clip_len=4, backend="pyav")
    assert res.status == "truncated"
    # No random-access check without decord.
    assert check_video(folder / "bframes.avi", clip_len=4, backend="pyav").status == "ok"


def _make_dataset(root: Path, corpus_names: list[str]) -> dict[str, str]:
    generate_synthetic_dataset(root, num_groups=2, clips_per_group=1, width=64, height=48, max_frames=16, seed=0)
    expected = broken.write_corpus(root / "Grow", corpus_names)
    (root / "Grow" / "notes.txt").write_text("not a video")
    lists = root / "ucfTrainTestlist"
    with open(lists / "trainlist01.txt", "a") as f:
        f.writelines(f"Grow/{n} 3\n" for n in corpus_names[::2])
    with open(lists / "testlist01.txt", "a") as f:
        f.writelines(f"Grow/{n}\n" for n in corpus_names[1::2])
    return {f"Grow/{n}": s for n, s in expected.items()}


def test_check_videos_script_reports_and_quarantines(tmp_path):
    root, quarantine_dir, report = tmp_path / "ds", tmp_path / "quarantine", tmp_path / "out" / "report.json"
    names = ["empty.avi", "text.mp4", "truncated_faststart.mp4", "no_frames.mp4", "bframes.avi", "one_frame.avi"]
    expected = _make_dataset(root, names)
    train_before = (root / "ucfTrainTestlist" / "trainlist01.txt").read_text()
    proc = subprocess.run(
        [sys.executable, str(REPO / "data_prep" / "check_videos.py"), str(root), "--clip-len", "4",
         "--workers", "2", "--report", str(report), "--quarantine", str(quarantine_dir)],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 1, proc.stderr  # bad files were found
    doc = json.loads(report.read_text())
    status = {v["path"]: v["status"] for v in doc["videos"]}
    assert {p: status[p] for p in expected} == expected
    synthetic = [p for p in status if p not in expected]
    assert len(synthetic) == 16 and all(status[p] in ("ok", "too_short") for p in synthetic)
    assert "Grow/notes.txt" not in status
    assert doc["summary"]["unreadable"] == 2 and doc["summary"]["truncated"] == 1 and doc["summary"]["zero_frames"] == 1
    assert doc["settings"]["clip_len"] == 4
    with open(report.with_suffix(".csv")) as f:
        assert {r["path"]: r["status"] for r in csv.DictReader(f)} == status
    # The summary table: one line per status with its count, then every non-ok file.
    assert re.search(r"^unreadable +2$", proc.stdout, re.M) and re.search(r"^ok +\d+$", proc.stdout, re.M)
    assert re.search(r"^unreadable +Grow/empty.avi: empty file \(0 bytes\)$", proc.stdout, re.M)
    assert "1 non-video files ignored" in proc.stdout

    # Bad files moved (relative paths kept), warnings left in place, nothing deleted.
    bad = sorted(p for p, s in expected.items() if s in BAD_STATUSES)
    assert sorted(str(p.relative_to(quarantine_dir)) for p in quarantine_dir.rglob("*.*") if p.parent.name == "Grow") == bad
    assert not any((root / p).exists() for p in bad)
    assert (root / "Grow" / "bframes.avi").exists() and (root / "Grow" / "one_frame.avi").exists()
    # Split lists no longer name them; the originals are kept in the quarantine folder.
    assert (quarantine_dir / "ucfTrainTestlist" / "trainlist01.txt").read_text() == train_before
    split = load_split(root)
    listed = {s.path.relative_to(root.absolute()).as_posix() for s in split.train + split.test}
    assert not listed & set(bad)
    assert {"Grow/bframes.avi", "Grow/one_frame.avi"} <= listed
    assert len(listed) == 16 + len(names) - len(bad)

    # A second run finds nothing bad left.
    again = subprocess.run(
        [sys.executable, str(REPO / "data_prep" / "check_videos.py"), str(root), "--clip-len", "4",
         "--workers", "0", "--report", str(tmp_path / "again.json")], capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stdout + again.stderr


def test_check_videos_script_usage_errors(tmp_path):
    script = str(REPO / "data_prep" / "check_videos.py")
    missing = subprocess.run([sys.executable, script, str(tmp_path / "nope")], capture_output=True, text=True)
    assert missing.returncode == 2
    assert missing.stderr.strip() == f"error: dataset folder not found: {tmp_path / 'nope'}"
    (tmp_path / "Cls").mkdir()
    (tmp_path / "Cls" / "a.avi").write_bytes(b"")
    inside = subprocess.run([sys.executable, script, str(tmp_path), "--workers", "0", "--report",
                             str(tmp_path / "r.json"), "--quarantine", str(tmp_path / "q")],
                            capture_output=True, text=True)
    assert inside.returncode == 2 and "must be outside the dataset root" in inside.stderr
    assert "Traceback" not in inside.stderr
    assert (tmp_path / "Cls" / "a.avi").exists()


def test_quarantine_refuses_to_overwrite(tmp_path):
    root, dest = tmp_path / "ds", tmp_path / "q"
    (root / "A").mkdir(parents=True)
    (dest / "A").mkdir(parents=True)
    (root / "A" / "x.avi").write_bytes(b"new")
    (dest / "A" / "x.avi").write_bytes(b"old")
    with pytest.raises(ValueError, match="already exists"):
        quarantine(root, [VideoCheck("A/x.avi", "unreadable")], dest)
    assert (root / "A" / "x.avi").read_bytes() == b"new" and (dest / "A" / "x.avi").read_bytes() == b"old"


def test_find_videos_skips_split_folders_and_hidden_files(tmp_path):
    for rel in ["A/x.avi", "A/y.MP4", "A/.hidden.avi", "A/readme.txt", "ucfTrainTestlist/classInd.txt", ".cache/z.mp4"]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"")
    videos, others = find_videos(tmp_path)
    assert [str(v) for v in videos] == ["A/x.avi", "A/y.MP4"]
    assert [str(o) for o in others] == ["A/readme.txt"]


# --- the worker pool: a hung or crashing decoder costs one item, not the run

def _task(item: str):
    if item == "hang":
        time.sleep(60)
    if item == "crash":
        os.kill(os.getpid(), signal.SIGSEGV)
    if item == "raise":
        raise ValueError("bad input\nsecond line")
    return item.upper()


def test_map_unordered_survives_hang_crash_and_exceptions():
    items = ["a", "hang", "b", "crash", "raise", "c", "d"]
    t0 = time.monotonic()
    results = {r.item: r for r in map_unordered(_task, items, workers=2, timeout=3)}
    assert time.monotonic() - t0 < 30
    assert set(results) == set(items)
    assert {k: results[k].value for k in "abcd"} == {"a": "A", "b": "B", "c": "C", "d": "D"}
    assert all(results[k].error is None for k in "abcd")
    assert results["hang"].error == "timed out after 3 s" and results["hang"].seconds >= 3
    assert results["crash"].error == "worker killed by SIGSEGV"
    assert results["raise"].error == "ValueError: bad input"


def test_map_unordered_inline():
    results = list(map_unordered(_task, ["a", "raise"], workers=0))
    assert [(r.item, r.value, r.error) for r in results] == [("a", "A", None), ("raise", None, "ValueError: bad input")]


# --- files decord gets wrong but PyAV reads exactly, and FFmpeg's console messages

@pytest.fixture(scope="module")
def hard_files(tmp_path_factory) -> Path:
    from tests.data.test_video_corpus import _build, _source_frames

    root = tmp_path_factory.mktemp("hard")
    (root / "Cls").mkdir()
    frames = _source_frames()
    for kind in ("mpeg2_ts.ts", "xvid_packed.avi", "mpeg2_ps_midgop.mpg"):
        path = _build(kind, root / "Cls", frames)
        if path is None:
            pytest.skip("the packed XviD file needs Debian's ffmpeg (apt-get install ffmpeg)")
        path.rename(root / "Cls" / kind)
    return root


def test_files_pyav_reads_exactly_are_never_unreadable(hard_files):
    for kind in ("mpeg2_ts.ts", "xvid_packed.avi", "mpeg2_ps_midgop.mpg"):
        for backend in ("auto", "decord", "opencv", "pyav"):
            res = check_video(hard_files / "Cls" / kind, clip_len=4, backend=backend)
            assert res.status in ("ok", "seek_unreliable"), (kind, backend, res)
            if res.status == "seek_unreliable":
                assert "auto" in res.reason, res.reason
    # decord's sequential decode of this TS starts 12 frames late: reported, with the way out.
    ts = check_video(hard_files / "Cls" / "mpeg2_ts.ts", clip_len=4, backend="decord", seek="never")
    assert ts.status == "seek_unreliable" and "frame 0 differs" in ts.reason and "PyAV" in ts.reason
    assert check_video(hard_files / "Cls" / "mpeg2_ps_midgop.mpg", clip_len=4, backend="pyav").status == "ok"


def test_check_videos_silences_ffmpeg_and_reports_its_first_message(hard_files, tmp_path):
    report = tmp_path / "r.json"
    proc = subprocess.run(
        [sys.executable, str(REPO / "data_prep" / "check_videos.py"), str(hard_files), "--clip-len", "4",
         "--workers", "0", "--backend", "decord", "--report", str(report)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr  # nothing bad: PyAV reads all of them
    assert "@ 0x" not in proc.stderr and "packed" not in proc.stderr  # no "[mpeg4 @ 0x...]" console lines
    videos = {v["path"]: v for v in json.loads(report.read_text())["videos"]}
    assert "packed" in videos["Cls/xvid_packed.avi"]["decoder_message"]
    assert videos["Cls/xvid_packed.avi"]["decoder_message"].startswith("mpeg4: ")
