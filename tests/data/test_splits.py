"""Tests for dataset layout scanning and UCF101-format split lists."""

from __future__ import annotations

import logging
import re
import subprocess
import sys
from pathlib import Path

import pytest

from actionrec.data.splits import (
    VIDEO_EXTENSIONS,
    DatasetSplit,
    VideoSample,
    find_split_dir,
    load_split,
    make_group_split,
    parse_ucf_group,
    read_class_index,
    read_split_file,
    scan_class_folders,
    write_split_files,
)

REPO = Path(__file__).resolve().parents[2]
CLASSES = ("ApplyEyeMakeup", "Archery", "Basketball")


def make_ucf_tree(root: Path, classes=CLASSES, groups: int = 10, clips: int = 3) -> Path:
    """Empty placeholder videos named like UCF101 (splits only need the files to exist)."""
    for name in classes:
        (root / name).mkdir(parents=True, exist_ok=True)
        for g in range(1, groups + 1):
            for c in range(1, clips + 1):
                (root / name / f"v_{name}_g{g:02d}_c{c:02d}.avi").touch()
    return root


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.encode("utf-8"))
    return path


# ---------------------------------------------------------------- class index


def test_read_class_index_accepts_crlf_and_orders_by_index(tmp_path: Path):
    path = write(tmp_path / "classInd.txt", "2 Archery\r\n1 ApplyEyeMakeup\r\n\r\n3 Basketball\r\n")
    assert read_class_index(path) == CLASSES


@pytest.mark.parametrize(
    "text, message",
    [
        ("1 A\n3 B\n", "without gaps"),
        ("0 A\n1 B\n", "without gaps"),
        ("1 A\n1 B\n", r"classInd\.txt:2: index 1 repeated"),
        ("1 A\n2 A\n", r"classInd\.txt:2: class 'A'"),
        ("1 A\nB\n", r"classInd\.txt:2: expected"),
    ],
)
def test_read_class_index_rejects_bad_files_naming_file_and_line(tmp_path: Path, text: str, message: str):
    path = write(tmp_path / "classInd.txt", text)
    with pytest.raises(ValueError, match=message) as info:
        read_class_index(path)
    assert "classInd.txt" in str(info.value)


# ---------------------------------------------------------------- split lists


def test_read_split_file_with_and_without_labels(tmp_path: Path):
    root = make_ucf_tree(tmp_path / "ucf", groups=2, clips=1)
    path = write(
        root / "lists" / "mixed.txt",
        "Archery/v_Archery_g01_c01.avi 2\r\n"
        "\r\n"
        "Basketball/v_Basketball_g02_c01.avi\r\n"
        "  ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi 1  \n",
    )
    samples = read_split_file(path, root, CLASSES)
    assert samples == [
        VideoSample(root / "Archery" / "v_Archery_g01_c01.avi", 1),
        VideoSample(root / "Basketball" / "v_Basketball_g02_c01.avi", 2),
        VideoSample(root / "ApplyEyeMakeup" / "v_ApplyEyeMakeup_g01_c01.avi", 0),
    ]
    assert all(s.path.is_absolute() for s in samples)


def test_read_split_file_with_relative_root_gives_absolute_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    make_ucf_tree(tmp_path / "ucf", groups=1, clips=1)
    path = write(tmp_path / "t.txt", "Archery/v_Archery_g01_c01.avi\n")
    monkeypatch.chdir(tmp_path)
    (sample,) = read_split_file(path, "ucf", CLASSES)
    assert sample.path == tmp_path / "ucf" / "Archery" / "v_Archery_g01_c01.avi"


