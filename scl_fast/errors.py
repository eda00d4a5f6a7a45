"""Errors a user can act on, and how the command-line programs report them.

A :class:`UserError` is a wrong input, not a bug: a bad option or config file, a missing path, a corrupt or
mismatched checkpoint, a bad sample in strict mode, a missing optional package. The programs print it as one line
on stderr, ``error: <message>``, and exit with :data:`EXIT_USER_ERROR`, so the message is the last thing a user sees
instead of the bottom of a traceback. ``--debug`` (or ``SCL_DEBUG=1``) shows the traceback. Every other exception
is a bug and keeps its traceback.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import TypeVar

EXIT_USER_ERROR = 2
"""Exit status of a program stopped by a :class:`UserError` (argparse's status for bad arguments)."""
EXIT_PREEMPTED = 75
"""Exit status of a run stopped by SIGTERM or SIGINT after writing its checkpoint: resumable with
``--train.resume auto`` (75 is sysexits' EX_TEMPFAIL, "try again later"; schedulers can requeue on it)."""

T = TypeVar("T")


class UserError(Exception):
    """An error the user can act on; the command-line programs print its message as one line (no traceback)."""


class ConfigError(UserError, ValueError):
    """A bad option, config file or config value."""


class PathError(UserError, FileNotFoundError):
    """A file or folder the user named is missing or is not what the program needs."""


def one_line(err: BaseException) -> str:
    """The message of ``err`` as one line. An exception re-raised from a DataLoader worker carries the worker's
    traceback in its message, with the original message on its last line (after the exception's type)."""
    lines = [line.strip() for line in str(err).strip().splitlines() if line.strip()]
    if not lines:
        return type(err).__name__
    last = lines[-1]
    prefix = f"{type(err).__module__}.{type(err).__qualname__}: "
    return last[len(prefix):] if last.startswith(prefix) else last


def run_cli(main: Callable[[list[str]], T], argv: list[str] | None = None) -> T:
    """Run a program's ``main(argv)``: a :class:`UserError` becomes one line on stderr and exit status 2.

    ``--debug`` anywhere in ``argv`` (removed before ``main`` sees it) or ``SCL_DEBUG=1`` re-raises instead.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args or os.environ.get("SCL_DEBUG", "") not in ("", "0")
    args = [a for a in args if a != "--debug"]
    try:
        return main(args)
    except UserError as err:
        if debug:
            raise
        print(f"error: {one_line(err)}", file=sys.stderr)
        raise SystemExit(EXIT_USER_ERROR) from None
