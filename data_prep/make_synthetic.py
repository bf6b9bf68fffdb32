"""Generate the synthetic UCF101-style dataset (real .avi/.mp4 files plus split lists).

Usage:
    python data_prep/make_synthetic.py OUT_DIR [--groups 10 --clips-per-group 6 ...]

Re-running with the same parameters is a no-op; different parameters rebuild
OUT_DIR atomically (it is only replaced if it holds nothing but generated files).
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

try:
    import actionrec  # noqa: F401
except ImportError:  # running from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from actionrec.data.splits import load_split
from actionrec.data.synthetic import ensure_synthetic_dataset


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out_dir", type=Path, help="folder to create (UCF101 layout)")
    parser.add_argument("--groups", type=int, default=10, help="groups per class (default: 10)")
    parser.add_argument("--clips-per-group", type=int, default=6, help="clips per group and class (default: 6)")
    parser.add_argument("--width", type=int, default=160, help="frame width, even (default: 160)")
    parser.add_argument("--height", type=int, default=120, help="frame height, even (default: 120)")
    parser.add_argument("--min-frames", type=int, default=6, help="shortest video (default: 6)")
    parser.add_argument("--max-frames", type=int, default=64, help="longest video (default: 64)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    parser.add_argument("--mp4-fraction", type=float, default=0.25,
                        help="share of videos written as .mp4 instead of .avi (default: 0.25)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    start = time.perf_counter()
    try:
        root = ensure_synthetic_dataset(
            args.out_dir,
            num_groups=args.groups,
            clips_per_group=args.clips_per_group,
            width=args.width,
            height=args.height,
            min_frames=args.min_frames,
            max_frames=args.max_frames,
            seed=args.seed,
            mp4_fraction=args.mp4_fraction,
            progress=not args.no_progress,
        )
    except (ValueError, FileExistsError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    split = load_split(root)
    print(f"dataset:  {root} ({time.perf_counter() - start:.1f}s)")
    print(f"classes:  {len(split.classes)}: {', '.join(split.classes)}")
    print(f"videos:   {len(split.train) + len(split.test)} ({len(split.train)} train, {len(split.test)} test)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
