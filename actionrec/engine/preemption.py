"""Stop training cleanly when a scheduler asks: SIGTERM (SLURM, Kubernetes) or SIGUSR1 (SLURM --signal).

The handler only records the request; the training loop finishes the optimizer step in progress,
all ranks agree on stopping at the same step (the request travels in the per-step all-reduce), the
trainer writes a mid-epoch checkpoint atomically and exits with ``PREEMPTED_EXIT``. ``--resume auto``
continues from that batch.
"""

from __future__ import annotations

import logging
import signal

# EX_TEMPFAIL from sysexits.h, "temporary failure, try again": tools/slurm_train.sh requeues on it.
PREEMPTED_EXIT = 75
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)
log = logging.getLogger(__name__)


class StopRequest:
    """Records SIGTERM/SIGUSR1 instead of dying at once; ``requested()`` is polled once per step.

    Use as a context manager: the previous handlers come back on exit.
    """

    def __init__(self, signals: tuple[int, ...] = STOP_SIGNALS):
        self.signals = signals
        self.received: int | None = None
        self._previous: dict[int, object] = {}

    def _handle(self, signum, frame) -> None:  # no logging here: a handler may interrupt a log write
        self.received = signum

    def requested(self) -> bool:
        return self.received is not None

    @property
    def name(self) -> str:
        return signal.Signals(self.received).name if self.received is not None else ""

    def __enter__(self) -> StopRequest:
        for sig in self.signals:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def report(self, pos, checkpoint) -> str:
        """Log where training stopped (``pos``: a ``checkpoint.Position``) and how to continue.

        Returns:
            The signal's name, or "another rank's stop request" where this rank received none.
        """
        name = self.name or "another rank's stop request"
        log.warning("%s received: stopped after step %d (epoch %d, batch %d); checkpoint %s written; "
                    "continue with --resume auto (exit status %d)", name, pos.step, pos.epoch + 1, pos.batches_done,
                    checkpoint, PREEMPTED_EXIT)
        return name
