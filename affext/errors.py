"""affext's errors and how its command lines report them.

Every error class of the package derives from AffextError and from the builtin its callers
have always caught (DatasetError is a ValueError, MissingExtraError an ImportError), so that
`except AffextError` catches any of them and older `except ValueError` clauses still do. The
`affext` command, `python -m affext.psa` and `python -m affext.irn` run their commands through
run_command: one exit status and one message format for every error.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any


class AffextError(Exception):
    """The base of affext's own errors: a problem the user can act on, with a message saying
    what it is."""


# What a command reports as a one-line error with exit status 2 (anything else is a bug and
# keeps its traceback): affext's errors, bad values, files (OSError names the path) and a
# training that diverged (FloatingPointError).
USER_ERRORS = (AffextError, OSError, ValueError, FloatingPointError)


def run_command(prog: str, func: Callable[[Any], Any], args: Any) -> int:
    """func(args) as a command line runs it: its exit status (0 when it returns no int), 2
    with "PROG: error: <the error's message>" on stderr for USER_ERRORS, 130 for Ctrl-C."""
    try:
        rc = func(args)
    except USER_ERRORS as exc:
        print(f"{prog}: error: {user_message(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prog}: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    return rc if isinstance(rc, int) else 0


def group_main(group: str, add_parser: Callable[[Any], Any], argv: list[str] | None) -> int:
    """`python -m affext.GROUP ...`: the commands `add_parser` registers as `affext GROUP`
    (psa, irn), parsed from argv (None: sys.argv's) and run by run_command."""
    import argparse

    parser = argparse.ArgumentParser(prog="affext")
    sub = parser.add_subparsers(dest="command", metavar="command", required=True)
    add_parser(sub)
    args = parser.parse_args([group, *(sys.argv[1:] if argv is None else argv)])
    return run_command(f"affext {group} {getattr(args, group + '_command')}", args.func, args)


_WORKER_TRACEBACK = "Original Traceback (most recent call last):"


def user_message(exc: BaseException) -> str:
    """The one line `affext` prints for an error: its message, without the traceback that a
    DataLoader worker's error carries, and for an OSError on a path, what is wrong with it."""
    if isinstance(exc, OSError) and exc.errno is not None and exc.filename is not None:
        return _path_problem(exc)
    text = str(exc)
    if _WORKER_TRACEBACK in text:
        # torch re-raises a worker's error with its traceback in the message, the error's own
        # "module.Type: message" line last
        lines = text.split(_WORKER_TRACEBACK, 1)[1].rstrip().splitlines()
        last = next((line for line in reversed(lines) if line and not line[0].isspace()), text)
        return last.split(": ", 1)[1] if ": " in last else last
    return " ".join(text.split("\n")) if isinstance(exc, OSError) else text


def _path_problem(exc: OSError) -> str:
    """An OSError on a path as a sentence naming the path and what is wrong with it."""
    path = Path(os.fsdecode(exc.filename))
    ancestors = [*reversed(path.parents), path]
    if isinstance(exc, FileExistsError) and path.is_symlink() and not path.exists():
        return f"{str(path)!r} is a link to {os.readlink(path)!r}, which does not exist"
    if isinstance(exc, FileExistsError) and not path.is_dir():
        return f"{str(path)!r} is a file, not a folder: give a folder (or a path to create)"
    if isinstance(exc, NotADirectoryError):
        blocker = next((a for a in ancestors if a.exists() and not a.is_dir()), path)
        return f"cannot create {str(path)!r}: {str(blocker)!r} is a file, not a folder"
    existing = next((a for a in reversed(ancestors) if a.exists()), Path("."))
    if isinstance(exc, PermissionError):
        if existing == path:
            return f"permission denied: {str(path)!r} cannot be opened by this user"
        return (
            f"permission denied: cannot create {str(path)!r}, as {str(existing)!r} is not "
            "writable by this user; choose a folder you can write to"
        )
    if isinstance(exc, FileNotFoundError):
        if existing == path.parent:
            return (
                f"{str(path)!r} does not exist and cannot be created in {str(existing)!r} "
                "(a file system that does not allow it); choose another path"
            )
        missing = ancestors[ancestors.index(existing) + 1]
        return f"cannot open {str(path)!r}: {str(missing)!r} does not exist"
    return f"{exc.strerror}: {str(path)!r}"


__all__ = ["USER_ERRORS", "AffextError", "group_main", "run_command", "user_message"]
