"""Wrong input to the tools gives one clear error line and exit status 2, never a traceback.

Every case runs the real script (``tools/train.py``, ``tools/eval.py``) in its own process and
checks its stderr and exit status. The processes are forked from one warm interpreter
(``run_warm.py``): a cold start spends ~6 s of CPU importing torch and timm, which for sixteen
cases would cost more than the rest of this issue's tests together. One case also runs cold, to
show that the warm runner changes nothing.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from actionrec.data.synthetic import generate_synthetic_dataset

REPO = Path(__file__).resolve().parents[2]
LOG_LINE = re.compile(r"^\d\d:\d\d:\d\d (DEBUG|INFO|WARNING) ")


class _Payload:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):  # unpickling would create the marker file
        return (Path.touch, (self.marker,))


def _split_dir(root: Path, folder: Path, extra_train_line: str) -> tuple[Path, int]:
    """Copy root's split lists to ``folder`` and append one line to the train list."""
    shutil.copytree(root / "ucfTrainTestlist", folder)
    train = folder / "trainlist01.txt"
    lines = train.read_text().splitlines() + [extra_train_line]
    train.write_text("\n".join(lines) + "\n")
    return folder, len(lines)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    tmp = tmp_path_factory.mktemp("errors")
    root = generate_synthetic_dataset(tmp / "ds", num_groups=2, clips_per_group=1, width=64, height=48,
                                      max_frames=8, seed=0)
    (root / "Grow" / "notes.txt").write_text("not a video")
    (tmp / "outside.avi").write_bytes((root / "Grow").glob("*.avi").__next__().read_bytes())

    # Class folders without split lists: one empty, one holding only a non-video file.
    def bare_root(name: str, odd_class: str, odd_file: str | None) -> Path:
        bare = tmp / name
        (bare / "Good").mkdir(parents=True)
        for src in sorted((root / "Grow").glob("*.avi"))[:2]:
            shutil.copy(src, bare / "Good" / src.name)
        (bare / odd_class).mkdir()
        if odd_file:
            (bare / odd_class / odd_file).write_text("hello")
        return bare

    empty_class = bare_root("empty_class", "Empty", None)
    text_only = bare_root("text_only", "Notes", "readme.txt")

    lists = {}
    for name, line in {"non_video": "Grow/notes.txt 3", "unknown_class": "Jump/v_Jump_g01_c01.avi 1",
                       "escape": "../outside.avi 1", "missing_video": "Grow/v_Grow_g09_c01.avi 3"}.items():
        lists[name] = _split_dir(root, tmp / f"lists_{name}", line)

    marker = tmp / "payload-ran"
    evil = tmp / "evil.pt"
    torch.save({"model": {}, "config": {}, "class_names": [], "extra": _Payload(marker)}, evil)
    bad_yaml = tmp / "bad.yaml"
    bad_yaml.write_text("train:\n  epochs: [1,\n")

    common = [f"data.root={root}", f"train.output_dir={tmp / 'runs'}", "model.backbone=test_resnet",
              "model.hidden_size=16", "data.clip_len=4", "data.resize_short=40", "data.crop_size=32",
              "train.device=cpu", "data.num_workers=0", "logging.wandb.mode=disabled"]
    train = [sys.executable, str(REPO / "tools" / "train.py")]
    cases = {
        "unknown_key": (train + common + ["train.epoch=3"], "unknown config key 'train.epoch'"),
        "wrong_type": (train + common + ["train.epochs=abc"], "train.epochs: expected an integer, got 'abc'"),
        "bad_value": (train + common + ["data.clip_len=0"], "data.clip_len=0: must be >= 1"),
        "missing_config": (train + ["--config", str(tmp / "nope.yaml")], f"config file not found: {tmp / 'nope.yaml'}"),
        "bad_yaml": (train + ["--config", str(bad_yaml)], "invalid YAML"),
        "missing_root": (train + common + [f"data.root={tmp / 'nope'}"], f"dataset folder not found: {tmp / 'nope'}"),
        "empty_class": (train + common + [f"data.root={empty_class}"], f"class folder {empty_class / 'Empty'} has no videos"),
        "text_only_class": (train + common + [f"data.root={text_only}"], f"class folder {text_only / 'Notes'} has no videos"),
        "non_video": (train + common + [f"data.split_dir={lists['non_video'][0]}"],
                      f"trainlist01.txt:{lists['non_video'][1]}: 'Grow/notes.txt' is not a video file"),
        "unknown_class": (train + common + [f"data.split_dir={lists['unknown_class'][0]}"],
                          f"trainlist01.txt:{lists['unknown_class'][1]}: class 'Jump' is not in the class index"),
        "escape": (train + common + [f"data.split_dir={lists['escape'][0]}"],
                   f"trainlist01.txt:{lists['escape'][1]}: path '../outside.avi' points outside the dataset root"),
        "missing_video": (train + common + [f"data.split_dir={lists['missing_video'][0]}"],
                          f"trainlist01.txt:{lists['missing_video'][1]}: video not found"),
        "reverse_pairs": (train + common + ["data.reverse_pairs=[[Grow, Fly]]"],
                          "data.reverse_pairs: class 'Fly' is not in the dataset (classes: "),
        "missing_checkpoint": (train + common + ["--resume", str(tmp / "nope.pt")], f"checkpoint not found: {tmp / 'nope.pt'}"),
        "malicious_resume": (train + common + ["--resume", str(evil)], f"{evil}: refused: it holds code objects"),
        "malicious_eval": ([sys.executable, str(REPO / "tools" / "eval.py"), str(evil)], f"{evil}: refused: it holds code objects"),
        "debug": (train + common + ["train.epoch=3", "--debug"], None),
    }
    spec = [{"script": cmd[1], "argv": cmd[2:], "cwd": str(tmp), "out": str(tmp / f"out-{name}")}
            for name, (cmd, _) in cases.items()]
    (tmp / "cases.json").write_text(json.dumps(spec))
    warm = subprocess.run([sys.executable, str(Path(__file__).with_name("run_warm.py")), str(tmp / "cases.json")],
                          capture_output=True, text=True, timeout=600, cwd=tmp)
    assert warm.returncode == 0, warm.stderr[-3000:]
    results = {}
    for name in cases:
        out = tmp / f"out-{name}"
        results[name] = subprocess.CompletedProcess(
            cases[name][0], int(Path(f"{out}.rc").read_text()), Path(f"{out}.stdout").read_text(),
            Path(f"{out}.stderr").read_text())
    cold = subprocess.run(cases["escape"][0], capture_output=True, text=True, timeout=300, cwd=tmp)
    return {"results": results, "expected": {n: e for n, (_, e) in cases.items()}, "marker": marker, "cold": cold}


