"""Classify the videos of a dataset as readable or broken, and move broken ones aside.

Every file gets one status, the most severe that applies:

========================  ==========================================================  =======
status                    meaning                                                     bad?
========================  ==========================================================  =======
``unreadable``            no container or video stream, or the training backend       yes
                          cannot open or decode it
``zero_frames``           opens, but not one frame decodes                            yes
``truncated``             the header declares more frames than decode to the end     yes
                          of the file (or decoding stops with an error)
``seek_unreliable``       the training backend (decord or OpenCV, or decord's random  no
                          access) returns other frames than a sequential decode; the
                          reader's self-check and ``data.backend=auto`` read it with
                          PyAV, exactly
``too_short``             fewer frames than one clip spans (sampling will loop it)    no
``ok``                    none of the above
========================  ==========================================================  =======

"Bad" files fail or mislead training and are what ``quarantine`` moves. A file PyAV decodes
exactly is never ``unreadable``. ``seek_unreliable`` files are read correctly by the default
``backend='auto'`` (PyAV's sequential decode), only slower than random access, and are wrong
with ``seek='always'``: re-encode them with ``data_prep/transcode.py``. ``too_short`` files are usable; they are listed so a user can tell
whether ``clip_len`` suits the data.

How a file is checked: one sequential PyAV decode to the end of the file (the reference: only
the sampled frames are converted to RGB, so memory stays flat) gives the decodable frame count
and reference frames; the training reader then reads the sampled frames as training would
(backend, ``seek`` policy, self-check) and, for decord, with forced random access. Frames must
be equal pixel for pixel. FFmpeg's console messages are silenced; the first one the reference
decode logs is kept in the report (``decoder_message``).
"""

from __future__ import annotations

import csv
import json
import os
import posixpath
import shutil
import time
import zlib
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from actionrec.data.splits import (
    CLASS_INDEX_NAME,
    SPLIT_DIR_NAMES,
    SPLIT_LIST_FILE,
    VIDEO_EXTENSIONS,
    find_split_dir,
    parse_list_line,
)
from actionrec.data.video_io import VideoDecodeError, VideoReader, frame_array, frame_converter, pyav_frame_count
from actionrec.errors import UsageError, first_line

STATUSES = ("unreadable", "zero_frames", "truncated", "seek_unreliable", "too_short", "ok")
BAD_STATUSES = ("unreadable", "zero_frames", "truncated")


@dataclass(frozen=True)
class VideoCheck:
    """Result of checking one file.

    Attributes:
        path: the file (as given, or relative to the dataset root in reports).
        status: one of ``STATUSES``.
        reason: what is wrong, empty when ``ok``.
        declared_frames: frame count in the container header (None if it cannot be opened).
        decoded_frames: frames that decode sequentially to the end of the file.
        fps, width, height: stream properties (None when unknown).
        seconds: time the check took.
        decoder_message: FFmpeg's first message while decoding the file (empty if none).
    """

    path: str
    status: str
    reason: str = ""
    declared_frames: int | None = None
    decoded_frames: int | None = None
    fps: float | None = None
    width: int | None = None
    height: int | None = None
    seconds: float = 0.0
    decoder_message: str = ""

    @property
    def bad(self) -> bool:
        return self.status in BAD_STATUSES


def _sample_indices(path: str, num_frames: int, count: int) -> list[int]:
    """A fixed sample of ``count`` frame indices for this file (seeded by its name), sorted."""
    if num_frames <= 0:
        return []
    rng = np.random.default_rng(zlib.crc32(os.path.basename(path).encode()))
    k = min(count, num_frames)
    return sorted(rng.choice(num_frames, size=k, replace=False).tolist())


def _riff_cut(path: str) -> bool:
    """An AVI shorter than its RIFF header says: cut at a packet boundary, which no demuxer flags."""
    with open(path, "rb") as f:
        head = f.read(12)
    if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"AVI ":
        return False
    return os.path.getsize(path) < int.from_bytes(head[4:8], "little") + 8


def _reference_decode(path: str, sample_count: int) -> dict:
    """Sequential PyAV decode to EOF: counts, sampled RGB frames, error, FFmpeg's first message."""
    import av

    out: dict = {"declared": None, "decoded": 0, "fps": None, "width": None, "height": None,
                 "frames": {}, "error": None, "sample": [], "message": ""}
    # PyAV's default level (None) keeps FFmpeg silent; capture its messages for the report instead.
    # Repeats are not held back: a held "repeated N times" would land in the next file's report.
    av.logging.set_level(av.logging.WARNING)
    av.logging.set_skip_repeated(False)
    try:
        with av.logging.Capture() as messages:
            _decode_into(path, sample_count, out)
    finally:
        av.logging.set_level(None)
    if messages:
        _, name, text = messages[0]
        out["message"] = f"{name}: {text.strip().splitlines()[0]}" if text.strip() else name
    return out


