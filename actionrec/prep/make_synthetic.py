"""Generate the synthetic UCF101-style dataset (real .avi/.mp4 files plus split lists).

Usage:
    actionrec-make-synthetic OUT_DIR [--groups 10 --clips-per-group 6 ...]
    (or: python data_prep/make_synthetic.py OUT_DIR ...)

Re-running with the same parameters is a no-op; different parameters rebuild
OUT_DIR atomically (it is only replaced if it holds nothing but generated files).

Exit status: 0 when the dataset is there, 2 on an error (one ``error:`` line).
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

from actionrec.cli import doc_parser, run_command
from actionrec.data.splits import load_split
from actionrec.data.synthetic import SyntheticParams, ensure_synthetic_dataset

# Command-line option: (SyntheticParams field, help). Defaults and types come from SyntheticParams.
OPTIONS = {
    "--groups": ("num_groups", "groups per class"),
    "--clips-per-group": ("clips_per_group", "clips per group and class"),
    "--width": ("width", "frame width, even"),
    "--height": ("height", "frame height, even"),
    "--min-frames": ("min_frames", "shortest video"),
    "--max-frames": ("max_frames", "longest video"),
    "--seed": ("seed", "random seed"),
    "--mp4-fraction": ("mp4_fraction", "share of videos written as .mp4 instead of .avi"),
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = doc_parser(__doc__)
    parser.add_argument("out_dir", type=Path, help="folder to create (UCF101 layout)")
    defaults = SyntheticParams()
    for flag, (field, text) in OPTIONS.items():
        default = getattr(defaults, field)
        parser.add_argument(flag, dest=field, metavar=flag[2:].replace("-", "_").upper(), type=type(default),
                            default=default, help=f"{text} (default: {default})")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    return run_command(parse_args, run, argv, extra=(FileExistsError,))


def run(args: argparse.Namespace) -> int:
    """Generate (or find) the dataset and print its classes and video counts; the exit status."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    start = time.perf_counter()
    params = {field: getattr(args, field) for field, _ in OPTIONS.values()}
    root = ensure_synthetic_dataset(args.out_dir, **params, progress=not args.no_progress)
    split = load_split(root)
    print(f"dataset:  {root} ({time.perf_counter() - start:.1f}s)")
    print(f"classes:  {len(split.classes)}: {', '.join(split.classes)}")
    print(f"videos:   {len(split.train) + len(split.test)} ({len(split.train)} train, {len(split.test)} test)")
    return 0
