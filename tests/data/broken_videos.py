"""A corpus of broken and unusual video files, written with PyAV into a test folder.

Not a test module: tests load it by path (``importlib``), as ``tests/engine`` does with its
helpers. ``write_corpus`` returns each file's name with the status ``check_video`` must give it
at ``clip_len=4``.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np

# name -> expected actionrec.data.check status (clip_len=4)
EXPECTED = {
    "empty.avi": "unreadable",  # 0 bytes
    "random_bytes.avi": "unreadable",
    "text.mp4": "unreadable",  # a text file with a video name
    "truncated_moov_at_end.mp4": "unreadable",  # cut before the index: nothing to open
    "truncated_faststart.mp4": "truncated",  # index at the front declares frames the file lacks
    "truncated_xvid.avi": "truncated",  # AVI header says 40 frames, the cut file holds fewer
    "no_frames.mp4": "zero_frames",  # header and index, no frame data at all
    "bframes.avi": "seek_unreliable",  # MPEG-4 Part 2 with B-frames: decord seeks land wrong
    "one_frame.avi": "too_short",
    "grayscale.mp4": "ok",  # gray (4:0:0) H.264
    "tiny_16x12.mp4": "ok",  # decord pads rows at this width (see video_io)
    "wide_640x32.avi": "ok",
}


def frames(n: int, width: int, height: int) -> np.ndarray:
    """(n, H, W, 3) uint8 RGB frames that differ visibly from one frame to the next."""
    ys, xs = np.mgrid[0:height, 0:width]
    out = np.zeros((n, height, width, 3), np.uint8)
    for i in range(n):
        out[i, ..., 0] = (i * 23) % 256
        out[i, ..., 1] = ((xs + 3 * i) % 32) * 8
        out[i, ..., 2] = (ys * 5 + 7 * i) % 256
    return out


def write_video(path: Path, clip: np.ndarray, *, codec: str = "libx264", gray: bool = False, fps: int = 25,
                gop: int = 12, bframes: int | None = None, tag: str | None = None, faststart: bool = False) -> Path:
    """Encode ``clip`` (T, H, W, 3) with PyAV; ``tag='XVID'`` with codec mpeg4 for UCF-style AVI."""
    options = {"movflags": "+faststart"} if faststart else {}
    with av.open(str(path), "w", options=options) as out:
        stream = out.add_stream(codec, rate=fps)
        stream.width, stream.height = clip.shape[2], clip.shape[1]
        stream.pix_fmt = "gray" if gray else "yuv420p"
        stream.codec_context.gop_size = gop
        if bframes is not None:
            stream.codec_context.max_b_frames = bframes
        if tag:
            stream.codec_tag = tag
        for i, img in enumerate(clip):
            frame = av.VideoFrame.from_ndarray(img[..., 0].copy() if gray else img, format="gray" if gray else "rgb24")
            frame.pts, frame.time_base = i, Fraction(1, fps)
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return path


def write_corpus(folder: str | Path, names: list[str] | None = None) -> dict[str, str]:
    """Write the corpus (or the ``names`` subset) into ``folder``; returns name -> expected status."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    names = list(EXPECTED) if names is None else names
    clip = frames(40, 64, 48)
    makers = {
        "empty.avi": lambda p: p.write_bytes(b""),
        "random_bytes.avi": lambda p: p.write_bytes(np.random.default_rng(0).integers(0, 256, 20_000, np.uint8).tobytes()),
        "text.mp4": lambda p: p.write_text("this is a text file, not a video\n" * 50),
        "truncated_moov_at_end.mp4": lambda p: _truncate(write_video(p, clip), 0.6),
        "truncated_faststart.mp4": lambda p: _truncate(write_video(p, clip, faststart=True), 0.6),
        "truncated_xvid.avi": _truncated_avi,
        "no_frames.mp4": _no_frames,
        "bframes.avi": lambda p: write_video(p, frames(90, 64, 48), codec="mpeg4", tag="XVID", bframes=2),
        "one_frame.avi": lambda p: write_video(p, clip[:1], codec="mpeg4", tag="XVID"),
        "grayscale.mp4": lambda p: write_video(p, clip, gray=True),
        "tiny_16x12.mp4": lambda p: write_video(p, frames(20, 16, 12)),
        "wide_640x32.avi": lambda p: write_video(p, frames(20, 640, 32), codec="mpeg4", tag="XVID"),
    }
    for name in names:
        makers[name](folder / name)
    return {name: EXPECTED[name] for name in names}


def _truncate(path: Path, keep: float) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


def _truncated_avi(path: Path) -> None:
    # Keep the header (it declares 40 frames) and ~60% of the frame data; lose the idx1 index.
    write_video(path, frames(40, 64, 48), codec="mpeg4", tag="XVID")
    data = path.read_bytes()
    movi, idx1 = data.index(b"movi"), data.rindex(b"idx1")
    path.write_bytes(data[: movi + int((idx1 - movi) * 0.6)])


def _no_frames(path: Path) -> None:
    # Index at the front, cut right after the mdat box header: every sample points past the end.
    write_video(path, frames(10, 64, 48), faststart=True)
    data = path.read_bytes()
    path.write_bytes(data[: data.index(b"mdat") + 4])
