"""Re-encode videos to a seek-friendly, fast-to-decode H.264 MP4 with PyAV.

Why: random access is frame-exact only in MP4 with a complete sample table and closed GOPs
(see ``video_io``); AVI/XVID with B-frames must be decoded from the start for every clip. One
pass over the dataset makes every later epoch cheaper. The output has

* H.264 (libx264, ``yuv420p``) in MP4 with the index at the front (``+faststart``);
* a key frame every ``gop`` frames exactly (``keyint=min-keyint=gop``, scene-cut off), closed
  GOPs (x264's default), so decord seeks land where they should and cost at most ``gop`` frames;
* the short side scaled to ``short_side`` (even sizes, which 4:2:0 needs), aspect kept;
* optionally a new frame rate (nearest-frame resampling, as ``ffmpeg -r``);
* no audio (the models do not use it).

PyAV's wheels bundle FFmpeg with libx264, so nothing beyond the Python packages is needed. On a
build without libx264 the MPEG-4 Part 2 encoder is used instead (no B-frames, same key-frame
interval): larger files, still seek-exact in MP4.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

from actionrec.data.video_io import VideoDecodeError, frame_converter
from actionrec.errors import first_line


@dataclass(frozen=True)
class TranscodeResult:
    """What happened to one file.

    Attributes:
        src, dst: input and output paths.
        status: 'ok', 'partial' (written, but the source stopped decoding early: ``reason``),
            'skipped' (output existed) or 'failed' (nothing written: ``reason``).
        frames_in: source frames decoded; frames_out: frames written.
        width, height, fps: output stream properties.
    """

    src: str
    dst: str
    status: str
    reason: str = ""
    frames_in: int = 0
    frames_out: int = 0
    width: int = 0
    height: int = 0
    fps: float = 0.0
    codec: str = ""
    seconds: float = 0.0


def pick_codec() -> str:
    """'libx264' when PyAV's FFmpeg has it, else 'mpeg4'."""
    import av

    return "libx264" if "libx264" in av.codecs_available else "mpeg4"


def output_size(width: int, height: int, short_side: int) -> tuple[int, int]:
    """(width, height) with the short side scaled to ``short_side`` (0: keep), both even."""
    if short_side > 0:
        scale = short_side / min(width, height)
        width, height = width * scale, height * scale
    return max(2, int(round(width / 2)) * 2), max(2, int(round(height / 2)) * 2)


def transcode_video(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    *,
    short_side: int = 256,
    gop: int = 16,
    fps: float | None = None,
    crf: int = 23,
    preset: str = "veryfast",
    codec: str | None = None,
    threads: int = 1,
    overwrite: bool = False,
) -> TranscodeResult:
    """Re-encode one video (see the module docstring for the output format).

    The output is written to a temp file next to ``dst`` and renamed when complete, so an
    interrupted run never leaves a half-written ``dst``; a rerun skips finished files.

    Args:
        src: input video.
        dst: output ``.mp4`` path (parent folders are created).
        short_side: target short side in pixels (0 keeps the size).
        gop: frames between key frames.
        fps: output frame rate (None keeps the source rate).
        crf: x264 constant rate factor (lower: better and larger; 18-28 is sensible).
        preset: x264 speed preset.
        codec: 'libx264' or 'mpeg4'; None picks libx264 when available.
        threads: encoder and decoder threads (1 when many files run in parallel).
        overwrite: re-encode even if ``dst`` exists.

    Returns:
        The ``TranscodeResult``; a source that cannot be decoded at all gives status 'failed'
        rather than an exception.
    """
    import av

    t0 = time.monotonic()
    src, dst = os.fspath(src), Path(dst)
    codec = codec or pick_codec()

    def result(status: str, reason: str = "", **kw) -> TranscodeResult:
        return TranscodeResult(src, str(dst), status, reason, codec=codec, seconds=round(time.monotonic() - t0, 3), **kw)

    if dst.exists() and not overwrite:
        return result("skipped", "output exists")
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.partial.mp4")
    try:
        inp = av.open(src)
    except (av.error.FFmpegError, OSError) as e:
        return result("failed", first_line(e))
    try:
        with inp:
            if not inp.streams.video:
                return result("failed", "no video stream")
            ist = inp.streams.video[0]
            declared = ist.frames
            enc = _reencode(inp, ist, tmp, short_side=short_side, fps=fps, codec=codec, threads=threads,
                            gop=gop, crf=crf, preset=preset)
            if enc.frames_in == 0:
                tmp.unlink(missing_ok=True)
                return result("failed", enc.problem or "no decodable frames")
            if declared and enc.frames_in < declared and not enc.problem:
                enc.problem = f"header says {declared} frames, only {enc.frames_in} decode"
    except (av.error.FFmpegError, OSError, VideoDecodeError) as e:
        tmp.unlink(missing_ok=True)
        return result("failed", first_line(e))
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, dst)
    return result("partial" if enc.problem else "ok", enc.problem, frames_in=enc.frames_in, frames_out=enc.frames_out,
                  width=enc.size[0], height=enc.size[1], fps=float(enc.rate))