def _decode_into(path: str, sample_count: int, out: dict) -> None:
    import av

    try:
        container = av.open(path)
    except av.error.FFmpegError as e:
        out["open_error"] = first_line(e, path)
        return
    with container:
        if not container.streams.video:
            out["open_error"] = "no video stream"
            return
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        stream.thread_count = 1  # one process per file already uses the cores
        out["fps"] = float(stream.average_rate or stream.guessed_rate or 0) or None
        try:
            frames, header, _ = pyav_frame_count(container, stream)  # damage is found by the decode below
        except av.error.FFmpegError as e:
            frames, header, out["error"] = 0, None, first_line(e, path)
        container.seek(0)
        # MKV/WebM/MPEG-PS/TS headers carry no count. A header can also overstate an intact file
        # (FFmpeg's libxvid with packed B-frames declares 96 frames and writes 94 packets).
        out["declared"] = declared = header or frames
        out["packets"] = frames
        out["sample"] = want = _sample_indices(path, declared, sample_count)
        wanted, converter = set(want), frame_converter()
        n = 0
        try:
            for packet in container.demux(stream):
                if packet.is_corrupt and out.get("damaged") is None:
                    out["damaged"] = n  # frames decoded before the demuxer met a damaged packet
                for frame in packet.decode():
                    if n == 0:
                        out["width"], out["height"] = frame.width, frame.height
                    if n in wanted:
                        out["frames"][n] = frame_array(frame, "rgb24", converter)
                    n += 1
        except av.error.FFmpegError as e:
            out["error"] = first_line(e, path)
        out["decoded"] = n


def _mismatches(frames: np.ndarray, indices: Sequence[int], reference: dict) -> list[int]:
    bad = []
    for frame, i in zip(frames, indices):
        ref = reference.get(i)
        if ref is None or ref.shape != frame.shape:
            bad.append(i)
        elif not np.array_equal(frame, ref):
            bad.append(i)
    return bad


def check_video(
    path: str | os.PathLike,
    *,
    clip_len: int = 16,
    frame_interval: int = 1,
    backend: str = "auto",
    seek: str = "auto",
    seek_samples: int = 8,
) -> VideoCheck:
    """Classify one video file (see the module docstring for the statuses).

    Args:
        path: the video file.
        clip_len: frames per training clip; fewer decodable frames than one clip spans
            (``(clip_len - 1) * frame_interval + 1``) gives ``too_short``.
        frame_interval: stride between clip frames.
        backend: the training decoder ('auto', 'decord', 'pyav' or 'opencv').
        seek: the training seek policy the backend read uses.
        seek_samples: how many frames the random-access check compares.

    Returns:
        The ``VideoCheck``. Never raises for a broken file; that is what the status is for.
    """
    path = os.fspath(path)
    t0 = time.monotonic()
    ref: dict = {}
    found = _file_problem(path)
    if found is None:
        ref = _reference_decode(path, seek_samples)
        found = _decode_problem(path, ref) or _training_read_problem(path, ref, backend, seek)
    if found is None:
        span = (clip_len - 1) * frame_interval + 1
        found = ("ok", "")
        if ref["decoded"] < span:
            found = ("too_short", f"{ref['decoded']} frames < {span} spanned by one clip "
                                  f"(clip_len={clip_len}, frame_interval={frame_interval}); sampling loops it")
    status, reason = found
    return VideoCheck(path, status, reason, ref.get("declared"), ref.get("decoded"), ref.get("fps"),
                      ref.get("width"), ref.get("height"), round(time.monotonic() - t0, 3), ref.get("message", ""))


def _file_problem(path: str) -> tuple[str, str] | None:
    if not os.path.isfile(path):
        return "unreadable", "not a regular file" if os.path.exists(path) else "file not found"
    if os.path.getsize(path) == 0:
        return "unreadable", "empty file (0 bytes)"
    return None


