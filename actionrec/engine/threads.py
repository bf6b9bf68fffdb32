"""CPU threads for torch and onnxruntime: one rule for every tool (train, eval, demo, export, serve).

OpenMP (torch) and onnxruntime's thread pool make every op wait for all of their threads, and a
thread whose core another process holds stalls the rest: on a 2-core machine with one core kept
busy by another program, ``tools/demo.py`` ran at 2.5-3.8 frames/s with torch's default of one
thread per core and at 27-211 frames/s with one thread (docs/benchmarks.md, "CPU threads").
Too few threads costs at most the idle cores' share; too many costs 10x. So the automatic choice
counts the cores that are free right now: the cores of this process's CPU set, minus the ones
other programs keep busy (measured from ``/proc/stat`` over a short interval before the model
runs), minus the cores left to this tool's own worker processes (DataLoader, decode workers).

This module imports neither torch nor onnxruntime, so the ONNX deployment path can use it.
"""

from __future__ import annotations

import logging
import math
import os
import time

log = logging.getLogger(__name__)

MEASURE_SECONDS = 0.25  # long enough to see a busy-looping core, short enough for a tool's start-up


def choose_threads(requested: int, *, cores: int, busy: float = 0.0, reserved: int = 0, procs: int = 1) -> int:
    """The number of intra-op threads. Pure: decided from the arguments alone.

    Args:
        requested: an explicit thread count (``--threads N``, ``train.cpu_threads=N``); > 0 wins.
        cores: CPUs this process may run on.
        busy: cores' worth of CPU time other programs used while it was measured (0.0-cores);
            rounded half up, so a core busy half the time counts as taken.
        reserved: cores left to this process's own workers (DataLoader or decode workers).
        procs: processes on this node sharing the cores (DDP ranks).

    Returns:
        ``requested`` when > 0, else ``(cores - busy cores) // procs - reserved``, at least 1.
    """
    if requested > 0:
        return requested
    taken = math.floor(max(0.0, busy) + 0.5)
    free = (max(1, cores) - taken) // max(1, procs) - max(0, reserved)
    return max(1, free)


def available_cores() -> list[int]:
    """The CPU ids this process may run on (its affinity set; all CPUs where that is unknown)."""
    if hasattr(os, "sched_getaffinity"):
        return sorted(os.sched_getaffinity(0))
    return list(range(os.cpu_count() or 1))


def _cpu_times(cpus: list[int]) -> dict[int, tuple[int, int]] | None:
    """{cpu: (busy jiffies, total jiffies)} from /proc/stat, None where it cannot be read."""
    try:
        with open("/proc/stat") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    wanted, out = set(cpus), {}
    for line in lines:
        name, _, rest = line.partition(" ")
        if not name.startswith("cpu") or name == "cpu":
            continue
        try:
            cpu = int(name[3:])
            fields = [int(v) for v in rest.split()]
        except ValueError:
            continue
        if cpu in wanted and len(fields) >= 5:
            idle = fields[3] + fields[4]  # idle + iowait
            total = sum(fields[:8])  # user nice system idle iowait irq softirq steal (guest is inside user)
            out[cpu] = (total - idle, total)
    return out or None


def measure_busy_cores(cpus: list[int] | None = None, seconds: float = MEASURE_SECONDS) -> float:
    """Cores' worth of CPU time used on ``cpus`` during ``seconds`` while this thread sleeps.

    Linux only (``/proc/stat``); elsewhere 0.0 (nothing is known to be busy). The calling thread
    sleeps meanwhile, so what is counted is other processes' work (and this process's other threads).
    """
    cpus = available_cores() if cpus is None else cpus
    before = _cpu_times(cpus)
    if before is None:
        return 0.0
    time.sleep(seconds)
    after = _cpu_times(cpus) or {}
    busy = 0.0
    for cpu, (b0, t0) in before.items():
        b1, t1 = after.get(cpu, (b0, t0))
        if t1 > t0:
            busy += min(1.0, max(0.0, (b1 - b0) / (t1 - t0)))
    return busy


def cpu_threads(requested: int, *, num_workers: int = 0, procs_per_node: int = 1) -> int:
    """``choose_threads`` for this machine now: its cores and how busy other programs keep them.

    ``requested`` > 0 is returned without measuring. Used by tools/train.py (``train.cpu_threads``),
    tools/eval.py, tools/demo.py, tools/export.py and tools/serve.py (``--threads``, 0: auto).

    Args:
        requested: explicit thread count; 0 chooses.
        num_workers: worker processes of this tool that need a core each (DataLoader, decode workers).
        procs_per_node: processes sharing the cores (``LOCAL_WORLD_SIZE`` under torchrun).
    """
    if requested > 0:
        return requested
    cpus = available_cores()
    busy = measure_busy_cores(cpus)
    threads = choose_threads(0, cores=len(cpus), busy=busy, reserved=num_workers, procs=procs_per_node)
    log.debug("CPU threads: %d (auto: %d cores, %.1f busy with other work, %d for workers, %d processes)",
             threads, len(cpus), busy, num_workers, procs_per_node)
    return threads