@dataclass
class _Encoded:
    """What ``_reencode`` wrote: frame counts, output size and rate, why decoding stopped early."""

    rate: Fraction
    frames_in: int = 0
    frames_out: int = 0
    size: tuple[int, int] = (0, 0)
    problem: str = ""


def _reencode(inp, ist, tmp: Path, *, short_side: int, fps: float | None, codec: str, threads: int,
              gop: int, crf: int, preset: str) -> _Encoded:
    """Decode stream ``ist`` of ``inp`` into the MP4 ``tmp``; a decode error ends it (``problem``)."""
    import av

    ist.thread_type = "AUTO"
    ist.thread_count = threads
    src_rate = Fraction(ist.average_rate or ist.guessed_rate or 25)
    enc = _Encoded(rate=Fraction(fps).limit_denominator(1001) if fps else src_rate)
    ost, converter = None, frame_converter()
    with av.open(str(tmp), "w", format="mp4", options={"movflags": "+faststart"}) as out:
        try:
            for frame in inp.decode(ist):
                if ost is None:
                    enc.size = output_size(frame.width, frame.height, short_side)
                    ost = _add_stream(out, codec, enc.size, enc.rate, gop=gop, crf=crf, preset=preset, threads=threads)
                # Source frame i covers [i, i + 1) / src_rate; emit every output tick in it.
                end = (enc.frames_in + 1) / src_rate
                if enc.frames_out / enc.rate < end:
                    img = converter.reformat(frame, width=enc.size[0], height=enc.size[1], format="yuv420p",
                                             interpolation="AREA")
                    img.pict_type = 0  # the source's I/P/B type would force x264's frame types
                    while enc.frames_out / enc.rate < end:
                        img.pts, img.time_base = enc.frames_out, 1 / enc.rate
                        out.mux(ost.encode(img))
                        enc.frames_out += 1
                enc.frames_in += 1
        except av.error.FFmpegError as e:
            enc.problem = f"decoding stops after {enc.frames_in} frames: {first_line(e)}"
        if ost is not None:
            out.mux(ost.encode(None))
    return enc


def transcode_pair(pair: tuple[str, str], **kwargs) -> TranscodeResult:
    """``transcode_video(src, dst, **kwargs)`` for a ``(src, dst)`` pair (parallel maps)."""
    return transcode_video(pair[0], pair[1], **kwargs)


def _add_stream(out, codec: str, size: tuple[int, int], rate: Fraction, *, gop: int, crf: int, preset: str, threads: int):
    if codec == "libx264":
        options = {"crf": str(crf), "preset": preset,
                   # Fixed key-frame interval: no scene-cut key frames, no shorter GOPs.
                   "x264-params": f"keyint={gop}:min-keyint={gop}:scenecut=0"}
    else:
        options = {}
    stream = out.add_stream(codec, rate=rate, options=options)
    stream.width, stream.height, stream.pix_fmt = size[0], size[1], "yuv420p"
    stream.codec_context.gop_size = gop
    stream.codec_context.thread_count = threads
    if codec != "libx264":
        # MPEG-4 Part 2: B-frames break decord's seeking, so none; ~0.2 bit per pixel.
        stream.codec_context.max_b_frames = 0
        stream.bit_rate = int(size[0] * size[1] * float(rate) * 0.2)
    return stream
