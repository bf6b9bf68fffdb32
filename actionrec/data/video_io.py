"""Frame-exact video reading: decord random access where proven exact, PyAV elsewhere.

Frame-exact means the frames returned for indices ``i1..ik`` are the frames a
sequential decode of the file (PyAV, every frame in order) yields at those
positions, pixel for pixel; otherwise labels and temporal sampling silently go wrong.

Why the strategy below: decord 0.6.0 records key frames by decode order but
numbers frames by presentation order, so whenever frames are reordered across a
key frame (B-frames in AVI/MPEG/MKV, open GOPs in MP4) its seeks land elsewhere.
On 150-frame test clips ``get_batch`` returned frames 2-30 positions off for most
16-frame samples of MPEG-4 Part 2 with B-frames (.avi, .mkv, open-GOP .mp4),
H.264 in .avi and MPEG-1/2 (.mpg, .avi); x264 --open-gop .mp4 also failed, even
at non-IDR key frames without leading pictures. Even its sequential decode is not
safe: on an MPEG-2 transport stream it returned frame i+12 for every index i, on a
program stream that starts mid-GOP it counts (and returns) frames that do not
decode, and it bundles FFmpeg 4.1, whose MPEG-4 Part 2 B-frames differ from a
current FFmpeg by one grey level.

* ``backend="auto"`` (the default): decord random access (``get_batch`` on sorted
  unique indices, re-expanded to the requested order) only for ISO-BMFF files
  (MP4, MOV, M4V) whose sample table is complete, whose GOPs are closed and whose
  H.264/HEVC key frames are IDR; PyAV's sequential decode for everything else.
  On 80 random x264/MPEG-4 encodes the ISO-BMFF check never passed a file decord
  got wrong (it rejected 24 such files and 3 fine ones). It demuxes packets with
  PyAV, no decoding: 1-2 ms next to 20-80 ms for decoding a 16-frame sample.
* ``"decord"`` / ``"opencv"``: that library for every file (decord seeks only where
  the ISO-BMFF check passed, with ``seek="auto"``); ``"pyav"``: PyAV always.
* Self-check (``verify=True``, the default): whenever a file is to be read by
  anything but PyAV, the first frames and the frame count are compared with PyAV's
  sequential decode at open; on any difference the file is read with PyAV and the
  difference logged once per file. Results are remembered per process (and, in
  the dataset, shared by all DataLoader workers), so each file is checked once.
* Sequential reads decode from the start up to the largest index, converting only
  the needed frames to RGB; a reader reused with ascending indices continues where
  it stopped. With decord, ``skip_frames`` is only called within a GOP and only
  when every frame has its own timestamp (it discards by pts), else ``next()``.
* ``len()``: PyAV takes the header count where the container has one (AVI,
  MP4/MOV); elsewhere (MPEG-PS/TS, MKV, WebM) it counts demuxed packets from the
  first key frame on, leaving out leading pictures shown before it (they do not
  decode when a stream starts mid-GOP) and damaged packets.
* Truncation: PyAV stops at the first packet the demuxer marks damaged (a file cut
  mid-packet), without flushing the frames held for reordering, and at the first
  frame the decoder marks corrupt, so a partial frame is never returned as if whole.
  An index at or beyond the last decodable frame raises ``VideoDecodeError``
  ("truncated: ...") instead of returning a stale frame, with every backend.

``seek="always"`` forces decord random access, ``"never"`` forces sequential
decode. The PyAV and OpenCV readers are sequential only.
"""

from __future__ import annotations

import bisect
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from actionrec.errors import UserError, first_line

log = logging.getLogger(__name__)

_BACKENDS = ("auto", "decord", "pyav", "opencv")
_SEEK_MODES = ("auto", "always", "never")
_ISO_BMFF_EXTS = (".mp4", ".m4v", ".mov")
_TO_EOF = range(2**62)  # "every frame" for the sequential readers
_HEADER_COUNT_FORMATS = {"avi", "mov", "mp4", "m4a", "3gp", "3g2", "mj2"}  # carry a frame count
VERIFY_FRAMES = 8  # frames the self-check compares with PyAV