CASE_NAMES = ["unknown_key", "wrong_type", "bad_value", "missing_config", "bad_yaml", "missing_root", "empty_class",
              "text_only_class", "non_video", "unknown_class", "escape", "missing_video", "reverse_pairs", "missing_checkpoint",
              "malicious_resume", "malicious_eval"]


@pytest.mark.parametrize("case", CASE_NAMES)
def test_one_clear_error_line(runs, case):
    proc, expected = runs["results"][case], runs["expected"][case]
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    # Log lines (e.g. the warning that no split lists were found) may come first; the error is
    # exactly one line.
    other = [line for line in proc.stderr.splitlines() if line.strip() and not LOG_LINE.match(line)]
    assert len(other) == 1 and other[0].startswith("error: "), proc.stderr
    assert expected in other[0]


def test_malicious_checkpoint_ran_nothing(runs):
    assert runs["results"]["malicious_resume"].returncode == 2
    assert runs["results"]["malicious_eval"].returncode == 2
    assert not runs["marker"].exists()
    assert "nothing in it was run" in runs["results"]["malicious_eval"].stderr


def test_warm_runner_matches_a_cold_start(runs):
    cold, warm = runs["cold"], runs["results"]["escape"]

    def untimed(text: str) -> str:  # log lines start with a wall-clock HH:MM:SS stamp
        return re.sub(r"(?m)^\d\d:\d\d:\d\d ", "", text)

    assert (cold.returncode, untimed(cold.stderr)) == (warm.returncode, untimed(warm.stderr))
    assert "error: " in cold.stderr


def test_debug_shows_the_traceback(runs):
    proc = runs["results"]["debug"]
    assert proc.returncode != 0
    assert "Traceback" in proc.stderr and "ConfigError: unknown config key 'train.epoch'" in proc.stderr


@pytest.mark.parametrize("override", ["train.epochs=[1,", "data.crop_scale={a: [}"])
def test_yaml_errors_in_overrides_are_one_line(override):
    from actionrec.config import ConfigError, load_config

    with pytest.raises(ConfigError, match=r"cannot parse value: line 1, column \d+: ") as e:
        load_config(None, [override])
    assert "\n" not in str(e.value)
