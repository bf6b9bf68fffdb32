"""CPU threads: one rule for every tool, a pure function of cores, load and the tool's own workers."""

import os
import subprocess
import sys
import time

import pytest

from actionrec.config import ConfigError, load_config
from actionrec.engine import threads as T
from actionrec.engine.loop import cpu_threads


@pytest.mark.parametrize("cores, busy, reserved, procs, want", [
    (2, 0.0, 0, 1, 2),    # idle 2-core machine: both cores
    (2, 1.0, 0, 1, 1),    # the machine: another program holds one core
    (2, 0.45, 0, 1, 2),   # a core busy less than half the time still counts as free
    (2, 0.55, 0, 1, 1),   # ... more than half the time as taken
    (2, 2.0, 0, 1, 1),    # everything busy: never below one thread
    (8, 0.0, 2, 1, 6),    # the trainer: cores left by 2 DataLoader workers
    (8, 2.2, 2, 1, 4),    # ... and by two busy cores
    (8, 0.0, 2, 2, 2),    # two DDP ranks share the 8 cores
    (8, 4.0, 0, 2, 2),    # busy cores are shared out before the ranks split what is left
    (1, 0.0, 2, 1, 1),
])
def test_choose_threads_counts_free_cores(cores, busy, reserved, procs, want):
    assert T.choose_threads(0, cores=cores, busy=busy, reserved=reserved, procs=procs) == want


def test_an_explicit_thread_count_wins():
    assert T.choose_threads(3, cores=2, busy=2.0, reserved=8) == 3


def test_cpu_threads_leaves_cores_to_workers_and_busy_cores(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    monkeypatch.setattr(T, "measure_busy_cores", lambda cpus: 0.0)
    assert cpu_threads(0, num_workers=2) == 6
    assert cpu_threads(0, num_workers=2, procs_per_node=2) == 2  # two ranks share the 8 cores
    assert cpu_threads(0, num_workers=8) == 1  # never below one thread
    monkeypatch.setattr(T, "measure_busy_cores", lambda cpus: 3.0)
    assert cpu_threads(0, num_workers=2) == 3
    monkeypatch.setattr(T, "measure_busy_cores", lambda cpus: pytest.fail("an explicit value is not measured"))
    assert cpu_threads(3, num_workers=8) == 3


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc/stat")
def test_a_busy_loop_process_is_measured_on_its_core():
    cpu = T.available_cores()[0]
    loop = subprocess.Popen([sys.executable, "-c", "while True: pass"],
                            preexec_fn=lambda: os.sched_setaffinity(0, {cpu}))
    try:
        time.sleep(0.3)  # interpreter start-up
        busy = T.measure_busy_cores([cpu], seconds=0.3)
    finally:
        loop.kill()
        loop.wait()
    assert 0.8 <= busy <= 1.0


def test_cpu_threads_config_key():
    assert load_config(None, ["train.cpu_threads=4"]).train.cpu_threads == 4
    with pytest.raises(ConfigError, match="train.cpu_threads"):
        load_config(None, ["train.cpu_threads=-1"])