def utf8_alias(path: str) -> tuple[str, str | None]:
    """(a name decord and OpenCV can open for ``path``, a temp folder to remove afterwards or None).

    A file name that is not valid UTF-8 (Latin-1 names from old archives) reaches Python as a str
    with surrogate escapes; decord raises on it and OpenCV crashed the process (SIGSEGV). Such a
    file is opened through a symlink with a plain name in a private temp folder. PyAV needs none.
    """
    try:
        path.encode("utf-8")
        return path, None
    except UnicodeEncodeError:
        folder = tempfile.mkdtemp(prefix="actionrec-name-")
        suffix = os.path.splitext(path)[1].encode("ascii", "replace").decode().replace("?", "_")
        alias = os.path.join(folder, "video" + suffix)
        os.symlink(os.path.abspath(path), alias)
        return alias, folder


def quiet_decoders() -> None:
    """Silences FFmpeg's console messages from decord and OpenCV (PyAV's are off by default).

    Decoder messages ("[mpeg4 @ 0x...] ac-tex damaged") are the library's, not the user's business;
    what matters reaches the user as a ``VideoDecodeError`` or a check report instead.
    """
    import decord

    decord.logging.set_level(decord.logging.QUIET)
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")  # read when OpenCV opens a file


class VideoDecodeError(UserError, RuntimeError):
    """Raised for any unreadable or corrupt video.

    The message starts with the file path and says what is wrong.
    """

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path = os.fspath(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


@dataclass(frozen=True)
class VideoInfo:
    """What a reader knows about a file; ``num_frames`` counts the frames that decode."""

    path: str
    num_frames: int
    fps: float
    width: int
    height: int


class _EndOfStream(Exception):
    """Internal: decoding hit EOF after ``decoded`` frames."""

    def __init__(self, decoded: int):
        super().__init__(decoded)
        self.decoded = decoded


class _DecordSource:
    def __init__(self, path: str, num_threads: int):
        import decord

        quiet_decoders()
        self.path, self._link_dir = utf8_alias(path)
        self._decord, self._threads = decord, num_threads
        # decord raises DECORDError, RuntimeError, or asserts on a zero frame count.
        self.errors = (decord.DECORDError, RuntimeError, AssertionError)
        try:
            self._open()
        except self.errors as err:
            self.close()
            raise VideoDecodeError(path, _pyav_diagnosis(path) or first_line(err)) from err
        self.num_frames, self.fps = len(self._vr), float(self._vr.get_avg_fps())

    def _open(self) -> None:
        self._vr, self._pos = self._decord.VideoReader(self.path, num_threads=self._threads), 0
        self._keys = self._vr.get_key_indices()  # decode-order counts, as SkipFrames uses
        # skip_frames discards frames by pts; with missing or repeated pts (common in
        # AVI) it also hit frames after the skip and decord then seeked (wrong frame).
        pts = self._vr.get_frame_timestamp(range(len(self._vr)))[:, 0]
        self._can_skip = bool(np.all(np.diff(pts) > 0))

    @staticmethod
    def _np(arr) -> np.ndarray:
        # A bridge set elsewhere (thread-local) may hand back a tensor instead.
        a = arr.asnumpy() if hasattr(arr, "asnumpy") else np.asarray(arr)
        if a.ndim == 3 and a.shape[-1] != 3:
            # decord 0.6 bug: at some small widths (16, 24, 48 px seen) the RGB rows are padded
            # and decord returns the padded buffer as (H, W, row_bytes / W). The first W * 3
            # bytes of each row are the frame (checked bit-exact against PyAV).
            h, w = a.shape[:2]
            a = np.ascontiguousarray(a.reshape(h, -1)[:, : w * 3].reshape(h, w, 3))
        return a

    def random_read(self, idx: list[int]) -> list[np.ndarray]:
        self._pos = -1  # get_batch moves the decoder; a sequential read must reopen
        try:
            return list(self._np(self._vr.get_batch(idx)))
        except self._decord.DECORDError as err:
            if "must exactly match" not in str(err):
                raise
            return self.seq_read(idx)  # the padded-row bug above: get_batch cannot copy such frames

    def seq_read(self, idx: Sequence[int]) -> list[np.ndarray]:
        if not idx or not 0 <= self._pos <= idx[0]:
            self._open()
        pos, self._pos, out = self._pos, -1, []  # -1 until done: reopen after errors
        try:
            for i in idx:
                while pos < i:
                    # skip_frames seeks if a key frame index lies in (pos, pos + n], and
                    # fails if none lies at or before pos: then step with next().
                    k = bisect.bisect_right(self._keys, pos)
                    stop = min(i, self._keys[k] - 1) if k < len(self._keys) else i
                    if stop > pos and k > 0 and self._can_skip:
                        self._vr.skip_frames(stop - pos)  # decodes, no RGB conversion
                        pos = stop
                    else:
                        self._vr.next()
                        pos += 1
                out.append(self._np(self._vr.next()))
                pos += 1
        except StopIteration:
            if idx is _TO_EOF:
                return out
            raise _EndOfStream(self._count()) from None
        self._pos = pos
        return out

    def _count(self) -> int:
        # Error path only: skip_frames does not say where EOF was, so count again.
        vr, n = self._decord.VideoReader(self.path, num_threads=self._threads), 0
        try:
            while vr.next() is not None:
                n += 1
        except StopIteration:
            return n

    def close(self) -> None:
        self._vr = None  # decord frees its handle in __del__; it has no close()
        if self._link_dir is not None:
            shutil.rmtree(self._link_dir, ignore_errors=True)
            self._link_dir = None


def pyav_frame_count(container, stream) -> tuple[int, int | None, int | None]:
    """(frames a sequential decode yields, frames the header declares or None, decode-order number of
    the first packet the demuxer marks damaged or None); demuxes, no decoding.

    Counts packets from the first key frame on, leaving out leading pictures shown before it (a
    stream cut mid-GOP: they reference the missing previous GOP and do not decode) and packets the
    demuxer marks damaged (a file cut mid-packet). The header's count, where the container has one
    (AVI, MP4/MOV), can be larger: a truncated file, or an encoder that lost frames at the end
    (libxvid with packed B-frames declares 96 frames and writes 94).
    """
    formats = set(container.format.name.split(","))
    declared = int(stream.frames) if formats & _HEADER_COUNT_FORMATS and 0 < stream.frames < 2**31 else None
    key_pts, n, damaged = None, 0, None
    for number, p in enumerate(container.demux(stream)):
        if p.is_corrupt and damaged is None:
            damaged = number
        if not p.size or p.is_corrupt:
            continue
        if key_pts is None:
            if not p.is_keyframe:
                continue
            key_pts = p.pts if p.pts is not None else -(2**62)
        if p.pts is None or p.pts >= key_pts:
            n += 1
    return n, declared, damaged


def frame_converter():
    """A PyAV pixel-format converter (``VideoReformatter``) of our own: ``frame_array`` with it.

    Not ``frame.to_ndarray(format=...)``: from PyAV 18.1.1 that converts through one swscale
    converter kept per thread, whose slice threads a forked process does not have, so a DataLoader
    worker forked after the main process had converted a frame of the same size waited for them
    forever (``tests/data/test_video_io.py``). Make one where it is used (each reader opens its own in
    the process that reads), never before a fork."""
    from av.video.reformatter import VideoReformatter

    return VideoReformatter()


def frame_array(frame, fmt: str, converter) -> np.ndarray:
    """(H, W, 3) uint8 array of a PyAV video ``frame`` in pixel format ``fmt`` (rgb24, bgr24) through
    ``converter`` (``frame_converter``)."""
    return converter.reformat(frame, format=fmt).to_ndarray()


class _PyAVSource:
    def __init__(self, path: str, num_threads: int):
        import av

        self.path, self._threads, self._av = path, num_threads, av
        self.errors, self._container, self._frames = (av.error.FFmpegError,), None, None
        self._converter = frame_converter()  # one per reader: reopening keeps its swscale context
        self._open()
        self.fps = float(self._stream.average_rate or self._stream.guessed_rate or 0)
        self.num_frames, self.declared, self.first_damaged = pyav_frame_count(self._container, self._stream)
        self._open()

    def _open(self) -> None:
        self.close()
        self._container = self._av.open(self.path)
        if not self._container.streams.video:
            raise VideoDecodeError(self.path, "no video stream")
        self._stream = self._container.streams.video[0]
        self._stream.thread_type = "AUTO"  # FFmpeg's threaded decoding is bit-exact
        self._stream.thread_count = self._threads
        self._frames, self._pos = self._decode(), 0

    def _decode(self):
        """Frames in order; stops before damage (a file cut mid-packet), never yields a partial frame."""
        for packet in self._container.demux(self._stream):
            if packet.is_corrupt and packet.size:
                # Cut mid-packet. The frames still held for reordering are not flushed: one may sit
                # after the damaged frame in display order (H.264 in AVI lost a B-frame that way).
                return
            for frame in packet.decode():  # the final empty packet flushes the decoder
                if frame.is_corrupt:
                    return
                yield frame

    def seq_read(self, idx: Sequence[int]) -> list[np.ndarray]:
        if not idx or not 0 <= self._pos <= idx[0]:
            self._open()
        pos, self._pos, out = self._pos, -1, []  # -1 until done: reopen after errors
        for i in idx:
            while pos <= i:
                frame = next(self._frames, None)
                if frame is None:
                    if idx is _TO_EOF:
                        return out
                    raise _EndOfStream(pos)
                pos += 1
            out.append(frame_array(frame, "rgb24", self._converter))  # only needed frames
        self._pos = pos
        return out

    def close(self) -> None:
        if self._frames is not None:
            # Finish the frame generator while its container is open: left suspended, it is
            # finalised later, after the container is gone (a DataLoader worker forked from this
            # process crashed with SIGSEGV collecting one).
            self._frames.close()
            self._frames = None
        if self._container is not None:
            self._container.close()
            self._container = None


class _OpenCVSource:
    def __init__(self, path: str, num_threads: int):
        quiet_decoders()
        import cv2

        self._name = path  # for messages; self.path may be a plain-named alias
        self.path, self._link_dir = utf8_alias(path)
        self._cv2, self.errors = cv2, (cv2.error,)
        self._open()
        self.fps = float(self._cap.get(cv2.CAP_PROP_FPS))
        self.num_frames = int(self._cap.get(cv2.CAP_PROP_FRAME_COUNT))  # may be an estimate

    def _open(self) -> None:
        self._cap, self._pos = self._cv2.VideoCapture(self.path, self._cv2.CAP_FFMPEG), 0
        if not self._cap.isOpened():
            self.close()
            raise VideoDecodeError(self._name, "OpenCV cannot open it")
        # decord and PyAV ignore rotation metadata; match them.
        self._cap.set(self._cv2.CAP_PROP_ORIENTATION_AUTO, 0)

    def seq_read(self, idx: Sequence[int]) -> list[np.ndarray]:
        if not idx or not 0 <= self._pos <= idx[0]:
            self.close()
            self._open()
        pos, self._pos, out = self._pos, -1, []  # -1 until done: reopen after errors
        for i in idx:
            while pos <= i:
                if not self._cap.grab():  # grab() decodes; retrieve() converts
                    if idx is _TO_EOF:
                        return out
                    raise _EndOfStream(pos)
                pos += 1
            ok, bgr = self._cap.retrieve()
            if not ok:
                raise VideoDecodeError(self._name, f"OpenCV cannot convert frame {i}")
            out.append(self._cv2.cvtColor(bgr, self._cv2.COLOR_BGR2RGB))
        self._pos = pos
        return out

    def close(self) -> None:
        self._cap.release()
        if self._link_dir is not None:
            shutil.rmtree(self._link_dir, ignore_errors=True)
            self._link_dir = None


_SOURCES = {"decord": _DecordSource, "pyav": _PyAVSource, "opencv": _OpenCVSource}


def _pyav_diagnosis(path: str) -> str | None:
    """Names what is wrong with a file decord refused, if PyAV can tell."""
    import av

    try:
        with av.open(path) as container:
            if not container.streams.video:
                return "no video stream"
            if not any(p.size for p in container.demux(video=0)):
                return "no decodable frames"
    except av.error.FFmpegError as err:
        return first_line(err)
    return None


# H.264/HEVC key frames can be non-IDR recovery points (x264 --open-gop, HEVC CRA).
# decord returned wrong frames after seeking to one even without leading pictures.
# codec -> (NAL type from its first header byte, IDR types, length-size byte in extradata)
_IDR_NALS = {"h264": (lambda b: b & 0x1F, {5}, 4),
             "hevc": (lambda b: (b >> 1) & 0x3F, {19, 20}, 21)}


def _has_idr(data: bytes, codec: str, extradata: bytes | None) -> bool:
    nal_type, idr_types, at = _IDR_NALS[codec]
    if not extradata or len(extradata) <= at or extradata[0] != 1:
        return False  # not length-prefixed (avcC/hvcC) NALs: cannot tell
    size, i = (extradata[at] & 3) + 1, 0
    while i + size < len(data):
        if nal_type(data[i + size]) in idr_types:
            return True
        i += size + int.from_bytes(data[i:i + size], "big")
    return False


def _mp4_random_access_ok(path: str, num_frames: int | None = None) -> bool:
    """Checks by demuxing (no decoding) that decord's random access is exact here.

    Needs ISO-BMFF, one packet with a unique timestamp per frame, as many packets
    as the sample table lists (and as ``num_frames``, when given), closed GOPs (every packet decoded before a key frame is
    shown before it, every packet from it on is shown from it on) and, for
    H.264/HEVC, IDR key frames.
    """
    import av

    with av.open(path) as container:
        if "mp4" not in container.format.name.split(",") or not container.streams.video:
            return False
        listed = container.streams.video[0].frames
        codec_ctx = container.streams.video[0].codec_context
        pkts = [(p.pts, p.is_keyframe, p.is_keyframe and codec_ctx.name in _IDR_NALS
                 and not _has_idr(bytes(p), codec_ctx.name, codec_ctx.extradata))
                for p in container.demux(video=0) if p.size]
    if len(pkts) != (listed if num_frames is None else num_frames) or any(pts is None or non_idr for pts, _, non_idr in pkts):
        return False
    pts = np.array([p for p, _, _ in pkts], dtype=np.int64)
    keys = np.array([k for _, k, _ in pkts], dtype=bool)
    if len(np.unique(pts)) != len(pts):
        return False
    max_before = np.maximum.accumulate(np.r_[np.iinfo(np.int64).min, pts[:-1]])
    min_from = np.minimum.accumulate(pts[::-1])[::-1]
    return bool(np.all((max_before[keys] < pts[keys]) & (min_from[keys] == pts[keys])))


# Self-check results of this process: (path, size, mtime, backend, seek) -> (what differed or "",
# the header's frame count or None).
_CHECKED: dict[tuple, tuple[str, int | None]] = {}
_FELL_BACK: set[str] = set()  # files whose fallback to PyAV was logged


class VideoReader:
    """Frame-exact reader (see the module docstring for the strategy).

    Args:
        path: Video file.
        backend: ``"auto"`` (default: decord where random access is proven exact, else
            PyAV), ``"decord"``, ``"pyav"`` or ``"opencv"``.
        seek: ``"auto"`` (random access only where verified exact), ``"always"``
            (decord random access) or ``"never"`` (sequential decode).
        num_threads: Decoder threads; 0 lets the library choose.
        verify: Compare a non-PyAV backend with PyAV's sequential decode at open (first
            frames and frame count; once per file and process) and read the file with
            PyAV on any difference. ``False`` trusts the backend (the caller checked).

    Attributes:
        backend: The library that reads this file (``"decord"``, ``"pyav"`` or ``"opencv"``).
        fallback: Why the self-check switched this file to PyAV; empty when it did not.
        declared: The header's frame count where known (AVI, MP4/MOV); ``len()`` can be smaller.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        VideoDecodeError: The file cannot be opened as a video.
        ValueError: Unknown backend or seek mode, or ``seek="always"`` without decord.
    """

    def __init__(self, path: str | os.PathLike, *, backend: str = "auto",
                 seek: str = "auto", num_threads: int = 1, verify: bool = True):
        if backend not in _BACKENDS:
            raise ValueError(f"backend must be one of {_BACKENDS}, got {backend!r}")
        if seek not in _SEEK_MODES:
            raise ValueError(f"seek must be one of {_SEEK_MODES}, got {seek!r}")
        if seek == "always" and backend not in ("auto", "decord"):
            raise ValueError(f"seek='always' needs backend='decord', got {backend!r}")
        self._path, self._src, self._shape, self.fallback = os.fspath(path), None, None, ""
        self.declared: int | None = None
        if not os.path.exists(self._path):
            raise FileNotFoundError(2, "No such video file", self._path)
        if not os.path.isfile(self._path):
            raise VideoDecodeError(self._path, "not a regular file")
        self._random = seek == "always" or (
            seek == "auto" and backend in ("auto", "decord")
            and self._path.lower().endswith(_ISO_BMFF_EXTS)
            and self._call(lambda: _mp4_random_access_ok(self._path, None)))
        if backend == "auto":
            backend = "decord" if self._random else "pyav"
        self.backend = backend
        try:
            self._src = self._call(lambda: _SOURCES[backend](self._path, num_threads))
        except VideoDecodeError as err:
            if backend == "pyav" or not verify:
                raise
            # decord and OpenCV refuse some files PyAV reads (and would then be the reference).
            self._src = self._call(lambda: _PyAVSource(self._path, num_threads))
            self.fallback, self.backend, self._random = f"{backend} cannot open it ({err.reason})", "pyav", False
            if self._path not in _FELL_BACK:
                _FELL_BACK.add(self._path)
                log.warning("%s: %s; reading it with PyAV", self._path, self.fallback)
        if self.backend != "pyav" and verify:
            self._verify(seek, num_threads)
        if self.backend == "pyav":
            self.declared = self._src.declared
        if self._src.num_frames <= 0:
            self.close()
            raise VideoDecodeError(self._path, "no decodable frames")

    def _verify(self, seek: str, num_threads: int) -> None:
        """The self-check: on any difference from PyAV, read this file with PyAV."""
        st = os.stat(self._path)
        key = (self._path, st.st_size, st.st_mtime_ns, self.backend, seek)
        if key not in _CHECKED:
            _CHECKED[key] = self._call(lambda: self._compare_with_pyav(num_threads))
            if _CHECKED[key][0] and self._path not in _FELL_BACK:
                _FELL_BACK.add(self._path)
                log.warning("%s: %s; reading it with PyAV", self._path, _CHECKED[key][0])
        self.fallback, self.declared = _CHECKED[key]
        if self.fallback:
            self.close()
            self.backend, self._random = "pyav", False
            self._src = self._call(lambda: _PyAVSource(self._path, num_threads))

    def _compare_with_pyav(self, num_threads: int) -> tuple[str, int | None]:
        """("", header count) when the source agrees with PyAV's sequential decode, else (what differs, ...)."""
        try:
            ref = _PyAVSource(self._path, num_threads)
        except (VideoDecodeError, self._av_errors()) as err:
            return f"PyAV cannot open it ({getattr(err, 'reason', None) or first_line(err)})", None
        try:
            return self._differences(ref), ref.declared
        finally:
            ref.close()

    def _differences(self, ref: _PyAVSource) -> str:
        """What differs between this reader's source and PyAV's decode ("" for nothing)."""
        if ref.num_frames != self._src.num_frames:
            return f"{self.backend} counts {self._src.num_frames} frames, PyAV decodes {ref.num_frames}"
        if ref.first_damaged is not None:  # only PyAV stops before a partial frame; the others return it as whole
            return f"packet {ref.first_damaged} is damaged (file cut short?)"
        idx = list(range(min(VERIFY_FRAMES, ref.num_frames)))
        try:
            want = ref.seq_read(idx)
        except _EndOfStream as eos:
            return f"only {eos.decoded} frames decode with PyAV"
        try:
            got = (self._src.random_read if self._random else self._src.seq_read)(idx)
        except (_EndOfStream, *self._src.errors) as err:
            return f"{self.backend} fails on the first frames ({first_line(err)})"
        for i, (a, b) in enumerate(zip(got, want)):
            if a.shape != b.shape:
                return f"{self.backend} frame {i} is {a.shape[1]}x{a.shape[0]}, PyAV's {b.shape[1]}x{b.shape[0]}"
            if not np.array_equal(a, b):
                diff = np.abs(a.astype(np.int16) - b.astype(np.int16)).mean()
                return f"{self.backend} frame {i} differs from PyAV's sequential decode (mean abs diff {diff:.2f})"
        return ""

    @staticmethod
    def _av_errors():
        import av

        return av.error.FFmpegError

    def _call(self, fn):
        """Runs ``fn``, turning decoder library errors into VideoDecodeError."""
        import av
        import cv2
        import decord

        try:
            return fn()
        except _EndOfStream as eos:
            reason = ("no decodable frames" if eos.decoded == 0 else
                      f"truncated: header says {len(self)} frames, only {eos.decoded} decode")
            raise VideoDecodeError(self._path, reason) from None
        except VideoDecodeError:
            raise
        # RuntimeError and AssertionError are what decord's Python layer raises.
        except (av.error.FFmpegError, decord.DECORDError, cv2.error, StopIteration,
                RuntimeError, AssertionError) as err:
            raise VideoDecodeError(self._path, first_line(err)) from err

    @property
    def info(self) -> VideoInfo:
        if self._shape is None:  # decord exposes no frame size: decode frame 0
            self.get_frames([0])
        return VideoInfo(self._path, len(self), self._src.fps, self._shape[1], self._shape[0])

    def __len__(self) -> int:
        return self._src.num_frames

    def get_frames(self, indices: Sequence[int]) -> np.ndarray:
        """Decodes the frames at ``indices``.

        Args:
            indices: Frame indices in any order; duplicates allowed; no negatives.

        Returns:
            ``(K, H, W, 3)`` contiguous uint8 RGB, in the order given.

        Raises:
            IndexError: An index is outside ``[0, len(self))``.
            VideoDecodeError: Decoding failed or the file ends early.
        """
        idx = np.asarray(indices)
        if idx.ndim != 1 or (idx.size and idx.dtype.kind not in "iu"):
            raise TypeError(f"indices must be a 1-D integer sequence, got {indices!r}")
        listed = max(len(self), self.declared or 0)
        bad = idx[(idx < 0) | (idx >= listed)]
        if bad.size:
            raise IndexError(f"{self._path}: frame index {int(bad[0])} out of range "
                             f"for a video of {len(self)} frames")
        if idx.size and idx.max() >= len(self):
            raise VideoDecodeError(self._path, f"truncated: header says {self.declared} frames, "
                                               f"only {len(self)} decode (frame {int(idx.max())} asked)")
        if idx.size == 0:
            return np.empty((0, self.info.height, self.info.width, 3), np.uint8)
        uniq, inverse = np.unique(idx, return_inverse=True)
        read = self._src.random_read if self._random else self._src.seq_read
        frames = np.stack(self._call(lambda: read(uniq.tolist())))
        if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
            raise VideoDecodeError(self._path, f"decoder gave {frames.dtype} {frames.shape}")
        self._shape = frames.shape[1:3]
        return np.ascontiguousarray(frames[inverse.reshape(-1)])

    def read_all(self) -> np.ndarray:
        """Sequentially decodes every frame up to EOF, whatever the header says."""
        frames = self._call(lambda: self._src.seq_read(_TO_EOF))
        if not frames:
            raise VideoDecodeError(self._path, "no decodable frames")
        return np.stack(frames)

    def close(self) -> None:
        if self._src is not None:
            self._src.close()

    def __enter__(self) -> VideoReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def read_frames(path: str | os.PathLike, indices: Sequence[int], *,
                backend: str = "auto", seek: str = "auto") -> np.ndarray:
    """Opens ``path`` and returns ``get_frames(indices)``: (K, H, W, 3) RGB uint8."""
    with VideoReader(path, backend=backend, seek=seek) as reader:
        return reader.get_frames(indices)


def read_all_frames(path: str | os.PathLike, *, backend: str = "pyav") -> np.ndarray:
    """Reference decode: every frame in order up to EOF, as (T, H, W, 3) RGB uint8."""
    with VideoReader(path, backend=backend, seek="never") as reader:
        return reader.read_all()


def probe_video(path: str | os.PathLike, *, backend: str = "auto") -> VideoInfo:
    """Returns frame count, fps and size; decodes frame 0, so it also checks that."""
    with VideoReader(path, backend=backend) as reader:
        return reader.info
