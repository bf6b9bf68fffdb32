"""Shared command-line plumbing for the tools: logging setup and one-line error exits."""

from __future__ import annotations

import argparse
import contextlib
import errno
import logging
import sys
from pathlib import Path
from typing import Any, Callable

from actionrec.errors import UserError

# Errors a user can fix from the message alone: shown as one line, no traceback (--debug shows it).
# A plain ValueError or KeyError is a bug and keeps its traceback.
USER_ERRORS: tuple[type[BaseException], ...] = (UserError, FileNotFoundError, NotADirectoryError, PermissionError)

def user_errors() -> tuple[type[BaseException], ...]:
    """The error types shown as one line (every project user error derives from ``UserError``)."""
    return USER_ERRORS


def setup_logging(log_file: Path | None = None, *, main: bool = True) -> None:
    """INFO on the main rank (console and ``log_file``), WARNING elsewhere."""
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        handlers.append(_LoudFileHandler(log_file))
    logging.basicConfig(
        level=logging.INFO if main else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        handlers=handlers,
        force=True,
    )


def doc_parser(doc: str | None) -> argparse.ArgumentParser:
    """An ArgumentParser whose ``--help`` shows ``doc`` (the command's module docstring) as written."""
    return argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)


def run_command(parse_args: Callable[[list[str] | None], argparse.Namespace],
                run: Callable[[argparse.Namespace], int], argv: list[str] | None = None, *,
                extra: tuple[type[BaseException], ...] = ()) -> int:
    """``run(parse_args(argv))`` for a data_prep command, user errors (and ``extra``) as one line.

    Returns:
        ``run``'s exit status; a user error exits with status 2.
    """
    print_raw_file_names()
    args = parse_args(argv)
    with exit_on_error(extra=extra):
        return run(args)


def run_tool(parse_args: Callable[[list[str] | None], argparse.Namespace], main: Callable[[argparse.Namespace], Any],
             argv: list[str] | None = None, *, extra: tuple[type[BaseException], ...] = ()) -> Any:
    """``main(parse_args(argv))`` for a tool: user errors (and ``extra``) as one line, a traceback with ``--debug``.

    Returns:
        What ``main`` returns.
    """
    args = parse_args(argv)
    with exit_on_error(args.debug, extra=extra):
        return main(args)


def print_raw_file_names() -> None:
    """Print file names that are not UTF-8 (Python holds them surrogate-escaped) as their original bytes."""
    sys.stdout.reconfigure(errors="surrogateescape")
    sys.stderr.reconfigure(errors="surrogateescape")


# A write that fails for these reasons is the machine's state, not a bug: one line, no traceback.
_STORAGE_ERRNOS = {errno.ENOSPC, errno.EFBIG, errno.EROFS, errno.EDQUOT, errno.EACCES, errno.EPERM}


class _LoudFileHandler(logging.FileHandler):
    """A log file that cannot be written (disk full, read-only) stops the run with that error.

    logging's default prints a traceback to stderr for every record and carries on without a log.
    """

    def handleError(self, record: logging.LogRecord) -> None:
        err = sys.exc_info()[1]
        if isinstance(err, OSError):
            raise OSError(err.errno, err.strerror, self.baseFilename) from None
        super().handleError(record)


@contextlib.contextmanager
def exit_on_error(debug: bool = False, extra: tuple[type[BaseException], ...] = ()):
    """Turn expected errors into ``error: <message>`` on stderr and exit status 2."""
    try:
        yield
    except user_errors() + extra as e:
        if debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except OSError as e:
        if debug or e.errno not in _STORAGE_ERRNOS:
            raise
        where = f" {e.filename}" if e.filename else ""
        print(f"error: cannot write{where}: {e.strerror} (disk full, a file-size limit or a read-only "
              "folder?); checkpoints written before are unchanged", file=sys.stderr)
        sys.exit(2)
