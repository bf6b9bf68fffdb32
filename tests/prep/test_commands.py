"""The data_prep console commands ([project.scripts]) run the same main() as data_prep/<name>.py."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")

REPO = Path(__file__).resolve().parents[2]
SCRIPTS = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
COMMANDS = {"actionrec-make-synthetic": "make_synthetic", "actionrec-make-splits": "make_splits",
            "actionrec-check-videos": "check_videos", "actionrec-transcode": "transcode"}


def run_command(name: str, *args: str) -> subprocess.CompletedProcess:
    """Run console command ``name`` as its generated launcher does: import the entry point, exit with it."""
    module, func = SCRIPTS[name].split(":")
    launcher = f"import sys; from {module} import {func}; sys.argv[0] = {name!r}; sys.exit({func}())"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    return subprocess.run([sys.executable, "-c", launcher, *args], capture_output=True, text=True, env=env, timeout=120)


def test_every_data_prep_script_is_a_console_command():
    assert set(SCRIPTS) >= set(COMMANDS)
    for name, script in COMMANDS.items():
        assert SCRIPTS[name] == f"actionrec.prep.{script}:main"
        assert (REPO / "data_prep" / f"{script}.py").is_file()


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_help(name):
    proc = run_command(name, "--help")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"usage: {name} ") and "Exit status:" in proc.stdout
    wrapper = subprocess.run([sys.executable, str(REPO / "data_prep" / f"{COMMANDS[name]}.py"), "--help"],
                             capture_output=True, text=True, timeout=120)
    assert wrapper.returncode == 0, wrapper.stderr
    after_usage = lambda text: text[text.index("\n\n"):]  # noqa: E731 - the usage lines hold the program name
    assert after_usage(wrapper.stdout) == after_usage(proc.stdout)
    if shutil.which(name):  # installed with this pyproject (pip install -e .)
        assert subprocess.run([name, "--help"], capture_output=True, timeout=120).returncode == 0


def test_make_splits_command_writes_lists(tiny_dataset, tmp_path):
    proc = run_command("actionrec-make-splits", str(tiny_dataset), "--out-dir", str(tmp_path), "--split", "2")
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["classInd.txt", "testlist02.txt", "trainlist02.txt"]
    assert proc.stdout.splitlines()[-1].split() == ["total", "24", "8"]  # 4 groups x 8 classes, by UCF group


def test_commands_report_user_errors_in_one_line(tmp_path):
    missing = run_command("actionrec-check-videos", str(tmp_path / "nope"))
    assert (missing.returncode, missing.stderr) == (2, f"error: dataset folder not found: {tmp_path / 'nope'}\n")
    odd = run_command("actionrec-make-synthetic", str(tmp_path / "odd"), "--width", "63", "--no-progress")
    assert (odd.returncode, odd.stderr) == (2, "error: width=63 must be even and >= 16\n")
