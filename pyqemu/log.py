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
