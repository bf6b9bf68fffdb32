"""Peak resident memory of a command, including its child processes (DataLoader workers).

``getrusage(RUSAGE_CHILDREN)`` keeps one maximum over every child ever waited for, and a
process's ``VmHWM`` misses its workers, so the process tree is sampled from ``/proc`` instead:
the peak of the summed RSS (an upper bound: pages shared between a parent and its forked
workers count once per process) and the main process's own high-water mark.
"""

from __future__ import annotations

import os
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass
class PeakMemory:
    tree_peak_mb: float  # max over samples of the summed RSS of the process and its descendants
    main_hwm_mb: float  # the main process's VmHWM (its own peak RSS)
    max_processes: int
    returncode: int
    seconds: float
    output_tail: str


def _status_kb(pid: int, field: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            ppid = int(Path(entry.path, "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def run_with_peak_memory(cmd: list[str], *, interval: float = 0.05, timeout: float = 1800, env: dict | None = None,
                         cwd: str | os.PathLike | None = None) -> PeakMemory:
    """Run ``cmd`` to completion, sampling the RSS of its process tree every ``interval`` seconds.

    Raises:
        RuntimeError: on platforms without ``/proc`` (Linux only).
        subprocess.TimeoutExpired: the command ran longer than ``timeout``.
    """
    if not Path("/proc/self/status").exists():
        raise RuntimeError("peak memory sampling needs Linux /proc")
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=cwd)
    tree_peak = hwm = 0
    nproc = 0
    out_chunks: list[str] = []
    # Drain output in a thread so a chatty child never blocks on a full pipe.
    reader = threading.Thread(target=lambda: out_chunks.append(proc.stdout.read()), daemon=True)
    reader.start()
    while proc.poll() is None:
        pids = _descendants(proc.pid)
        tree_peak = max(tree_peak, sum(_status_kb(p, "VmRSS") for p in pids))
        hwm = max(hwm, _status_kb(proc.pid, "VmHWM"))
        nproc = max(nproc, len(pids))
        if time.perf_counter() - t0 > timeout:
            proc.kill()
            proc.wait()
            raise subprocess.TimeoutExpired(cmd, timeout)
        time.sleep(interval)
    reader.join(timeout=10)
    return PeakMemory(tree_peak / 1024, hwm / 1024, nproc, proc.returncode, time.perf_counter() - t0,
                      "".join(out_chunks)[-3000:])
