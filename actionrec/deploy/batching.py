"""Dynamic batching: model work from concurrent requests gathered into one call, on one thread.

A request submits rows (an (n, ...) array) under a key, e.g. its frames under ``"cnn"`` or its
clips of T feature steps under ``("head", T)``; the batcher thread concatenates the rows of every
waiting request with the same key, up to ``max_batch``, and runs ``fn(key, rows)`` once, then
hands each request its output rows. A batch runs as soon as it is full, or once its oldest row
has waited ``max_wait_ms`` since its request's ``since`` time: a request that passes several
stages (CNN, then head) passes its first submission time on, so a lone request waits at most
``max_wait_ms`` in all, while under load every call is full. Per-frame CNN calls at small sizes
and batch-1 LSTM calls are dominated by fixed per-call costs (Python, module dispatch, oneDNN
set-up, the recurrence's small matrix products), which a batch pays once. ``max_batch=1`` turns
batching off: one frame, one clip per call, as the streaming demo runs.

Serial jobs (``call``) run on the same thread between batches, so all model compute shares one
thread and never competes for the cores with itself.
"""

from __future__ import annotations

import functools
import itertools
import threading
import time
from collections import deque
from concurrent.futures import Future
from typing import Any, Callable, Hashable

import numpy as np


class _Job:
    __slots__ = ("id", "x", "done", "parts", "future", "since")

    def __init__(self, job_id: int, x: np.ndarray, future: Future, since: float):
        self.id, self.x, self.future, self.since = job_id, x, future, since
        self.done = 0  # rows handed to a batch so far
        self.parts: list[np.ndarray] = []


def _kind(key: Hashable) -> str:
    return key[0] if isinstance(key, tuple) else str(key)


