"""A corpus of real-world container/codec combinations, each intact and cut mid-GOP.

Every reader configuration must hand out exactly (pixel difference 0) the frames PyAV's plain
sequential decode of the same file yields, for random, TSN (segment) and dense index sets, and
must never return the damaged frames at the end of a cut file. Files are encoded with PyAV, and
with Debian's ffmpeg for packed-B-frame XviD (UCF101's own format; PyAV's FFmpeg has no libxvid).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from actionrec.data.sampling import eval_clip_indices, train_clip_indices
from actionrec.data.video_io import VideoDecodeError, VideoReader, read_all_frames

N = 96  # two periods of the index pattern; gop 12 gives 8 GOPs
READERS = [("auto", "auto"), ("decord", "auto"), ("decord", "never"), ("pyav", "auto"), ("opencv", "auto")]


def _source_frames() -> np.ndarray:
    """96 frames of 96x128: the 48-frame index pattern plus a moving textured bar (real motion)."""
    from tests.conftest import index_frame

    rng = np.random.default_rng(5)
    texture = rng.integers(0, 256, (32, 256, 3), dtype=np.uint8)
    frames = np.full((N, 96, 128, 3), 40, np.uint8)
    for i in range(N):
        frames[i, :64, :64] = index_frame(i % 48)
        frames[i, 64:, :] = texture[:, (3 * i) % 128:(3 * i) % 128 + 128]
    return frames


def _encode(path: Path, frames: np.ndarray, codec: str, *, fmt: str | None = None, b_frames: int = 2,
            gop: int = 12, options: dict | None = None, container_options: dict | None = None,
            pts: list[int] | None = None, time_base: Fraction | None = None) -> Path:
    with av.open(str(path), "w", format=fmt, options=container_options or {}) as container:
        stream = container.add_stream(codec, rate=25, options=options or {})
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        stream.codec_context.max_b_frames = b_frames
        stream.codec_context.gop_size = gop
        if time_base is not None:
            stream.time_base = stream.codec_context.time_base = time_base
        for i, rgb in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            if pts is not None:
                frame.pts, frame.time_base = pts[i], time_base
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return path


def _xvid_packed(path: Path, frames: np.ndarray) -> Path | None:
    """XviD with B-frames in AVI: libxvid packs each B-frame with its P-frame ("packed bitstream").

    Returns None without ffmpeg (outside CI, whose .ci/run installs it).
    """
    ffmpeg = shutil.which("ffmpeg")
    if ffmpeg is None:
        if os.environ.get("CI"):
            pytest.fail("ffmpeg is missing: .ci/run installs it with apt-get")
        return None
    h, w = frames.shape[1:3]
    subprocess.run([ffmpeg, "-v", "error", "-y", "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{w}x{h}",
                    "-r", "25", "-i", "-", "-c:v", "libxvid", "-bf", "2", "-g", "12", "-q:v", "4",
                    str(path)], input=frames.tobytes(), check=True)
    return path


def _cut_head(path: Path, frac: float, packet: int = 1) -> Path:
    """Drops the first ``frac`` of the bytes: the stream then starts on a non-key frame."""
    data = path.read_bytes()
    out = path.with_name("head_" + path.name)
    out.write_bytes(data[int(len(data) * frac) // packet * packet:])
    return out


def _build(kind: str, folder: Path, frames: np.ndarray) -> Path | None:
    p = folder / kind
    if kind == "mpeg2_ps_midgop.mpg":  # broadcast capture cut anywhere: open GOPs, B-frames
        return _cut_head(_encode(p, frames, "mpeg2video", fmt="mpeg"), 0.3)
    if kind == "mpeg2_ts.ts":  # decord's own sequential decode returns frame i+12 here
        return _encode(p, frames, "mpeg2video", fmt="mpegts")
    if kind == "mpeg2_ts_midgop.ts":
        return _cut_head(_encode(p, frames, "mpeg2video", fmt="mpegts"), 0.3, packet=188)
    if kind == "h264_bframes.avi":
        return _encode(p, frames, "libx264", options={"bf": "2", "g": "12"})
    if kind == "xvid_packed.avi":
        return _xvid_packed(p, frames)
    if kind == "h264.mkv":
        return _encode(p, frames, "libx264", options={"bf": "2", "g": "12"})
    if kind == "mpeg4_bframes.mkv":
        return _encode(p, frames, "mpeg4")
    if kind == "vp8.webm":
        return _encode(p, frames, "libvpx", b_frames=0)
    if kind == "vp9.webm":
        return _encode(p, frames, "libvpx-vp9", b_frames=0)
    if kind == "h264.mov":
        return _encode(p, frames, "libx264", options={"bf": "2", "g": "12"},
                       container_options={"movflags": "faststart"})
    if kind == "h264_vfr.mp4":  # variable frame rate: irregular timestamps (1/1000 s)
        steps = np.random.default_rng(1).integers(25, 70, N)
        return _encode(p, frames, "libx264", options={"bf": "2", "g": "12"}, time_base=Fraction(1, 1000),
                       pts=np.concatenate([[0], np.cumsum(steps)[:-1]]).tolist(),
                       container_options={"movflags": "faststart"})
    raise AssertionError(kind)


KINDS = ["mpeg2_ps_midgop.mpg", "mpeg2_ts.ts", "mpeg2_ts_midgop.ts", "h264_bframes.avi", "xvid_packed.avi",
         "h264.mkv", "mpeg4_bframes.mkv", "vp8.webm", "vp9.webm", "h264.mov", "h264_vfr.mp4"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict[str, Path]:
    folder, frames = tmp_path_factory.mktemp("corpus"), _source_frames()
    built = {kind: _build(kind, folder, frames) for kind in KINDS}
    return {kind: path for kind, path in built.items() if path is not None}


def _need(corpus: dict, kind: str) -> Path:
    if kind not in corpus:
        pytest.skip(f"{kind} needs Debian's ffmpeg (apt-get install ffmpeg)")
    return corpus[kind]


def _plain_decode(path: Path) -> np.ndarray:
    """The reference: PyAV's plain sequential decode, every frame FFmpeg outputs."""
    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


