"""Write UCF101-format split lists for a class-per-folder video dataset.

Usage:
    actionrec-make-splits ROOT [--test-fraction 0.3 --seed 0 --split 1 --out-dir DIR]
    (or: python data_prep/make_splits.py ROOT ...)

UCF-named files (v_<Class>_gXX_cYY.avi) are split by group so that no group is
in both train and test; other names get a seeded per-class (stratified) split.
Writes classInd.txt, trainlistNN.txt and testlistNN.txt (default into
ROOT/ucfTrainTestlist), which actionrec.data.splits.load_split then reads.

Exit status: 0 when the lists were written, 2 on an error (one ``error:`` line).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from actionrec.cli import doc_parser, run_command
from actionrec.data.splits import (
    CLASS_INDEX_NAME,
    SPLIT_DIR_NAMES,
    SplitError,
    VideoSample,
    make_group_split,
    parse_ucf_group,
    read_class_index,
    scan_class_folders,
    write_split_files,
)
from actionrec.errors import UsageError


def main(argv: list[str] | None = None) -> int:
    return run_command(parse_args, run, argv)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = doc_parser(__doc__)
    parser.add_argument("root", type=Path, help="dataset root: ROOT/<Class>/<video>")
    parser.add_argument("--test-fraction", type=float, default=0.3,
                        help="share of groups (or videos) for test (default: 0.3)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    parser.add_argument("--split", type=int, default=1, help="split number NN in trainlistNN.txt (default: 1)")
    parser.add_argument("--out-dir", type=Path, default=None,
                        help=f"where to write the lists (default: ROOT/{SPLIT_DIR_NAMES[0]})")
    parser.add_argument("--force", action="store_true", help="overwrite existing split lists")
    return parser.parse_args(argv)


def run(args: argparse.Namespace) -> int:
    """Scan ``args.root``, split, write the lists and print the counts per class; the exit status."""
    videos = scan_class_folders(args.root)
    _refuse_non_utf8_names(videos)
    out_dir = args.out_dir if args.out_dir is not None else args.root / SPLIT_DIR_NAMES[0]
    videos = _keep_existing_class_order(videos, out_dir / CLASS_INDEX_NAME, args)
    train, test = make_group_split(videos, test_fraction=args.test_fraction, seed=args.seed)
    written = write_split_files(args.root, tuple(videos), train, test, split=args.split, out_dir=out_dir)
    by_group = all(parse_ucf_group(p.name) for paths in videos.values() for p in paths)
    print(f"split {args.split} written to {written} ({'by UCF group' if by_group else 'stratified per class'})")
    _print_counts(tuple(videos), train, test)
    return 0


def _refuse_non_utf8_names(videos: dict[str, list[Path]]) -> None:
    for path in (p for paths in videos.values() for p in paths):
        try:
            str(path).encode("utf-8")
        except UnicodeEncodeError:
            raise UsageError(f"{os.fsencode(path)!r}: file name is not valid UTF-8; rename it "
                             "(split lists are UTF-8 text)") from None


def _keep_existing_class_order(videos: dict[str, list[Path]], class_file: Path,
                               args: argparse.Namespace) -> dict[str, list[Path]]:
    """``videos`` in the label order of an existing ``classInd.txt`` with the same classes.

    Refuses silent overwrites (without ``--force``): changing a split after results were reported
    on it makes those results incomparable; a different classInd would relabel other splits.
    """
    classes = tuple(videos)
    existing: tuple[str, ...] = ()
    if class_file.is_file():
        try:
            existing = read_class_index(class_file)
        except SplitError:
            pass  # malformed: reported as a conflict below, replaced with --force
    if set(existing) == set(classes):
        # Keep the existing label order so other splits stay valid.
        classes = existing
        videos = {name: videos[name] for name in classes}
    conflicts = [class_file.parent / f"{kind}list{args.split:02d}.txt" for kind in ("train", "test")]
    conflicts = [p for p in conflicts if p.exists()]
    if class_file.exists() and existing != classes:
        conflicts.append(class_file)
    if conflicts and not args.force:
        names = ", ".join(str(p) for p in conflicts)
        raise UsageError(f"split files already exist: {names}; pass --force to overwrite")
    return videos


def _print_counts(classes: tuple[str, ...], train: list[VideoSample], test: list[VideoSample]) -> None:
    width = max(len(name) for name in classes)
    print(f"{'class':<{width}}  train  test")
    for label, name in enumerate(classes):
        n_train = sum(s.label == label for s in train)
        n_test = sum(s.label == label for s in test)
        print(f"{name:<{width}}  {n_train:>5}  {n_test:>4}")
    print(f"{'total':<{width}}  {len(train):>5}  {len(test):>4}")