class DynamicBatcher:
    """Runs ``fn(key, rows)`` over batches gathered from concurrent ``submit`` calls, on its own thread.

    Args:
        fn: (key, (N, ...) array) -> (N, ...) array, one output row per input row. Rows are
            batched only with rows of the same key (same shape after the first axis).
        max_batch: most rows per call (1: no batching).
        max_wait_ms: longest a row waits (from its ``since``) for others before a partial batch runs.

    ``snapshot()`` counts, per kind of key ('cnn', 'head'): batches, rows, the largest batch, and
    batches that mixed rows of more than one request (what concurrency buys).
    """

    def __init__(self, fn: Callable[[Hashable, np.ndarray], np.ndarray], *, max_batch: int, max_wait_ms: float,
                 name: str = "batcher"):
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        if max_wait_ms < 0:
            raise ValueError(f"max_wait_ms must be >= 0, got {max_wait_ms}")
        self.fn, self.max_batch, self.max_wait = fn, int(max_batch), max_wait_ms / 1000.0
        self._cond = threading.Condition()
        self._jobs: dict[Hashable, deque[_Job]] = {}
        self._rows: dict[Hashable, int] = {}  # rows waiting per key
        self._calls: deque[tuple[Callable, Future]] = deque()
        self._ids = itertools.count()
        self._closed = False
        self.stats: dict[str, dict] = {}
        self.call_stats = {"calls": 0, "seconds": 0.0}
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def submit(self, x: np.ndarray, key: Hashable = "cnn", *, since: float | None = None) -> Future:
        """Queue rows under ``key``; the Future resolves to ``fn``'s rows for them, in order.

        Args:
            since: ``time.monotonic()`` from which this request's wait counts (default: now).
        """
        if len(x) == 0:
            raise ValueError("submit needs at least one row")
        fut: Future = Future()
        with self._cond:
            if self._closed:
                raise RuntimeError("batcher is closed")
            job = _Job(next(self._ids), x, fut, time.monotonic() if since is None else since)
            self._jobs.setdefault(key, deque()).append(job)
            self._rows[key] = self._rows.get(key, 0) + len(x)
            self._cond.notify()
        return fut

    def call(self, fn: Callable, *args: Any, **kwargs: Any) -> Future:
        """Run ``fn(*args, **kwargs)`` on the batcher thread (between batches); the Future holds its result."""
        fut: Future = Future()
        with self._cond:
            if self._closed:
                raise RuntimeError("batcher is closed")
            self._calls.append((functools.partial(fn, *args, **kwargs), fut))
            self._cond.notify()
        return fut

    def _next_work(self):
        """Under the lock: a call, (key, batch pieces), or None once closed and drained."""
        while True:
            if self._calls:
                return self._calls.popleft()
            now, ready, soonest = time.monotonic(), None, None
            for key, jobs in self._jobs.items():
                if not jobs:
                    continue
                due = jobs[0].since + self.max_wait
                if self._rows[key] >= self.max_batch or due <= now or self._closed:
                    if ready is None or due < ready[1]:
                        ready = (key, due)
                elif soonest is None or due < soonest:
                    soonest = due
            if ready is not None:
                return ready[0], self._take_batch(ready[0])
            if self._closed:
                return None
            self._cond.wait(timeout=None if soonest is None else soonest - now)

    def _take_batch(self, key: Hashable) -> list[tuple[_Job, int, int]]:
        jobs, pieces, room = self._jobs[key], [], self.max_batch
        while room and jobs:
            job = jobs[0]
            n = min(room, len(job.x) - job.done)
            pieces.append((job, job.done, job.done + n))
            job.done += n
            room -= n
            if job.done == len(job.x):
                jobs.popleft()
        self._rows[key] -= self.max_batch - room
        return pieces

    def _run(self) -> None:
        while True:
            with self._cond:
                work = self._next_work()
            if work is None:
                return
            if isinstance(work[1], Future):
                self._run_call(*work)
            else:
                self._run_batch(*work)

    def _run_call(self, fn: Callable, fut: Future) -> None:
        if not fut.set_running_or_notify_cancel():
            return
        t0 = time.perf_counter()
        try:
            fut.set_result(fn())
        except BaseException as e:  # noqa: BLE001 - handed to the caller, who raises it
            fut.set_exception(e)
        self.call_stats["calls"] += 1
        self.call_stats["seconds"] += time.perf_counter() - t0

    def _run_batch(self, key: Hashable, pieces: list[tuple[_Job, int, int]]) -> None:
        x = pieces[0][0].x[pieces[0][1] : pieces[0][2]] if len(pieces) == 1 else \
            np.concatenate([job.x[a:b] for job, a, b in pieces])
        t0 = time.perf_counter()
        try:
            out = np.asarray(self.fn(key, x))
        except BaseException as e:  # noqa: BLE001 - every request in the batch gets the error
            for job, _, _ in pieces:
                self._fail(key, job, e)
            return
        s = self.stats.setdefault(_kind(key), {"batches": 0, "rows": 0, "largest_batch": 0, "multi_request_batches": 0,
                                               "most_requests_in_a_batch": 0, "seconds": 0.0})
        s["seconds"] += time.perf_counter() - t0
        s["batches"] += 1
        s["rows"] += len(x)
        s["largest_batch"] = max(s["largest_batch"], len(x))
        requests = len({job.id for job, _, _ in pieces})
        s["multi_request_batches"] += requests > 1
        s["most_requests_in_a_batch"] = max(s["most_requests_in_a_batch"], requests)
        row = 0
        for job, a, b in pieces:
            job.parts.append(out[row : row + b - a])
            row += b - a
            if b == len(job.x) and not job.future.done():
                job.future.set_result(job.parts[0] if len(job.parts) == 1 else np.concatenate(job.parts))

    def _fail(self, key: Hashable, job: _Job, err: BaseException) -> None:
        with self._cond:
            if job in self._jobs[key]:  # its remaining rows must not run
                self._jobs[key].remove(job)
                self._rows[key] -= len(job.x) - job.done
        if not job.future.done():
            job.future.set_exception(err)

    def snapshot(self) -> dict:
        """Counters per kind of key, with mean batch size, plus the settings."""
        out = {"max_batch": self.max_batch, "max_wait_ms": self.max_wait * 1000.0,
               "calls": self.call_stats["calls"], "call_seconds": round(self.call_stats["seconds"], 3)}
        for kind, s in list(self.stats.items()):
            out[kind] = {**s, "seconds": round(s["seconds"], 3),
                         "mean_batch": round(s["rows"] / s["batches"], 2) if s["batches"] else 0.0}
        return out

    def close(self) -> None:
        """Run what is queued, then stop the thread."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join(timeout=30)
