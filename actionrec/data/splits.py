"""Dataset folder layout and train/test split lists in UCF101's format.

A dataset root holds one folder per class with the videos inside, plus split
lists in ``root/ucfTrainTestlist`` (UCF101's name), ``root/splits``, or the
root itself::

    classInd.txt      "1 ApplyEyeMakeup"                               (1-based)
    trainlist01.txt   "ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi 1"  (label optional)
    testlist01.txt    "ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi"    (label optional)

Labels in ``VideoSample`` are 0-based class indices; the files use UCF's 1-based ones.
"""

from __future__ import annotations

import logging
import posixpath
import re
import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PureWindowsPath

import numpy as np

from actionrec.errors import UserError

logger = logging.getLogger(__name__)

VIDEO_EXTENSIONS = (".avi", ".mp4", ".mkv", ".webm", ".mov", ".mpg", ".mpeg", ".m4v", ".flv", ".wmv", ".3gp", ".ogv")
SPLIT_DIR_NAMES = ("ucfTrainTestlist", "splits")
CLASS_INDEX_NAME = "classInd.txt"

# UCF101 names videos v_<Class>_g<group>_c<clip>; the class part can differ in case
# from the folder (HandstandPushups/v_HandStandPushups_...), so it is not checked.
_UCF_NAME = re.compile(r"^v_(?P<cls>.+)_(?P<group>g\d+)_(?P<clip>c\d+)\.[A-Za-z0-9]+$")
SPLIT_LIST_FILE = re.compile(r"^(train|test)list\d+\.txt$")


class SplitError(UserError, ValueError):
    """A class index, split list or dataset folder that cannot be used; the message names file and line."""


@dataclass(frozen=True)
class VideoSample:
    """One video and its class.

    Attributes:
        path: Absolute path to the video file.
        label: 0-based class index.
    """

    path: Path
    label: int


@dataclass(frozen=True)
class DatasetSplit:
    """Class names and the train/test videos of one split.

    Attributes:
        classes: Class names; position is the label.
        train: Training videos.
        test: Test videos.
    """

    classes: tuple[str, ...]
    train: tuple[VideoSample, ...]
    test: tuple[VideoSample, ...]


def _lines(path: Path) -> Iterable[tuple[int, str]]:
    """(1-based line number, stripped line) for non-blank lines; CRLF or LF."""
    try:
        text = path.read_text(encoding="utf-8-sig")  # -sig: tolerate a BOM from Windows editors
    except UnicodeDecodeError as e:
        raise SplitError(f"{path}: not a text file (byte {e.start} is not UTF-8)") from None
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if line:
            yield number, line


def parse_list_line(line: str) -> tuple[str, str | None, str]:
    """Split a split-list line into (path part, label text or None, line ending).

    "Class/v.avi 3\r\n" gives ("Class/v.avi", "3", "\r\n"); a line without a label gives None.
    """
    body = line.rstrip("\r\n")
    parts = body.strip().rsplit(None, 1)
    if len(parts) == 2 and parts[1].lstrip("+-").isdigit():
        return parts[0], parts[1], line[len(body):]
    return body.strip(), None, line[len(body):]


def read_class_index(path: str | Path) -> tuple[str, ...]:
    """Read ``classInd.txt`` ("<index> <name>" per line, indices 1..N).

    Args:
        path: The class index file.

    Returns:
        Class names ordered by index, so position i holds label i (0-based).

    Raises:
        SplitError: A malformed line, a repeated index or name, or indices that
            are not exactly 1..N; the message names file and line.
    """
    path = Path(path)
    by_index: dict[int, str] = {}
    seen: dict[str, int] = {}
    for number, line in _lines(path):
        parts = line.split()
        if len(parts) != 2 or not parts[0].isdigit():
            raise SplitError(f"{path}:{number}: expected '<index> <class name>', got {line!r}")
        index, name = int(parts[0]), parts[1]
        if index in by_index:
            raise SplitError(f"{path}:{number}: index {index} repeated")
        if name in seen:
            raise SplitError(f"{path}:{number}: class {name!r} already listed on line {seen[name]}")
        by_index[index] = name
        seen[name] = number
    if not by_index:
        raise SplitError(f"{path}: no classes listed")
    if sorted(by_index) != list(range(1, len(by_index) + 1)):
        missing = sorted(set(range(1, max(by_index) + 1)) - set(by_index))
        raise SplitError(f"{path}: indices must be 1..{len(by_index)} without gaps; missing {missing}")
    return tuple(by_index[i] for i in range(1, len(by_index) + 1))


