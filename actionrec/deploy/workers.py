"""A long-lived pool of worker processes for a server: each job has a timeout, a crash costs one job.

``data/parallel.py`` maps a function over a known list of files and then ends; a server needs
the same protection (a decoder that hangs is killed at its time limit, one that segfaults is
replaced, and either comes back as that job's error) for jobs that keep arriving, from many
request threads, without paying a process start per job. This pool reuses parallel.py's worker
slots (one process, one pipe, one job at a time) and runs them from one manager thread; every
new or replaced process first runs ``warmup`` (imports, model set-up) so that a job's time limit
measures the job, not the worker's start. A job whose worker dies is run once more in a process
started after that, before it fails: the worker may have been killed from outside (the OOM killer,
an operator), or killed just before the job reached it, through no fault of the job's. (Only a newer
process will do: a worker killed together with it may still look alive while its threads exit.)
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import threading
import time
from collections import deque
from concurrent.futures import Future
from multiprocessing.connection import wait
from typing import Any, Callable

from actionrec.data.parallel import TaskResult, _Slot

log = logging.getLogger(__name__)

_WARMUP_TIMEOUT = 300.0  # seconds a new process may take to import torch and friends on a busy machine


class WorkerPool:
    """Persistent worker processes; ``submit(item)`` returns a Future of a ``TaskResult``.

    Args:
        fn: picklable callable run in the workers (a module-level function or a partial of one).
        workers: number of processes (>= 1).
        timeout: seconds one job may run before its worker is killed and replaced.
        warmup: item given to every new process before any job (its result is discarded); None: none.
        start_method: multiprocessing start method ('spawn': no inherited decoder threads or locks).
        crash_retries: times a job whose worker died is given to a fresh worker before it fails
            (a job that crashes every worker costs 1 + crash_retries restarts). Timeouts are not retried.

    A job's Future always resolves with a ``TaskResult``: ``error`` is "timed out after N s",
    "worker killed by SIGSEGV" or "Type: first line" of an exception ``fn`` raised.
    """

    def __init__(self, fn: Callable[[Any], Any], *, workers: int, timeout: float, warmup: Any = None,
                 start_method: str = "spawn", crash_retries: int = 1):
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        self.fn, self.timeout, self.warmup, self.crash_retries = fn, float(timeout), warmup, crash_retries
        self._ctx = mp.get_context(start_method)
        self._lock = threading.Lock()
        self._todo: deque[tuple[Any, Future, int, float]] = deque()  # (item, future, crashes so far, last crash)
        self._wake_r, self._wake_w = os.pipe()
        self._closed = False
        self.stats = {"jobs": 0, "timeouts": 0, "crashes": 0, "restarts": 0, "seconds": 0.0}
        self._slots = [self._new_slot() for _ in range(workers)]
        self._thread = threading.Thread(target=self._run, name="worker-pool", daemon=True)
        self._thread.start()

    def _new_slot(self) -> _Slot:
        slot = _Slot(self._ctx, self.fn)
        slot.future, slot.crashes = None, 0  # the job it holds (None while warming up or idle) and its crashes so far
        slot.born = time.monotonic()
        if self.warmup is not None:
            slot.give(self.warmup)
        return slot

    def submit(self, item: Any) -> Future:
        fut: Future = Future()
        with self._lock:
            if self._closed:
                raise RuntimeError("worker pool is closed")
            self._todo.append((item, fut, 0, float("-inf")))
        os.write(self._wake_w, b"x")
        return fut

    def wait_ready(self, timeout: float = _WARMUP_TIMEOUT) -> bool:
        """Block until every process has finished its warm-up (True) or ``timeout`` passes."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if all(not s.busy or s.future is not None for s in self._slots):
                return True
            time.sleep(0.05)
        return False

    def _assign(self) -> None:
        with self._lock:
            for i, slot in enumerate(self._slots):
                if slot.busy or not self._todo:
                    continue
                if not slot.proc.is_alive():  # died while idle (killed from outside): replace, let it warm up
                    self._finish(i, slot, None, replace=True)
                    continue
                k = next((k for k, job in enumerate(self._todo) if slot.born > job[3]), None)
                if k is None:  # only retries, waiting for a process started after their crash
                    continue
                job = self._todo[k]
                del self._todo[k]
                item, fut, crashes, _ = job
                if not fut.running() and not fut.set_running_or_notify_cancel():  # running: a requeued job
                    continue
                try:
                    slot.give(item)
                except OSError:  # died between the check and the send: the job never ran, so it waits again
                    self._todo.appendleft(job)
                    self._finish(i, slot, None, replace=True)
                    continue
                slot.future, slot.crashes = fut, crashes

    def _finish(self, i: int, slot: _Slot, result: TaskResult | None, replace: bool, crashed: bool = False) -> None:
        fut, crashes, slot.busy, slot.future = slot.future, slot.crashes, False, None
        now = time.monotonic()
        if replace:
            slot.stop(kill=True)
            self._slots[i] = self._new_slot()
            self.stats["restarts"] += 1
        if fut is None:
            if result is not None and result.error:
                log.error("worker warm-up failed: %s", result.error)
            return
        if crashed and crashes < self.crash_retries:  # maybe not the job's fault: once more, in a fresh worker
            with self._lock:
                self._todo.appendleft((slot.item, fut, crashes + 1, now))
            return
        self.stats["jobs"] += 1
        self.stats["seconds"] += result.seconds
        fut.set_result(result)

    def _run(self) -> None:
        while not self._closed:
            self._assign()
            busy = [s for s in self._slots if s.busy]
            limit = None
            if busy:
                limit = max(0.0, min(s.started + (self.timeout if s.future else _WARMUP_TIMEOUT) for s in busy)
                            - time.monotonic())
            ready = wait([self._wake_r] + [s.conn for s in busy] + [s.proc.sentinel for s in busy], timeout=limit)
            if self._wake_r in ready:
                os.read(self._wake_r, 4096)
            now = time.monotonic()
            for i, slot in enumerate(list(self._slots)):
                if not slot.busy:
                    continue
                result, failure = slot.collect(now, self.timeout if slot.future else _WARMUP_TIMEOUT)
                if failure:
                    self.stats["crashes" if failure == "crash" else "timeouts"] += slot.future is not None
                if result is not None:
                    self._finish(i, slot, result, replace=failure is not None, crashed=failure == "crash")

    def close(self) -> None:
        """Stop the manager thread and every process; jobs still waiting fail with RuntimeError."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            todo, self._todo = list(self._todo), deque()
        os.write(self._wake_w, b"x")
        self._thread.join(timeout=10)
        for slot in self._slots:
            if slot.future is not None and not slot.future.done():
                slot.future.set_exception(RuntimeError("worker pool closed"))
            slot.stop(kill=slot.busy)
        for _, fut, _, _ in todo:
            if fut.running() or fut.set_running_or_notify_cancel():  # running: requeued after a crash
                fut.set_exception(RuntimeError("worker pool closed"))
        os.close(self._wake_r)
        os.close(self._wake_w)
