"""Re-encode a dataset to seek-friendly H.264 MP4 (short side 256, fixed key-frame interval).

Usage:
    actionrec-transcode SRC DST [--short-side 256 --gop 16 --fps 25 --workers 8]
    actionrec-check-videos DST            # then verify the result
    (or: python data_prep/transcode.py SRC DST ...)

Every video under SRC is written to DST with the same relative path and a .mp4 suffix, using
PyAV (its wheels bundle FFmpeg with libx264; without it the MPEG-4 Part 2 encoder is used, see
actionrec/data/transcode.py). Split lists (classInd.txt, trainlistNN.txt, testlistNN.txt) are
copied with video entries renamed to .mp4; entries whose source could not be decoded at all are
left out (listed at the end), so DST trains without missing files.

Outputs are written to a temp file and renamed, so an interrupted run can be restarted: files
already in DST are skipped unless --overwrite. Audio is dropped.

Exit status: 0 when every video was written, 1 when some failed, 2 on a usage error.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
from dataclasses import asdict
from pathlib import Path

from tqdm import tqdm

from actionrec.cli import doc_parser, run_command
from actionrec.data.check import find_videos, rewrite_split_lists
from actionrec.data.parallel import map_unordered
from actionrec.data.splits import find_split_dir
from actionrec.data.transcode import TranscodeResult, pick_codec, transcode_pair
from actionrec.errors import UsageError


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = doc_parser(__doc__)
    p.add_argument("src", type=Path, help="dataset root: SRC/<Class>/<video>")
    p.add_argument("dst", type=Path, help="output root (created)")
    p.add_argument("--short-side", type=int, default=256, help="scale the short side to this (0: keep size; default: 256)")
    p.add_argument("--gop", type=int, default=16, help="frames between key frames (default: 16)")
    p.add_argument("--fps", type=float, default=None, help="output frame rate (default: keep the source's)")
    p.add_argument("--crf", type=int, default=23, help="x264 quality, lower is better and larger (default: 23)")
    p.add_argument("--preset", default="veryfast", help="x264 speed preset (default: veryfast)")
    p.add_argument("--codec", choices=["libx264", "mpeg4"], default=None, help="default: libx264 when available")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="parallel encodes; 0 runs inline (default: all cores)")
    p.add_argument("--timeout", type=float, default=1800.0, help="seconds one file may take (default: 1800)")
    p.add_argument("--overwrite", action="store_true", help="re-encode files that already exist in DST")
    p.add_argument("--report", type=Path, default=None, help="also write a JSON report of every file here")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    return run_command(parse_args, run, argv)


def run(args: argparse.Namespace) -> int:
    """Transcode every video of ``args.src`` into ``args.dst``, copy the split lists; the exit status."""
    src, dst = args.src.expanduser().absolute(), args.dst.expanduser().absolute()
    targets = _targets(src, dst, args)
    codec = args.codec or pick_codec()
    if codec != "libx264":
        print("libx264 is not available in this PyAV build: using MPEG-4 Part 2 (larger files)", file=sys.stderr)
    results = _transcode_all(src, dst, targets, codec, args)
    failed = [r for r in results if r.status == "failed"]
    _copy_split_lists(src, dst, failed)
    if args.report is not None:
        args.report.parent.mkdir(parents=True, exist_ok=True)
        args.report.write_text(json.dumps([asdict(r) for r in results], indent=1) + "\n")
    counts = {s: sum(r.status == s for r in results) for s in ("ok", "partial", "skipped", "failed")}
    print(f"{len(results)} videos: " + ", ".join(f"{n} {s}" for s, n in counts.items()) + f" ({codec}) -> {dst}")
    for r in results:
        if r.status in ("partial", "failed"):
            print(f"  {r.status:<8} {Path(r.src).relative_to(src)}: {r.reason}")
    return 1 if failed else 0


def _targets(src: Path, dst: Path, args: argparse.Namespace) -> dict[Path, Path]:
    """Output path (relative, .mp4) to source path (relative) for every video under ``src``."""
    if dst == src or src in dst.parents:
        raise UsageError(f"DST {dst} must not be inside SRC {src}")
    if args.gop < 1 or args.short_side < 0 or (args.fps is not None and args.fps <= 0):
        raise UsageError("--gop must be >= 1, --short-side >= 0 and --fps > 0")
    videos, _ = find_videos(src)
    if not videos:
        raise UsageError(f"no video files under {src}")
    targets: dict[Path, Path] = {}
    for rel in videos:
        out = rel.with_suffix(".mp4")
        if out in targets:
            raise UsageError(f"{rel} and {targets[out]} would both become {out}; rename one first")
        targets[out] = rel
    return targets


def _transcode_all(src: Path, dst: Path, targets: dict[Path, Path], codec: str,
                   args: argparse.Namespace) -> list[TranscodeResult]:
    # One encoder thread per file when files run in parallel: processes already fill the cores.
    fn = functools.partial(transcode_pair, short_side=args.short_side, gop=args.gop, fps=args.fps, crf=args.crf,
                           preset=args.preset, codec=codec, threads=1 if args.workers > 1 else 0,
                           overwrite=args.overwrite)
    pairs = [(str(src / rel), str(dst / out)) for out, rel in targets.items()]
    results: list[TranscodeResult] = []
    with tqdm(total=len(pairs), desc="transcoding", unit="video", disable=not sys.stderr.isatty()) as bar:
        for res in map_unordered(fn, pairs, workers=args.workers, timeout=args.timeout):
            results.append(res.value if res.error is None else
                           TranscodeResult(res.item[0], res.item[1], "failed", f"encoder {res.error}", codec=codec))
            bar.update(1)
    return sorted(results, key=lambda r: r.src)


def _copy_split_lists(src: Path, dst: Path, failed: list[TranscodeResult]) -> None:
    """The split lists of ``src`` into ``dst``, renamed to .mp4, without the videos that failed."""
    split_dir = find_split_dir(src)
    if split_dir is None:
        print(f"no split lists in {src}: write them with data_prep/make_splits.py {dst}")
        return
    gone = {Path(r.src).relative_to(src).as_posix() for r in failed}
    dropped = rewrite_split_lists(split_dir, dst / split_dir.relative_to(src), drop=gone, rename_ext=".mp4")
    for name, n in dropped.items():
        if n:
            print(f"{name}: left out {n} entries whose source could not be decoded")
