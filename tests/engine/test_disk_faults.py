"""Full and read-only disks: a failed checkpoint or log write stops the run with one line, and the
previous last.pt stays intact and loadable.

No space is simulated two ways: a per-process file-size limit (RLIMIT_FSIZE, what a quota or a
full disk looks like to the writer: EFBIG on the write) and a real tmpfs too small for the next
checkpoint (ENOSPC). A read-only folder is a tmpfs remounted read-only (EROFS; as root, file modes
do not stop writes). Mounting needs CAP_SYS_ADMIN, which the CI machines' root has.
"""

from __future__ import annotations

import os
import resource
import shutil
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import torch

from actionrec.engine.checkpoint import load_checkpoint
from tests.engine.test_robustness import REPO, TINY

COMMON = ["train.log_every=1", "train.deterministic=true", "data.num_workers=0", "train.name=run"]


def _train(root: Path, out: Path, *extra: str, fsize: int | None = None) -> subprocess.CompletedProcess:
    def limit() -> None:  # in the child: EFBIG on the write instead of being killed by SIGXFSZ
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))

    cmd = [sys.executable, str(REPO / "tools" / "train.py"), f"data.root={root}", f"train.output_dir={out}",
           *TINY, *COMMON, *extra]
    return subprocess.run(cmd, cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True,
                          text=True, timeout=600, preexec_fn=limit if fsize else None)


def _one_error_line(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and "Logging error" not in proc.stderr, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, proc.stderr[-3000:]
    return errors[0]


def _same_checkpoint(a: dict, b: dict) -> None:
    assert (a["epoch"], a["step"]) == (b["epoch"], b["step"])
    for k, v in a["model"].items():
        assert torch.equal(v, b["model"][k]), k


@pytest.fixture(scope="module")
def tiny_root(tiny_dataset) -> Path:
    return tiny_dataset  # conftest's shared 32-video dataset; the runs here only read it


@pytest.fixture(scope="module")
def first_epoch(tiny_root, tmp_path_factory) -> tuple[Path, dict]:
    """A run stopped after epoch 1 of 2 (--stop-after 1): its last.pt is what must survive."""
    out = tmp_path_factory.mktemp("disk") / "runs"
    proc = _train(tiny_root, out, "train.epochs=2", "--stop-after", "1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, load_checkpoint(out / "run" / "last.pt")


@pytest.mark.slow
def test_file_size_limit_stops_the_run_and_keeps_last_pt(tiny_root, first_epoch, tmp_path):
    src, before = first_epoch
    out = tmp_path / "runs"
    shutil.copytree(src, out)
    size = (out / "run" / "last.pt").stat().st_size
    proc = _train(tiny_root, out, "train.epochs=2", "--resume", "auto", fsize=size // 2)
    line = _one_error_line(proc)
    assert "last.pt: cannot write the checkpoint" in line and "previous last.pt is unchanged" in line, line
    _same_checkpoint(load_checkpoint(out / "run" / "last.pt"), before)
    assert not list((out / "run").glob(".*.tmp"))  # the partial temp file was removed


def _mount_tmpfs(path: Path, size: int) -> None:
    path.mkdir(parents=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", f"actionrec-{uuid.uuid4().hex[:8]}",
                           str(path)], capture_output=True, text=True)
    if done.returncode != 0:
        if os.environ.get("CI"):
            pytest.fail(f"cannot mount a tmpfs (CI runs as root with CAP_SYS_ADMIN): {done.stderr.strip()}")
        pytest.skip(f"mounting a tmpfs needs root: {done.stderr.strip()}")


@pytest.fixture
def small_disk(tmp_path):
    mounts = []

    def make(src: Path, free: int, *, read_only: bool = False) -> Path:
        used = sum(p.stat().st_size for p in src.rglob("*") if p.is_file())
        mnt = tmp_path / f"mnt{len(mounts)}"
        _mount_tmpfs(mnt, used + free + 64 * 1024)  # tmpfs counts whole pages per file
        mounts.append(mnt)
        shutil.copytree(src, mnt / "runs")
        if read_only:
            subprocess.run(["mount", "-o", "remount,ro", str(mnt)], check=True)
        return mnt / "runs"

    yield make
    for mnt in mounts:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


@pytest.mark.slow
def test_full_disk_stops_the_run_and_keeps_last_pt(tiny_root, first_epoch, small_disk):
    src, before = first_epoch
    size = (src / "run" / "last.pt").stat().st_size
    out = small_disk(src, free=size // 2)  # room for the logs, not for the next checkpoint
    proc = _train(tiny_root, out, "train.epochs=2", "--resume", "auto")
    line = _one_error_line(proc)
    assert "No space left on device" in line and str(out / "run") in line, line
    _same_checkpoint(load_checkpoint(out / "run" / "last.pt"), before)
    assert not list((out / "run").glob(".*.tmp"))


@pytest.mark.slow
def test_read_only_output_folder_stops_the_run_and_keeps_last_pt(tiny_root, first_epoch, small_disk):
    src, before = first_epoch
    out = small_disk(src, free=1 << 20, read_only=True)
    proc = _train(tiny_root, out, "train.epochs=2", "--resume", "auto")
    line = _one_error_line(proc)
    assert "Read-only file system" in line and str(out / "run") in line, line
    _same_checkpoint(load_checkpoint(out / "run" / "last.pt"), before)