def _safe_relative(entry: str, where: str) -> str:
    """Normalised POSIX relative path, refusing absolute paths and escapes from the root.

    The check is lexical on purpose: resolving symlinks would reject the common
    setup where class folders are links into another disk.
    """
    entry = entry.replace("\\", "/")
    if entry.startswith("/") or PureWindowsPath(entry).drive:
        raise SplitError(f"{where}: absolute path {entry!r} not allowed; paths are relative to the dataset root")
    norm = posixpath.normpath(entry)
    if norm == ".." or norm.startswith("../"):
        raise SplitError(f"{where}: path {entry!r} points outside the dataset root")
    return norm


def read_split_file(
    path: str | Path,
    root: str | Path,
    classes: Sequence[str],
    *,
    labelled: bool | None = None,
) -> list[VideoSample]:
    """Read a train/test list: "<Class>/<file> [<1-based label>]" per line.

    The class comes from the folder part of each entry; a label, if present,
    must agree with it.

    Args:
        path: The list file.
        root: Dataset root the entries are relative to.
        classes: Class names; position is the 0-based label.
        labelled: True requires a label on every line, False forbids labels,
            None accepts either.

    Returns:
        Samples in file order, with absolute paths.

    Raises:
        SplitError: Malformed line, unknown class, label mismatch, a file name without a
            video extension, or a path that is absolute or escapes ``root``; the message
            names file and line.
        FileNotFoundError: A listed video does not exist (file and line named).
    """
    path = Path(path)
    root = Path(root).absolute()
    class_to_label = {name: i for i, name in enumerate(classes)}
    samples = []
    for number, line in _lines(path):
        where = f"{path}:{number}"
        entry, label_text, _ = parse_list_line(line)
        label = int(label_text) if label_text is not None else None
        if labelled is True and label is None:
            raise SplitError(f"{where}: expected '<path> <label>', got {line!r}")
        if labelled is False and label is not None:
            raise SplitError(f"{where}: expected a path without label, got {line!r}")
        rel = _safe_relative(entry, where)
        if "/" not in rel:
            raise SplitError(f"{where}: expected '<class folder>/<video file>', got {entry!r}")
        if posixpath.splitext(rel)[1].lower() not in VIDEO_EXTENSIONS:
            raise SplitError(f"{where}: {entry!r} is not a video file (expected {', '.join(VIDEO_EXTENSIONS)})")
        class_name = rel.split("/", 1)[0]
        if class_name not in class_to_label:
            raise SplitError(f"{where}: class {class_name!r} is not in the class index")
        expected = class_to_label[class_name]
        if label is not None and label != expected + 1:
            raise SplitError(
                f"{where}: label {label} disagrees with folder {class_name!r} (index {expected + 1})"
            )
        video = root / rel
        if not video.is_file():
            raise FileNotFoundError(f"{where}: video not found: {video}")
        samples.append(VideoSample(path=video, label=expected))
    return samples


def _is_video(path: Path) -> bool:
    return path.is_file() and not path.name.startswith(".") and path.suffix.lower() in VIDEO_EXTENSIONS


def scan_class_folders(root: str | Path) -> dict[str, list[Path]]:
    """List videos per class folder.

    Args:
        root: Dataset root with one sub-folder per class.

    Returns:
        Class name to sorted absolute video paths, classes in sorted order.
        Split folders (``ucfTrainTestlist``, ``splits``) and hidden entries are skipped.

    Raises:
        FileNotFoundError: ``root`` does not exist.
        SplitError: No class folders, or a class folder without videos.
    """
    root = Path(root).absolute()
    if not root.is_dir():
        raise FileNotFoundError(f"dataset folder not found: {root}")
    folders = sorted(
        p for p in root.iterdir()
        if p.is_dir() and not p.name.startswith(".") and p.name not in SPLIT_DIR_NAMES
    )
    if not folders:
        raise SplitError(f"no class folders in {root}; expected {root}/<ClassName>/<video>")
    videos = {}
    for folder in folders:
        files = sorted(p for p in folder.iterdir() if _is_video(p))
        if not files:
            raise SplitError(f"class folder {folder} has no videos ({', '.join(VIDEO_EXTENSIONS)})")
        videos[folder.name] = files
    return videos


def _has_split_files(folder: Path) -> bool:
    return (folder / CLASS_INDEX_NAME).is_file() or any(
        SPLIT_LIST_FILE.match(p.name) for p in folder.iterdir() if p.is_file()
    )