def _index_sets(n: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(n)
    return {
        "random": rng.integers(0, n, 20),  # unsorted, with duplicates
        "tsn": train_clip_indices(n, 8, mode="segment", rng=rng),
        "tsn_eval": eval_clip_indices(n, 8, 3, mode="segment").reshape(-1),
        "dense": train_clip_indices(n, 16, mode="dense", rng=rng, frame_interval=2),
        "ends": np.array([n - 1, 0, n - 1, 1]),
    }


def test_corpus_is_what_it_claims(corpus):
    """The hard cases are really there: B-frames, mid-GOP starts, packed bitstream, VFR."""
    def packets(kind):
        with av.open(str(corpus[kind])) as c:
            return [p for p in c.demux(video=0) if p.size]

    for kind in ("mpeg2_ps_midgop.mpg", "mpeg2_ts_midgop.ts"):
        assert not packets(kind)[0].is_keyframe, kind  # starts on a non-key frame
        assert len(_plain_decode(corpus[kind])) < len(packets(kind)) < N  # leading pictures do not decode
    for kind in ("h264_bframes.avi", "h264.mkv", "mpeg4_bframes.mkv", "h264.mov", "mpeg2_ts.ts"):
        with av.open(str(corpus[kind])) as c:
            pts = [p.pts for p in c.demux(video=0) if p.size]
        if kind.endswith(".avi"):  # AVI has no pts: B-frames show as out-of-order decode timestamps
            continue
        assert any(b < a for a, b in zip(pts, pts[1:])), kind  # frames reordered: B-frames
    if "xvid_packed.avi" in corpus:
        xvid = packets("xvid_packed.avi")
        assert min(p.size for p in xvid) <= 8  # the N-VOP placeholders of a packed bitstream
    with av.open(str(corpus["h264_vfr.mp4"])) as c:
        steps = np.diff([f.pts for f in c.decode(video=0)])
    assert len(set(steps.tolist())) > 10  # variable frame rate


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("backend, seek", READERS)
def test_intact_files_are_frame_exact(corpus, kind, backend, seek):
    reference = _plain_decode(_need(corpus, kind))
    with VideoReader(corpus[kind], backend=backend, seek=seek) as reader:
        assert len(reader) == len(reference), reader.fallback
        for name, idx in _index_sets(len(reference)).items():
            got = reader.get_frames(idx)
            assert np.array_equal(got, reference[idx]), (name, reader.backend, reader.fallback)


def test_auto_reads_the_hard_files_with_pyav_and_seeks_only_in_verified_mp4(corpus):
    with VideoReader(corpus["h264_vfr.mp4"]) as reader:
        assert reader.backend == "decord" and reader._random  # closed-GOP IDR MP4: random access
    for kind in ("mpeg2_ts.ts", "xvid_packed.avi", "mpeg2_ps_midgop.mpg", "vp9.webm"):
        if kind not in corpus:
            continue
        with VideoReader(corpus[kind]) as reader:
            assert reader.backend == "pyav" and not reader._random, kind


def test_self_check_catches_decords_shifted_transport_stream(corpus, tmp_path, caplog):
    """decord decodes this TS sequentially starting 12 frames late; the self-check sees it at open."""
    import decord
    from tests.conftest import decode_index

    path = tmp_path / "fresh.ts"  # a file this process has not checked yet
    shutil.copy(corpus["mpeg2_ts.ts"], path)
    reference = _plain_decode(path)
    vr = decord.VideoReader(str(path), num_threads=1)
    raw = [vr.next().asnumpy() for _ in range(3)]
    # What training would have seen without the check: frame i + 12 for index i.
    assert [decode_index(f[:64, :64]) for f in raw] == [12, 13, 14]
    with VideoReader(path, backend="decord", seek="never", verify=False) as reader:
        assert decode_index(reader.get_frames([0])[0][:64, :64]) == 12
    caplog.set_level("WARNING", logger="actionrec.data.video_io")
    for _ in range(2):
        with VideoReader(path, backend="decord", seek="never") as reader:
            assert reader.backend == "pyav" and "frame 0 differs" in reader.fallback
            np.testing.assert_array_equal(reader.get_frames([0, 40]), reference[[0, 40]])
    logged = [r for r in caplog.records if "fresh.ts" in r.getMessage()]
    assert len(logged) == 1 and "reading it with PyAV" in logged[0].getMessage()  # once per file


# Where a cut lands: the middle of a GOP (8 GOPs of 12 frames).
CUT_AT = 0.55


@pytest.fixture(scope="module")
def cut_corpus(corpus, tmp_path_factory) -> dict[str, Path]:
    folder, out = tmp_path_factory.mktemp("cut"), {}
    for kind, path in corpus.items():
        data = path.read_bytes()
        out[kind] = folder / kind
        out[kind].write_bytes(data[: int(len(data) * CUT_AT)])
    return out


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("backend, seek", READERS)
def test_truncated_files_never_give_a_wrong_or_partial_frame(corpus, cut_corpus, kind, backend, seek):
    path = _need(cut_corpus, kind)
    intact = _plain_decode(corpus[kind])
    try:
        whole = read_all_frames(path)
    except VideoDecodeError:
        whole = np.empty((0,) + intact.shape[1:], np.uint8)
    m = len(whole)
    # Whole frames only: a cut file's frames are the intact file's (same FFmpeg, same packets).
    np.testing.assert_array_equal(whole, intact[:m])
    assert m < len(intact)
    try:
        reader = VideoReader(path, backend=backend, seek=seek)
    except VideoDecodeError as err:
        assert str(err).startswith(str(path))  # unopenable (a cut MOV/MP4 can lose its index)
        return
    with reader:
        ok = np.arange(m)
        for idx in _index_sets(m).values() if m else []:
            np.testing.assert_array_equal(reader.get_frames(idx), whole[idx])
        beyond = np.arange(m, len(reader))
        if beyond.size:
            with pytest.raises(VideoDecodeError, match="truncated") as err:
                reader.get_frames(np.r_[ok[:1], beyond[:1]])
            assert str(err.value).startswith(str(path))
