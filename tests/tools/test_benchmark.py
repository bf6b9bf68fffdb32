"""tools/benchmark.py at tiny sizes: every subcommand runs and reports positive figures (no timing asserts)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow  # ~40 s idle, 80-90 s on the shared 2-core machine (two subprocesses import torch)
def test_benchmark_quick_all_subcommands(tmp_path):
    out = tmp_path / "bench.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(REPO / "tools" / "benchmark.py"), "all", "--quick", "--options",
                           "channels_last", "--work-dir", str(tmp_path / "work"), "--json", str(out)],
                          capture_output=True, text=True, timeout=600, cwd=REPO, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    rows = result["rows"]
    by_bench: dict[str, list[str]] = {}
    for r in rows:
        by_bench.setdefault(r["bench"], []).append(r["variant"])
        assert r["value"] > 0, r
        assert r["ratio"] is None or r["ratio"] > 0, r

    for fmt in ("xvid.avi", "h264.mp4"):
        for mode in ("segment", "dense"):
            assert by_bench[f"decode {fmt} {mode}"] == [
                "naive OpenCV: decode all, pick", "VideoReader auto (default)",
                "VideoReader decord, unchecked (old default)", "VideoReader decord, self-check on first open",
                "VideoReader pyav"]
    assert by_bench["loader"][:4] == [
        "naive OpenCV, 0 workers", "pipeline, 0 workers", "pipeline, 1 worker", "naive OpenCV, 1 workers"]
    assert "pipeline, 0 workers, data.backend=decord" in by_bench["loader"]
    assert by_bench["quickstart"][0].startswith("quickstart training") and any("data wait" in v for v in by_bench["quickstart"])
    step = by_bench["train-step"]
    assert step[0] == "per-frame loop, fp32" and step[1].startswith("default: time folded into batch, amp=auto")
    assert "fold + channels_last" in step and "default step, achieved" in step
    assert {"matmul peak fp32", "matmul peak bf16"} <= set(step)
    assert by_bench["train-step reduced"][1] == "fold + bf16 autocast"
    assert "head-only step on cached features" in by_bench["feature-cache"]
    assert by_bench["head-inputs"] == ["recipe head step on cached features (correlation every step)",
                                       "recipe head step on head inputs (correlation once per clip)",
                                       "head inputs of a clip (once per cached clip)"]
    assert by_bench["train-step quickstart"][2] == "fold + channels_last"
    demo = [v.split(",")[0] for v in by_bench["demo"]]
    assert demo[:2] == demo[3:5] == ["re-run window", "streaming"] and by_bench["demo"][2] == "streaming, channels_last"
    assert "stride 1" in by_bench["demo"][3]
    assert len(by_bench["memory"]) == 2
    # Baselines report 1.00x against themselves; the table printed to stdout is the JSON's table.
    assert all(r["ratio"] == 1.0 for r in rows if r["variant"] == r["baseline"])
    assert result["table"] in proc.stdout and "| benchmark | variant |" in proc.stdout
    assert result["machine"]["cores"] >= 1 and result["machine"]["torch"] and result["machine"]["torch_threads"] == 1