def test_read_split_file_labelled_flag(tmp_path: Path):
    root = make_ucf_tree(tmp_path / "ucf", groups=1, clips=1)
    with_label = write(tmp_path / "a.txt", "Archery/v_Archery_g01_c01.avi 2\n")
    without = write(tmp_path / "b.txt", "Archery/v_Archery_g01_c01.avi\n")
    assert len(read_split_file(with_label, root, CLASSES, labelled=True)) == 1
    assert len(read_split_file(without, root, CLASSES, labelled=False)) == 1
    with pytest.raises(ValueError, match=r"b\.txt:1"):
        read_split_file(without, root, CLASSES, labelled=True)
    with pytest.raises(ValueError, match=r"a\.txt:1"):
        read_split_file(with_label, root, CLASSES, labelled=False)


@pytest.mark.parametrize(
    "entry, message",
    [
        ("../x.avi", "outside the dataset root"),
        ("Archery/../../x.avi 2", "outside the dataset root"),
        ("/etc/passwd.avi", "absolute path"),
        ("C:/data/Archery/x.avi", "absolute path"),
        ("Archery/v_Archery_g01_c01.avi 3", "label 3 disagrees"),
        ("Diving/v_Diving_g01_c01.avi", "class 'Diving' is not in the class index"),
        ("v_Archery_g01_c01.avi", "expected '<class folder>/<video file>'"),
    ],
)
def test_read_split_file_rejects_bad_entries_with_line_number(tmp_path: Path, entry: str, message: str):
    root = make_ucf_tree(tmp_path / "ucf", groups=1, clips=1)
    (tmp_path / "x.avi").touch()  # exists, so only the escape check can stop it
    path = write(tmp_path / "testlist01.txt", f"Archery/v_Archery_g01_c01.avi\n\n{entry}\n")
    with pytest.raises(ValueError, match=message) as info:
        read_split_file(path, root, CLASSES)
    assert "testlist01.txt:3" in str(info.value)


def test_read_split_file_allows_dotdot_that_stays_inside_root(tmp_path: Path):
    root = make_ucf_tree(tmp_path / "ucf", groups=1, clips=1)
    path = write(tmp_path / "t.txt", "Basketball/../Archery/v_Archery_g01_c01.avi\n")
    (sample,) = read_split_file(path, root, CLASSES)
    assert sample == VideoSample(root / "Archery" / "v_Archery_g01_c01.avi", 1)


def test_read_split_file_missing_video_names_file_and_line(tmp_path: Path):
    root = make_ucf_tree(tmp_path / "ucf", groups=1, clips=1)
    path = write(tmp_path / "trainlist01.txt", "Archery/v_Archery_g01_c01.avi 2\nArchery/v_Archery_g09_c01.avi 2\n")
    with pytest.raises(FileNotFoundError, match=r"trainlist01\.txt:2: .*v_Archery_g09_c01\.avi"):
        read_split_file(path, root, CLASSES)


# ---------------------------------------------------------------- folders


def test_scan_class_folders_filters_and_sorts(tmp_path: Path):
    root = tmp_path / "data"
    for rel in ["b/two.AVI", "b/one.mp4", "b/notes.txt", "b/._one.mp4", "a/x.webm",
                "ucfTrainTestlist/classInd.txt", ".cache/z.avi"]:
        write(root / rel, "")
    found = scan_class_folders(root)
    assert list(found) == ["a", "b"]
    assert found["b"] == [root / "b" / "one.mp4", root / "b" / "two.AVI"]
    assert found["a"] == [root / "a" / "x.webm"]
    assert ".avi" in VIDEO_EXTENSIONS


def test_scan_class_folders_errors(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match="dataset folder not found"):
        scan_class_folders(tmp_path / "nope")
    (tmp_path / "empty_root").mkdir()
    with pytest.raises(ValueError, match="no class folders"):
        scan_class_folders(tmp_path / "empty_root")
    write(tmp_path / "r" / "Good" / "a.avi", "")
    write(tmp_path / "r" / "Bad" / "readme.txt", "")
    with pytest.raises(ValueError, match="Bad"):
        scan_class_folders(tmp_path / "r")