def _decode_problem(path: str, ref: dict) -> tuple[str, str] | None:
    """unreadable, zero_frames or truncated from the reference decode; None when it read every frame."""
    if "open_error" in ref:
        return "unreadable", ref["open_error"]
    declared, decoded = ref["declared"], ref["decoded"]
    if decoded == 0:
        why = f"header says {declared} frames, none decodes" if declared else "no frames in the file"
        return "zero_frames", why + (f" ({ref['error']})" if ref["error"] else "")
    problem = ""
    if ref.get("damaged") is not None or decoded < ref["packets"] or _riff_cut(path):
        problem = f"header says {declared} frames, only {decoded} decode"
    if ref.get("damaged") is not None:
        problem = problem or f"a damaged packet after {ref['damaged']} frames (file cut short?)"
    if ref["error"]:
        problem = (problem + "; " if problem else f"decoding stops after {decoded} frames: ") + ref["error"]
    return ("truncated", problem) if problem else None


def _training_read_problem(path: str, ref: dict, backend: str, seek: str) -> tuple[str, str] | None:
    """unreadable or seek_unreliable when the training read differs from the reference; else None.

    The training read: the same frames through the configured backend, seek policy and self-check;
    then, for decord, forced random access.
    """
    decoded = ref["decoded"]
    sample = [i for i in ref["sample"] if i < decoded] or [0]
    try:
        with VideoReader(path, backend=backend, seek=seek) as reader:
            sample = [i for i in sample if i < len(reader)] or [0]
            got, used, fallback = reader.get_frames(sample), reader.backend, reader.fallback
    except (VideoDecodeError, IndexError) as e:  # PyAV decoded every frame above, so this is a bug
        reason = e.reason if isinstance(e, VideoDecodeError) else str(e)
        return "unreadable", f"{backend}: {reason} although PyAV decodes all {decoded} frames"
    wrong = _mismatches(got, sample, ref["frames"])
    if wrong:  # the self-check compares only the first frames
        return "seek_unreliable", (f"{used} (seek={seek}) returns other frames at {wrong[:5]}; "
                                   "data.backend=auto reads it exactly (PyAV)")
    if fallback:
        return "seek_unreliable", f"{backend}: {fallback}; the reader uses PyAV for it, as data.backend=auto does: exact"
    if backend not in ("auto", "decord") or seek == "always":
        return None
    try:
        with VideoReader(path, backend="decord", seek="always", verify=False) as reader:
            got = reader.get_frames(sample)
    except (VideoDecodeError, IndexError) as e:
        return "seek_unreliable", f"random access fails: {getattr(e, 'reason', e)}; data.backend=auto reads it exactly"
    wrong = _mismatches(got, sample, ref["frames"])
    if wrong:
        return "seek_unreliable", (f"random access returns other frames at indices {wrong[:5]} "
                                   f"of {sample}; data.backend=auto reads it exactly")
    return None


def find_videos(root: str | os.PathLike) -> tuple[list[Path], list[Path]]:
    """Video files under ``root`` (any depth) and the other files found next to them.

    Hidden files and folders and the split-list folders are skipped.

    Returns:
        (videos, others): sorted paths relative to ``root``.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"dataset folder not found: {root}")
    videos, others = [], []
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and not (here == root and d in SPLIT_DIR_NAMES))
        for name in filenames:
            if name.startswith("."):
                continue
            rel = (here / name).relative_to(root)
            (videos if rel.suffix.lower() in VIDEO_EXTENSIONS else others).append(rel)
    return sorted(videos), sorted(others)


def summarize(results: Iterable[VideoCheck]) -> dict[str, int]:
    """Count per status, every status present (zeros included), in ``STATUSES`` order."""
    counts = dict.fromkeys(STATUSES, 0)
    for r in results:
        counts[r.status] += 1
    return counts


def format_table(results: Sequence[VideoCheck]) -> str:
    """Plain-text summary: one line per status with its count, then each non-ok file."""
    counts = summarize(results)
    width = max(len(s) for s in STATUSES)
    lines = [f"{'status':<{width}}  {'files':>6}"]
    lines += [f"{s:<{width}}  {n:>6}" for s, n in counts.items()]
    lines.append(f"{'total':<{width}}  {len(results):>6}")
    problems = [r for r in results if r.status != "ok"]
    if problems:
        lines.append("")
        lines += [f"{r.status:<{width}}  {r.path}: {r.reason}" for r in sorted(problems, key=lambda r: (STATUSES.index(r.status), r.path))]
    return "\n".join(lines)


def write_report(results: Sequence[VideoCheck], path: str | os.PathLike, *, settings: dict | None = None) -> Path:
    """Write the report as JSON (``.json``) or CSV (any other suffix).

    The JSON holds ``settings``, ``summary`` (count per status) and ``videos`` (one record each).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() == ".json":
        doc = {"settings": settings or {}, "summary": summarize(results), "videos": [asdict(r) for r in results]}
        path.write_text(json.dumps(doc, indent=1) + "\n")
    else:
        # File names that are not UTF-8 (surrogate-escaped) are written back as their original bytes.
        with open(path, "w", newline="", encoding="utf-8", errors="surrogateescape") as f:
            w = csv.DictWriter(f, fieldnames=[fl.name for fl in fields(VideoCheck)])
            w.writeheader()
            w.writerows(asdict(r) for r in results)
    return path


