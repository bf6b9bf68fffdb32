"""tools/gpu_selfcheck.py on a machine without CUDA: a clear table, one real CPU row, exit status 0."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from actionrec.engine import selfcheck
from tests.helpers import REPO

no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the behaviour without CUDA (tests/gpu/ covers CUDA)")


@no_cuda
def test_without_cuda_prints_skips_and_a_cpu_row_and_exits_0(tmp_path):
    proc = subprocess.run([sys.executable, str(REPO / "tools" / "gpu_selfcheck.py"), "--steps", "1",
                           "--json", str(tmp_path / "check.json")],
                          capture_output=True, text=True, timeout=300, cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert "CUDA is not available" in out
    rows = {line.split("|")[0].strip(): [c.strip() for c in line.split("|")] for line in out.splitlines() if " | " in line}
    assert rows["cpu fp32"][1] == "ok" and float(rows["cpu fp32"][2]) > 0
    gpu_modes = [mode for mode, _, _ in selfcheck.GPU_MODES]
    assert len(gpu_modes) == 7 and all(rows[m][1] == "skipped: no CUDA" for m in gpu_modes)
    saved = json.loads((tmp_path / "check.json").read_text())
    assert [c["mode"] for c in saved["checks"]] == ["cpu fp32", *gpu_modes]
    assert "no mode failed (1 ok, 7 skipped)" in out


def test_help():
    proc = subprocess.run([sys.executable, str(REPO / "tools" / "gpu_selfcheck.py"), "--help"],
                          capture_output=True, text=True, timeout=120, cwd=REPO)
    assert proc.returncode == 0 and "--steps" in proc.stdout and "skipped: no CUDA" in proc.stdout


def test_a_failing_mode_is_a_row_not_a_crash():
    check = selfcheck._guarded("broken", lambda: selfcheck._single("broken", "cpu", "cpu", "fp16", 1))
    assert check.failed and "fp16 needs CUDA" in check.status
    assert "FAILED" in selfcheck.format_table([check])


@pytest.mark.slow
def test_ddp_worker_of_the_selfcheck_runs_under_torchrun_on_cpu():
    """The self-check's DDP path with gloo: the code the GPU rows run, minus CUDA."""
    ranks = selfcheck.run_ddp("cpu", "cpu", "none", steps=1)
    assert [r["rank"] for r in ranks] == [0, 1] and all(r["backend"] == "gloo" and r["finite"] for r in ranks)
    assert ranks[0]["params_digest"] == ranks[1]["params_digest"]  # gradients were averaged across ranks
