"""One command at a time on a part of the cache.

Two pyqemu commands share one cache (``./run test`` in one terminal,
``./run demo`` in another).  A build directory driven by two ninjas at
once breaks both builds, so whoever builds takes an exclusive ``flock``
on that directory's lock file first.  The second command says once whom
it waits for, then waits: flock, unlike a pid file, is released by the
kernel when its holder dies, so a killed build never leaves a stale lock.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shlex
import sys
from collections.abc import Iterator
from pathlib import Path

from ..log import info


def _holder(fd: int) -> str:
    """Who holds the lock, as its holder wrote it into the file."""
    try:
        text = os.pread(fd, 4096, 0).decode(errors="replace").strip()
    except OSError:
        text = ""
    return text or "another pyqemu command"


@contextlib.contextmanager
def exclusive(path: Path, what: str) -> Iterator[None]:
    """Hold an exclusive flock on *path* (created if need be) for the
    ``with`` block; if another process holds it, print one line naming
    it and *what* it does, and wait.

    The file descriptor is not inherited by child processes (Python's
    default), so a child that outlives this process never keeps the lock.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            info(f"waiting for {_holder(fd)} to finish {what} (lock {path})")
            fcntl.flock(fd, fcntl.LOCK_EX)
        # for the message of whoever waits next
        argv = [os.path.basename(sys.orig_argv[0]), *sys.orig_argv[1:]]
        command = " ".join(shlex.join(argv).split())    # one line
        if len(command) > 120:
            command = command[:117] + "..."
        me = f"pid {os.getpid()} ({command})"
        os.ftruncate(fd, 0)
        os.pwrite(fd, me.encode() + b"\n", 0)
        yield
    finally:
        os.close(fd)
