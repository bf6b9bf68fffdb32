"""Find broken videos in a dataset before training does.

Usage:
    actionrec-check-videos ROOT [--clip-len 16 --workers 8 --report video_check.json]
    actionrec-check-videos ROOT --quarantine /data/quarantine   # move bad files aside
    (or: python data_prep/check_videos.py ROOT ...)

Every video under ROOT is decoded in a worker process and classified (see
actionrec/data/check.py): ok, unreadable, zero_frames, truncated, seek_unreliable,
too_short. A summary table goes to stdout; the full report to --report (JSON) and the same
name with .csv. A file whose decoder hangs is stopped after --timeout seconds and a decoder
crash is caught; both count as unreadable.

--quarantine DIR moves the bad files (unreadable, zero_frames, truncated, or the statuses in
--quarantine-status) to DIR with their relative paths, and removes their lines from the split
lists after saving the original lists under DIR. Nothing is deleted.

Exit status: 0 when no file is bad, 1 when some are (moved or not), 2 on a usage error.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
from pathlib import Path

from tqdm import tqdm

from actionrec.cli import doc_parser, run_command
from actionrec.data.check import (
    BAD_STATUSES,
    STATUSES,
    VideoCheck,
    check_video,
    find_videos,
    format_table,
    quarantine,
    write_report,
)
from actionrec.data.parallel import map_unordered
from actionrec.errors import UsageError


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = doc_parser(__doc__)
    p.add_argument("root", type=Path, help="dataset root: ROOT/<Class>/<video>")
    p.add_argument("--clip-len", type=int, default=16, help="frames per clip; shorter videos are too_short (default: 16)")
    p.add_argument("--frame-interval", type=int, default=1, help="stride between clip frames (default: 1)")
    p.add_argument("--backend", choices=["auto", "decord", "pyav", "opencv"], default="auto",
                   help="training decoder, as data.backend (default: auto)")
    p.add_argument("--seek", choices=["auto", "always", "never"], default="auto", help="training seek policy (default: auto)")
    p.add_argument("--seek-samples", type=int, default=8, help="frames compared by the random-access check (default: 8)")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="worker processes; 0 checks inline (default: all cores)")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds one file may take before it counts as hung (default: 300)")
    p.add_argument("--report", type=Path, default=Path("video_check.json"),
                   help="JSON report; a .csv with the same name is written too (default: %(default)s)")
    p.add_argument("--quarantine", type=Path, default=None, help="move bad files here (outside ROOT), keeping relative paths")
    p.add_argument("--quarantine-status", default=",".join(BAD_STATUSES),
                   help="comma-separated statuses to move (default: %(default)s)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    return run_command(parse_args, run, argv)


def run(args: argparse.Namespace) -> int:
    """Check every video under ``args.root``, report, quarantine; the exit status."""
    move = _statuses_to_move(args)
    root = args.root.expanduser()
    videos, others = find_videos(root)
    if not videos:
        raise UsageError(f"no video files under {root}")
    results = _check_all(root, videos, args)
    settings = {"root": str(root.absolute()), "clip_len": args.clip_len, "frame_interval": args.frame_interval,
                "backend": args.backend, "seek": args.seek, "seek_samples": args.seek_samples}
    write_report(results, args.report, settings=settings)
    write_report(results, args.report.with_suffix(".csv"))
    print(format_table(results))
    if others:
        print(f"\n{len(others)} non-video files ignored, e.g. {others[0]}")
    print(f"\nreport: {args.report} and {args.report.with_suffix('.csv')}")
    if args.quarantine is not None:
        moved, dropped = quarantine(root, results, args.quarantine, statuses=move)
        print(f"moved {len(moved)} files to {args.quarantine}")
        for name, n in dropped.items():
            print(f"  removed {n} lines from {name} (original saved under {args.quarantine})")
    return 1 if any(r.bad for r in results) else 0


def _statuses_to_move(args: argparse.Namespace) -> list[str]:
    """The checked ``--quarantine-status`` list (``--clip-len`` and ``--frame-interval`` checked too)."""
    move = [s.strip() for s in args.quarantine_status.split(",") if s.strip()]
    unknown = [s for s in move if s not in STATUSES]
    if unknown:
        raise UsageError(f"--quarantine-status: unknown status {unknown[0]!r}; choose from {', '.join(STATUSES)}")
    if args.clip_len < 1 or args.frame_interval < 1:
        raise UsageError("--clip-len and --frame-interval must be >= 1")
    return move


def _check_all(root: Path, videos: list[Path], args: argparse.Namespace) -> list[VideoCheck]:
    """``check_video`` over every file in worker processes; results sorted by relative path."""
    check = functools.partial(check_video, clip_len=args.clip_len, frame_interval=args.frame_interval,
                              backend=args.backend, seek=args.seek, seek_samples=args.seek_samples)
    results: list[VideoCheck] = []
    items = [str(root / rel) for rel in videos]
    with tqdm(total=len(items), desc="checking", unit="video", disable=not sys.stderr.isatty()) as bar:
        for res in map_unordered(check, items, workers=args.workers, timeout=args.timeout):
            rel = str(Path(res.item).relative_to(root))
            if res.error is not None:  # the check itself hung, crashed or raised: the decoder did
                results.append(VideoCheck(rel, "unreadable", f"decoder {res.error}", seconds=round(res.seconds, 3)))
            else:
                results.append(VideoCheck(**{**res.value.__dict__, "path": rel}))
            bar.update(1)
    return sorted(results, key=lambda r: r.path)