def find_split_dir(root: str | Path) -> Path | None:
    """Find the folder holding split lists.

    Args:
        root: Dataset root.

    Returns:
        ``root/ucfTrainTestlist``, ``root/splits`` or ``root`` itself, the first
        that holds ``classInd.txt`` or a ``trainlistNN.txt``/``testlistNN.txt``;
        None if none does.
    """
    root = Path(root)
    for folder in [root / name for name in SPLIT_DIR_NAMES] + [root]:
        if folder.is_dir() and _has_split_files(folder):
            return folder
    return None


def parse_ucf_group(filename: str) -> str | None:
    """Group id of a UCF101-style file name.

    Args:
        filename: File name (or path) like ``v_ApplyEyeMakeup_g08_c01.avi``.

    Returns:
        The group, e.g. ``"g08"``, or None if the name does not follow UCF naming.
    """
    match = _UCF_NAME.match(Path(filename).name)
    return match.group("group") if match else None


def _class_seed(seed: int, name: str) -> np.random.Generator:
    # Seed per class (crc32, not hash(): str hashes are salted per process) so one
    # class's split does not change when other classes are added or removed.
    return np.random.default_rng([seed, zlib.crc32(name.encode("utf-8"))])


def make_group_split(
    videos_by_class: Mapping[str, Sequence[str | Path]],
    *,
    test_fraction: float = 0.3,
    seed: int = 0,
) -> tuple[list[VideoSample], list[VideoSample]]:
    """Split videos into train and test without leaking recording groups.

    If every file follows UCF naming (``v_<Class>_gXX_cYY``), whole groups go to
    test: a seeded choice of ``round(test_fraction * #groups)`` group ids, the
    same ids for every class, as in UCF101 (clips of one group share actor and
    scene, so splitting inside a group inflates test accuracy). Otherwise each
    class is split on its own (stratified): ``round(test_fraction * n)`` test
    videos, at least one for classes with two or more videos.

    Args:
        videos_by_class: Class name to video paths; iteration order defines labels.
        test_fraction: Share of groups (or videos) for test, in (0, 1).
        seed: Seed for the choice.

    Returns:
        (train, test) samples sorted by label then path; paths as given.

    Raises:
        SplitError: ``test_fraction`` outside (0, 1), or no videos.
    """
    if not 0.0 < test_fraction < 1.0:
        raise SplitError(f"test_fraction must be in (0, 1), got {test_fraction}")
    classes = list(videos_by_class)
    files = {name: sorted(Path(p) for p in videos_by_class[name]) for name in classes}
    if not any(files.values()):
        raise SplitError("no videos to split")
    groups = {p: parse_ucf_group(p.name) for paths in files.values() for p in paths}
    train: list[VideoSample] = []
    test: list[VideoSample] = []

    if all(g is not None for g in groups.values()):
        all_groups = sorted(set(groups.values()))
        num_test = min(max(1, round(test_fraction * len(all_groups))), max(len(all_groups) - 1, 0))
        rng = np.random.default_rng(seed)
        test_groups = {all_groups[i] for i in rng.permutation(len(all_groups))[:num_test]}
        logger.info("group split: %d of %d groups to test: %s", num_test, len(all_groups), sorted(test_groups))
        for label, name in enumerate(classes):
            for p in files[name]:
                (test if groups[p] in test_groups else train).append(VideoSample(path=p, label=label))
    else:
        for label, name in enumerate(classes):
            paths = files[name]
            num_test = 0
            if len(paths) >= 2:
                num_test = min(max(1, round(test_fraction * len(paths))), len(paths) - 1)
            chosen = set(_class_seed(seed, name).permutation(len(paths))[:num_test].tolist())
            for i, p in enumerate(paths):
                (test if i in chosen else train).append(VideoSample(path=p, label=label))

    for label, name in enumerate(classes):
        if not any(s.label == label for s in train):
            logger.warning("class %r has no training videos in this split", name)
        if len(files[name]) >= 2 and not any(s.label == label for s in test):
            logger.warning("class %r has no test videos in this split", name)
    key = lambda s: (s.label, str(s.path))  # noqa: E731
    return sorted(train, key=key), sorted(test, key=key)


def _relative_entry(root: Path, sample: VideoSample) -> str:
    path = Path(sample.path)
    path = path if path.is_absolute() else root / path
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        raise ValueError(f"video {path} is not inside dataset root {root}") from None


def format_class_index(classes: Sequence[str]) -> str:
    """Text of ``classInd.txt`` for ``classes`` (1-based, LF line ends)."""
    return "".join(f"{i} {name}\n" for i, name in enumerate(classes, start=1))