def test_find_split_dir(tmp_path: Path):
    assert find_split_dir(tmp_path) is None
    write(tmp_path / "trainlist01.txt", "")
    assert find_split_dir(tmp_path) == tmp_path
    write(tmp_path / "splits" / "classInd.txt", "1 A\n")
    assert find_split_dir(tmp_path) == tmp_path / "splits"
    write(tmp_path / "ucfTrainTestlist" / "testlist02.txt", "")
    assert find_split_dir(tmp_path) == tmp_path / "ucfTrainTestlist"


def test_parse_ucf_group():
    assert parse_ucf_group("v_ApplyEyeMakeup_g08_c01.avi") == "g08"
    assert parse_ucf_group("/d/HandstandPushups/v_HandStandPushups_g25_c04.avi") == "g25"
    assert parse_ucf_group("v_Some_Class_g1_c2.mp4") == "g1"
    assert parse_ucf_group("clip_0001.mp4") is None
    assert parse_ucf_group("v_Archery_g08.avi") is None


# ---------------------------------------------------------------- splitting


def test_make_group_split_keeps_groups_on_one_side(tmp_path: Path):
    root = make_ucf_tree(tmp_path, groups=10, clips=3)
    videos = scan_class_folders(root)
    train, test = make_group_split(videos, test_fraction=0.3, seed=0)
    train_groups = {parse_ucf_group(s.path.name) for s in train}
    test_groups = {parse_ucf_group(s.path.name) for s in test}
    assert not train_groups & test_groups
    assert len(test_groups) == 3 and len(train_groups) == 7
    # The same groups go to test for every class, as in UCF101.
    for label in range(len(CLASSES)):
        assert {parse_ucf_group(s.path.name) for s in test if s.label == label} == test_groups
    assert len(train) + len(test) == 90
    assert {s.path.parent.name for s in test if s.label == 1} == {"Archery"}
    # Seeded: same seed same split, another seed another choice of groups.
    assert make_group_split(videos, seed=0) == (train, test)
    other = {parse_ucf_group(s.path.name) for s in make_group_split(videos, seed=1)[1]}
    assert other != test_groups


def test_make_group_split_stratified_for_arbitrary_names():
    videos = {
        "cats": [f"/d/cats/clip{i}.mp4" for i in range(10)],
        "dogs": [f"/d/dogs/clip{i}.mp4" for i in range(4)],
        "one": ["/d/one/only.mp4"],
        "two": ["/d/two/a.mp4", "/d/two/b.mp4"],
    }
    train, test = make_group_split(videos, test_fraction=0.3, seed=0)
    test_count = {label: sum(s.label == label for s in test) for label in range(4)}
    assert test_count == {0: 3, 1: 1, 2: 0, 3: 1}
    assert sum(s.label == 2 for s in train) == 1
    assert not {s.path for s in train} & {s.path for s in test}
    assert len(train) + len(test) == 17
    # A class's split does not depend on the other classes.
    alone, alone_test = make_group_split({"cats": videos["cats"]}, test_fraction=0.3, seed=0)
    assert [s.path for s in alone_test] == [s.path for s in test if s.label == 0]


def test_make_group_split_rejects_bad_fraction():
    with pytest.raises(ValueError, match="test_fraction"):
        make_group_split({"a": ["x.avi", "y.avi"]}, test_fraction=1.0)


# ---------------------------------------------------------------- writing and loading


def test_write_split_files_exact_ucf_format_and_round_trip(tmp_path: Path):
    root = make_ucf_tree(tmp_path / "ucf", groups=4, clips=2)
    videos = scan_class_folders(root)
    train, test = make_group_split(videos, test_fraction=0.25, seed=0)
    out = write_split_files(root, CLASSES, train, test, split=2)
    assert out == root / "ucfTrainTestlist"
    assert (out / "classInd.txt").read_text() == "1 ApplyEyeMakeup\n2 Archery\n3 Basketball\n"
    for line in (out / "trainlist02.txt").read_text().splitlines():
        assert re.fullmatch(r"(\w+)/v_\1_g\d\d_c\d\d\.avi [123]", line), line
    for line in (out / "testlist02.txt").read_text().splitlines():
        assert re.fullmatch(r"(\w+)/v_\1_g\d\d_c\d\d\.avi", line), line
    loaded = load_split(root, split=2)
    assert loaded == DatasetSplit(classes=CLASSES, train=tuple(train), test=tuple(test))


