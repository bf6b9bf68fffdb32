"""Shared command-line plumbing for the tools: logging setup and one-line error exits."""

from __future__ import annotations

import contextlib
import logging
import sys
from pathlib import Path

from actionrec.config import ConfigError
from actionrec.data.dataset import TooManyBadVideos
from actionrec.data.loader import LoaderStalled
from actionrec.data.video_io import VideoDecodeError
from actionrec.engine.checkpoint import CheckpointError
from actionrec.engine.loop import NonFiniteLossError

# Errors a user can fix from the message alone: shown as one line, no traceback (--debug shows it).
USER_ERRORS: tuple[type[BaseException], ...] = (
    ConfigError,
    FileNotFoundError,
    NotADirectoryError,
    ValueError,
    PermissionError,
    CheckpointError,
    VideoDecodeError,
    NonFiniteLossError,
    TooManyBadVideos,
    LoaderStalled,
)


def setup_logging(log_file: Path | None = None, *, main: bool = True) -> None:
    """INFO on the main rank (console and ``log_file``), WARNING elsewhere."""
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_file))
    logging.basicConfig(
        level=logging.INFO if main else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        handlers=handlers,
        force=True,
    )


@contextlib.contextmanager
def exit_on_error(debug: bool = False, extra: tuple[type[BaseException], ...] = ()):
    """Turn expected errors into ``error: <message>`` on stderr and exit status 2."""
    try:
        yield
    except USER_ERRORS + extra as e:
        if debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