def _split_entry(line: str) -> str:
    """The path of a split-list line ("Class/v.avi" or "Class/v.avi 3"), normalised."""
    return posixpath.normpath(parse_list_line(line)[0].replace("\\", "/"))


def rewrite_split_lists(src_dir: Path, dst_dir: Path, *, drop: set[str] = frozenset(),
                        rename_ext: str | None = None) -> dict[str, int]:
    """Copy the split lists of ``src_dir`` to ``dst_dir``, dropping and/or renaming entries.

    ``classInd.txt`` is copied as is; in ``trainlistNN.txt``/``testlistNN.txt`` lines whose
    entry (normalised relative path) is in ``drop`` are removed and, with ``rename_ext`` (e.g.
    '.mp4'), video entries get that extension. Labels and line endings are kept.
    ``src_dir`` may equal ``dst_dir`` (rewrite in place).

    Returns:
        Number of dropped lines per list file name.
    """
    dst_dir.mkdir(parents=True, exist_ok=True)
    dropped: dict[str, int] = {}
    for src in sorted(p for p in src_dir.iterdir() if p.is_file()):
        if src.name == CLASS_INDEX_NAME and src_dir != dst_dir:
            shutil.copy2(src, dst_dir / src.name)
        if not SPLIT_LIST_FILE.match(src.name):
            continue
        out, n = [], 0
        for line in src.read_text(encoding="utf-8-sig").splitlines(keepends=True):
            if not line.strip():
                out.append(line)
                continue
            if _split_entry(line) in drop:
                n += 1
                continue
            path_part, label, ending = parse_list_line(line)
            stem, ext = posixpath.splitext(path_part)
            if rename_ext and ext.lower() in VIDEO_EXTENSIONS:
                line = stem + rename_ext + (f" {label}" if label is not None else "") + ending
            out.append(line)
        (dst_dir / src.name).write_text("".join(out), encoding="utf-8", newline="")
        dropped[src.name] = n
    return dropped


def quarantine(root: str | os.PathLike, results: Iterable[VideoCheck], dest: str | os.PathLike, *,
               statuses: Sequence[str] = BAD_STATUSES) -> tuple[list[str], dict[str, int]]:
    """Move files with one of ``statuses`` from ``root`` to ``dest``, keeping relative paths.

    Nothing is deleted: the videos move, and split lists that name them are rewritten without
    those lines after their original is saved under ``dest`` (same relative folder), so the
    dataset still loads and every change can be undone by moving files back.

    Args:
        root: dataset root; ``results`` paths are relative to it.
        results: check results (relative paths).
        dest: quarantine folder; must not lie inside ``root`` (it would look like a class folder).
        statuses: which statuses to move.

    Returns:
        (moved relative paths, dropped split-list lines per list file).

    Raises:
        UsageError: ``dest`` is inside ``root``, or a target file already exists there.
    """
    root, dest = Path(root).absolute(), Path(dest).absolute()
    if dest == root or root in dest.parents:
        raise UsageError(f"quarantine folder {dest} must be outside the dataset root {root}")
    moving = [r.path for r in results if r.status in statuses]
    for rel in moving:
        if (dest / rel).exists():
            raise UsageError(f"{dest / rel} already exists; empty the quarantine folder or pick another")
    for rel in moving:
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(root / rel), str(dest / rel))
    dropped: dict[str, int] = {}
    split_dir = find_split_dir(root)
    if moving and split_dir is not None:
        gone = {posixpath.normpath(Path(p).as_posix()) for p in moving}
        backup = dest / split_dir.relative_to(root)
        for name, n in _count_entries(split_dir, gone).items():
            if n:
                backup.mkdir(parents=True, exist_ok=True)
                shutil.copy2(split_dir / name, backup / name)
        dropped = {k: v for k, v in rewrite_split_lists(split_dir, split_dir, drop=gone).items() if v}
    return moving, dropped


def _count_entries(split_dir: Path, entries: set[str]) -> dict[str, int]:
    counts = {}
    for f in (p for p in split_dir.iterdir() if SPLIT_LIST_FILE.match(p.name)):
        lines = f.read_text(encoding="utf-8-sig").splitlines()
        counts[f.name] = sum(1 for line in lines if line.strip() and _split_entry(line) in entries)
    return counts
