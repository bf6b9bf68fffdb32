"""The project's error types for mistakes a user can fix, and the one-line form of any error.

The tools print a ``UserError`` as one ``error: <message>`` line (``actionrec.cli.exit_on_error``);
anything else is a bug and keeps its traceback. Each concrete type also derives from the builtin
it replaced (``ValueError``, ``RuntimeError``), so ``except ValueError`` callers still catch it.
This module imports nothing from the package, so every layer can raise these types.
"""

from __future__ import annotations


class UserError(Exception):
    """Base of the errors whose message alone tells the user what to fix (no traceback shown)."""


class UsageError(UserError, ValueError):
    """A command-line option, argument or setting has a value the code cannot use."""


def first_line(err: BaseException, path: str = "") -> str:
    """``"Type: first line of the message"``, for reports that hold one line per file.

    Args:
        err: the exception.
        path: the file the report already names; FFmpeg messages ending in ``: '<path>'`` lose it.
    """
    text = str(err).strip().splitlines()
    line = text[0] if text else ""
    if path and line.endswith(f": '{path}'"):
        line = line[: -len(f": '{path}'")]
    return f"{type(err).__name__}: {line}"