def test_write_split_files_rejects_video_outside_root(tmp_path: Path):
    with pytest.raises(ValueError, match="not inside dataset root"):
        write_split_files(tmp_path / "root", ["A"], [VideoSample(tmp_path / "elsewhere" / "a.avi", 0)], [])


def test_load_split_uses_class_index_order_and_official_lists(tmp_path: Path):
    root = make_ucf_tree(tmp_path, groups=2, clips=1)
    lists = root / "ucfTrainTestlist"
    write(lists / "classInd.txt", "1 Basketball\r\n2 Archery\r\n3 ApplyEyeMakeup\r\n")
    write(lists / "trainlist01.txt", "Basketball/v_Basketball_g02_c01.avi 1\r\nArchery/v_Archery_g02_c01.avi 2\r\n")
    write(lists / "testlist01.txt", "ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi\r\n")
    split = load_split(root)
    assert split.classes == ("Basketball", "Archery", "ApplyEyeMakeup")
    assert [s.label for s in split.train] == [0, 1]
    assert split.test == (VideoSample(root / "ApplyEyeMakeup" / "v_ApplyEyeMakeup_g01_c01.avi", 2),)
    with pytest.raises(FileNotFoundError, match="trainlist02.txt"):
        load_split(root, split=2)


def test_load_split_rejects_video_in_train_and_test(tmp_path: Path):
    root = make_ucf_tree(tmp_path, groups=1, clips=1)
    write(root / "splits" / "trainlist01.txt", "Archery/v_Archery_g01_c01.avi 2\n")
    write(root / "splits" / "testlist01.txt", "Archery/v_Archery_g01_c01.avi\n")
    with pytest.raises(ValueError, match="both train and test"):
        load_split(root)


def test_load_split_falls_back_to_group_split_with_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    root = make_ucf_tree(tmp_path, groups=10, clips=1)
    with caplog.at_level(logging.WARNING, logger="actionrec.data.splits"):
        split = load_split(root)
    assert "make_splits.py" in caplog.text
    assert split.classes == CLASSES
    assert not {parse_ucf_group(s.path.name) for s in split.train} & {parse_ucf_group(s.path.name) for s in split.test}
    with pytest.raises(ValueError, match="make_splits.py"):
        load_split(root, split=2)


def test_make_splits_cli_round_trip(tmp_path: Path):
    root = make_ucf_tree(tmp_path / "ucf", groups=5, clips=2)
    script = str(REPO / "data_prep" / "make_splits.py")

    def run(*extra: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, script, str(root), *extra],
                              capture_output=True, text=True, cwd=tmp_path, timeout=60)

    first = run("--test-fraction", "0.4", "--seed", "3")
    assert first.returncode == 0, first.stderr
    assert re.search(r"Archery\s+6\s+4", first.stdout), first.stdout
    split = load_split(root)
    assert split.classes == CLASSES and len(split.train) == 18 and len(split.test) == 12
    assert not {parse_ucf_group(s.path.name) for s in split.train} & {parse_ucf_group(s.path.name) for s in split.test}

    again = run()
    assert again.returncode == 2 and "--force" in again.stderr
    assert load_split(root) == split  # untouched
    forced = run("--force", "--seed", "4")
    assert forced.returncode == 0, forced.stderr
    second = run("--split", "2")  # new split number next to the first: allowed
    assert second.returncode == 0, second.stderr
    assert load_split(root, split=2).classes == CLASSES
