"""Run a function over many files in worker processes that may hang or crash.

Video decoders are C libraries: on a corrupt file they can spin forever or segfault, which a
thread or ``concurrent.futures`` pool cannot survive (a dead worker breaks the whole
``ProcessPoolExecutor``; a hung one blocks its shutdown). Here each worker takes one item at a
time over its own pipe, so the parent knows which item every worker holds: an item over the
time limit gets its worker killed and replaced, a worker that dies is replaced, and both come
back as an error result for that item while the other items go on.
"""

from __future__ import annotations

import multiprocessing as mp
import signal
import time
from collections import deque
from dataclasses import dataclass
from multiprocessing.connection import wait
from typing import Any, Callable, Iterable, Iterator

from actionrec.errors import first_line


@dataclass(frozen=True)
class TaskResult:
    """Outcome of one item: ``value`` when ``error`` is None."""

    item: Any
    value: Any = None
    error: str | None = None
    seconds: float = 0.0


def _describe_exit(code: int | None) -> str:
    if code is not None and code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exited with status {code}"


def _worker(fn: Callable, conn) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    while True:
        try:
            item = conn.recv()
        except EOFError:
            return
        if item is None:
            return
        try:
            conn.send((True, fn(item)))
        except Exception as e:  # noqa: BLE001 - reported to the parent as this item's error
            conn.send((False, first_line(e)))


class _Slot:
    def __init__(self, ctx, fn: Callable):
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_worker, args=(fn, child), daemon=True)
        self.proc.start()
        child.close()
        self.item: Any = None
        self.busy = False
        self.started = 0.0

    def give(self, item: Any) -> None:
        self.item, self.busy, self.started = item, True, time.monotonic()
        self.conn.send(item)

    def collect(self, now: float, timeout: float | None) -> tuple[TaskResult | None, str | None]:
        """The busy slot's outcome, if there is one yet: (result, failure).

        A reply gives the item's result and failure None. A dead worker gives the error "worker
        killed by SIGSEGV" (or its exit status) and failure 'crash'; an item running ``timeout``
        seconds or more gives "timed out after N s" and 'timeout'. Either failure means the worker
        must be replaced. (None, None) while the item still runs.
        """
        if self.conn.poll():
            try:
                ok, value = self.conn.recv()
                return TaskResult(self.item, value if ok else None, None if ok else value, now - self.started), None
            except (EOFError, OSError):
                pass  # died mid-send: handled as a crash below
        if not self.proc.is_alive():
            self.proc.join()
            return TaskResult(self.item, None, f"worker {_describe_exit(self.proc.exitcode)}", now - self.started), "crash"
        if timeout is not None and now - self.started >= timeout:
            return TaskResult(self.item, None, f"timed out after {timeout:g} s", now - self.started), "timeout"
        return None, None

    def stop(self, kill: bool = False) -> None:
        if kill:
            self.proc.kill()
        else:
            try:
                self.conn.send(None)
            except (BrokenPipeError, OSError):
                pass
        self.proc.join(timeout=5)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join()
        self.conn.close()


def map_unordered(
    fn: Callable[[Any], Any],
    items: Iterable[Any],
    *,
    workers: int,
    timeout: float | None = None,
    start_method: str = "spawn",
) -> Iterator[TaskResult]:
    """Apply ``fn`` to every item in worker processes; yield results as they finish.

    Args:
        fn: a picklable callable (module-level function or ``functools.partial`` of one).
        items: picklable items; None is reserved.
        workers: number of processes; 0 runs ``fn`` inline, without timeout or crash isolation.
        timeout: seconds one item may take before its worker is killed (None: no limit).
        start_method: multiprocessing start method; 'spawn' (the default) does not inherit the
            parent's decoder threads and locks, which 'fork' can deadlock on.

    Yields:
        One ``TaskResult`` per item, in completion order. Exceptions raised by ``fn`` become
        ``error`` ("Type: first line"); so do a timeout ("timed out after N s") and a worker
        crash ("worker killed by SIGSEGV").
    """
    todo = deque(items)
    if workers <= 0:
        while todo:
            item, t0 = todo.popleft(), time.monotonic()
            try:
                yield TaskResult(item, fn(item), None, time.monotonic() - t0)
            except Exception as e:  # noqa: BLE001 - same contract as the worker path
                yield TaskResult(item, None, first_line(e), time.monotonic() - t0)
        return

    ctx = mp.get_context(start_method)
    slots = [_Slot(ctx, fn) for _ in range(min(workers, len(todo)))]
    try:
        for slot in slots:
            if todo:
                slot.give(todo.popleft())
        while any(s.busy for s in slots):
            busy = [s for s in slots if s.busy]
            wait_for = None
            if timeout is not None:
                wait_for = max(0.0, min(s.started + timeout for s in busy) - time.monotonic())
            wait([s.conn for s in busy] + [s.proc.sentinel for s in busy], timeout=wait_for)
            now = time.monotonic()
            for i, slot in enumerate(slots):
                if not slot.busy:
                    continue
                result, failure = slot.collect(now, timeout)
                if result is None:
                    continue
                if failure:
                    slot.stop(kill=True)
                    slots[i] = slot = _Slot(ctx, fn)
                slot.busy = False
                if todo:
                    slot.give(todo.popleft())
                yield result
    finally:
        for slot in slots:
            slot.stop(kill=slot.busy)
