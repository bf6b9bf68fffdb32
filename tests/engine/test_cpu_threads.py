"""train.cpu_threads: torch threads on CPU default to the cores the data workers leave over."""

import os

import pytest

from actionrec.config import ConfigError, load_config
from actionrec.engine.loop import cpu_threads


def test_cpu_threads_leaves_cores_to_workers(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    assert cpu_threads(0, num_workers=2) == 6
    assert cpu_threads(0, num_workers=2, procs_per_node=2) == 2  # two ranks share the 8 cores
    assert cpu_threads(0, num_workers=8) == 1  # never below one thread
    assert cpu_threads(3, num_workers=8) == 3  # an explicit value wins


def test_cpu_threads_config_key():
    assert load_config(None, ["train.cpu_threads=4"]).train.cpu_threads == 4
    with pytest.raises(ConfigError, match="train.cpu_threads"):
        load_config(None, ["train.cpu_threads=-1"])
