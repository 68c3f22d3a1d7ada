"""Waiting with a deadline, in one place.

Tests that sleep and hope fail at random; tests that poll forever hang
CI.  :func:`until` polls a condition until it holds or the deadline
passes, and then raises a :class:`PollTimeout` that says what was being
waited for and the last state seen.
"""

from __future__ import annotations

import time
from typing import Callable, TypeVar

from ..errors import PyqemuError

T = TypeVar("T")


class PollTimeout(PyqemuError, TimeoutError):
    """The condition did not hold in time; the message names the last
    state reached."""


def until(probe: Callable[[], T], done: Callable[[T], bool], timeout: float,
          what: str, interval: float = 0.05) -> T:
    """Call *probe* until ``done(result)``; return that result.

    Raises PollTimeout("<what>: still <last result> after N s").
    """
    deadline = time.monotonic() + timeout
    while True:
        state = probe()
        if done(state):
            return state
        if time.monotonic() >= deadline:
            raise PollTimeout(f"{what}: still {state!r} after {timeout:g} s")
        time.sleep(interval)