def write_split_files(
    root: str | Path,
    classes: Sequence[str],
    train: Iterable[VideoSample],
    test: Iterable[VideoSample],
    split: int = 1,
    out_dir: str | Path | None = None,
) -> Path:
    """Write ``classInd.txt``, ``trainlistNN.txt`` and ``testlistNN.txt`` in UCF format.

    Train lines carry the 1-based label, test lines do not, exactly as UCF101.
    Existing files are overwritten; callers decide whether that is wanted.

    Args:
        root: Dataset root; entries are written relative to it.
        classes: Class names; position is the 0-based label.
        train: Training samples.
        test: Test samples.
        split: Split number, written as two digits.
        out_dir: Target folder; default ``root/ucfTrainTestlist``.

    Returns:
        The folder written to.

    Raises:
        SplitError: ``split`` < 1.
        ValueError: A sample lies outside ``root`` or has a label outside ``classes`` (a caller bug).
    """
    root = Path(root).absolute()
    out = Path(out_dir) if out_dir is not None else root / SPLIT_DIR_NAMES[0]
    if split < 1:
        raise SplitError(f"split must be >= 1, got {split}")

    def lines(samples: Iterable[VideoSample], with_label: bool) -> str:
        rows = []
        for s in samples:
            if not 0 <= s.label < len(classes):
                raise ValueError(f"label {s.label} of {s.path} is outside 0..{len(classes) - 1}")
            entry = _relative_entry(root, s)
            rows.append(f"{entry} {s.label + 1}\n" if with_label else f"{entry}\n")
        return "".join(rows)

    train_text, test_text = lines(train, True), lines(test, False)
    out.mkdir(parents=True, exist_ok=True)
    (out / CLASS_INDEX_NAME).write_text(format_class_index(classes), encoding="utf-8", newline="\n")
    (out / f"trainlist{split:02d}.txt").write_text(train_text, encoding="utf-8", newline="\n")
    (out / f"testlist{split:02d}.txt").write_text(test_text, encoding="utf-8", newline="\n")
    return out


def load_split(root: str | Path, split: int = 1, split_dir: str | Path | None = None) -> DatasetSplit:
    """Load one train/test split of a UCF-style dataset.

    Class order comes from ``classInd.txt`` if present, else from sorted folder
    names. Without any split lists, split 1 falls back to ``make_group_split``
    in memory (with a warning); write lists with ``data_prep/make_splits.py``
    to make the split explicit and reproducible across code changes.

    Args:
        root: Dataset root.
        split: Split number (UCF101 ships 1, 2 and 3).
        split_dir: Folder with the split lists; default from ``find_split_dir``.

    Returns:
        The split.

    Raises:
        FileNotFoundError: Missing root, list file, or listed video.
        SplitError: Malformed lists, a video in both train and test, or a
            split other than 1 requested without split lists.
    """
    root = Path(root).absolute()
    if not root.is_dir():
        raise FileNotFoundError(f"dataset folder not found: {root}")
    if split < 1:
        raise SplitError(f"split must be >= 1, got {split}")
    folder = Path(split_dir) if split_dir is not None else find_split_dir(root)

    if folder is None:
        if split != 1:
            raise SplitError(
                f"no split lists in {root} for split {split}; "
                f"run: python data_prep/make_splits.py {root} --split {split}"
            )
        logger.warning(
            "no split lists in %s; using an in-memory group split (seed 0). "
            "Run data_prep/make_splits.py %s to write it down.", root, root,
        )
        videos = scan_class_folders(root)
        train, test = make_group_split(videos)
        return DatasetSplit(classes=tuple(videos), train=tuple(train), test=tuple(test))

    class_file = folder / CLASS_INDEX_NAME
    classes = read_class_index(class_file) if class_file.is_file() else tuple(scan_class_folders(root))
    lists = {}
    for kind in ("train", "test"):
        path = folder / f"{kind}list{split:02d}.txt"
        if not path.is_file():
            available = sorted(p.name for p in folder.glob("*list*.txt"))
            raise FileNotFoundError(f"split list not found: {path} (available: {available})")
        lists[kind] = read_split_file(path, root, classes)
    overlap = {s.path for s in lists["train"]} & {s.path for s in lists["test"]}
    if overlap:
        raise SplitError(
            f"{len(overlap)} video(s) in both train and test of split {split}, e.g. {sorted(overlap)[0]}"
        )
    return DatasetSplit(classes=classes, train=tuple(lists["train"]), test=tuple(lists["test"]))
