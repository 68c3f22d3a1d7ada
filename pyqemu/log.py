"""Messages for a person watching a long command.

Progress and warnings go to stderr so that stdout stays clean for output
meant for scripts (``pyqemu which``) and for reports.
"""

from __future__ import annotations

import sys
import time

_START = time.monotonic()


def _emit(prefix: str, msg: str) -> None:
    elapsed = time.monotonic() - _START
    print(f"[{elapsed:6.1f}s] {prefix}{msg}", file=sys.stderr, flush=True)


def info(msg: str) -> None:
    _emit("", msg)


def warn(msg: str) -> None:
    _emit("WARNING: ", msg)


def status_line(msg: str) -> None:
    """Overwrite the current terminal line (ninja-style progress).

    On a non-terminal (CI logs) every update would be a new line, so only
    the caller's final message is printed there.
    """
    if sys.stderr.isatty():
        print("\r\033[K" + msg, end="", file=sys.stderr, flush=True)


def end_status() -> None:
    if sys.stderr.isatty():
        print(file=sys.stderr, flush=True)
