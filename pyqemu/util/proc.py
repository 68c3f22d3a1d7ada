"""Running external commands: one helper, one error, no orphans.

:func:`run` captures output and raises :class:`~pyqemu.errors.CommandError`
with the command and the tail of its stderr.  Every child gets
``PR_SET_PDEATHSIG`` (:func:`die_with_parent`, :func:`deathsig_wrapper`),
so a pyqemu killed by a
test timeout or ^C does not leave QEMU processes or namespaced shells
behind.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Mapping, Sequence

from ..errors import CommandError

#: linux/prctl.h
PR_SET_PDEATHSIG = 1


def die_with_parent() -> Callable[[], None]:
    """A preexec_fn, made in the parent: the kernel sends SIGKILL to the
    child when the thread that forked it exits.  A parent that died
    before prctl (the child already has another parent) exits the child
    at once."""
    parent = os.getpid()

    def preexec() -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG)")
        if os.getppid() != parent:
            os._exit(1)

    return preexec


def deathsig_wrapper() -> tuple[str, ...]:
    """A command prefix doing the same for a program someone else spawns
    (QEMUMachine takes a wrapper, not a preexec_fn): util/deathsig.py sets
    the signal, checks that its parent is still this process, and execs
    the rest of its command line."""
    return (sys.executable, "-I", "-S", str(Path(__file__).with_name(
        "deathsig.py")), str(os.getpid()))


def run(cmd: Sequence[str | Path], *, cwd: Path | None = None,
        env: Mapping[str, str] | None = None, input: str | None = None,
        timeout: float | None = None, check: bool = True,
        what: str | None = None,
        merge: bool = False) -> subprocess.CompletedProcess[str]:
    """Run *cmd* to its end with its output captured as text.

    With *check* (the default) a non-zero exit raises CommandError naming
    the command (or *what*) and the end of its stderr.  *merge* puts
    stderr into stdout, for tools whose messages need their context
    (configure).
    """
    args = [str(c) for c in cmd]
    res = subprocess.run(args, cwd=cwd, env=env, input=input,
                         stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT if merge else subprocess.PIPE,
                         text=True, timeout=timeout, check=False,
                         preexec_fn=die_with_parent())
    if check and res.returncode != 0:
        raise CommandError(args, res.returncode,
                           res.stderr if res.stderr and res.stderr.strip()
                           else res.stdout,
                           what)
    return res


class Background:
    """A command that runs beside the caller at a lower CPU priority, its
    output going to a log file.

    A thread starts it and waits for it, so that its end is noted when it
    happens (its duration in ``seconds``, and *on_exit* called with its
    exit status) rather than when someone next looks.  That same thread
    forks it because PR_SET_PDEATHSIG fires when the *forking thread*
    exits: a Background started from another one's *on_exit* (a chain of
    builds) was killed as soon as the first one's waiter returned.  The
    builds use it for work that may overlap a compile without slowing it
    much."""

    def __init__(self, argv: Sequence[str | Path], log: Path, *, nice: int,
                 cwd: Path | None = None,
                 env: Mapping[str, str] | None = None,
                 on_exit: Callable[[int], None] | None = None) -> None:
        self.log = log
        self.seconds: float | None = None
        started = threading.Event()
        failed: list[BaseException] = []
        start = time.monotonic()

        def spawn_and_wait() -> None:
            try:
                with log.open("w") as out:
                    self.proc = subprocess.Popen(
                        ["nice", "-n", str(nice), *[str(a) for a in argv]],
                        stdin=subprocess.DEVNULL, stdout=out,
                        stderr=subprocess.STDOUT, cwd=cwd, env=env,
                        preexec_fn=die_with_parent())
            except BaseException as e:  # reported by the constructor
                failed.append(e)
                return
            finally:
                started.set()
            code = self.proc.wait()
            self.seconds = time.monotonic() - start
            if on_exit is not None:
                on_exit(code)

        self._waiter = threading.Thread(target=spawn_and_wait, daemon=True)
        self._waiter.start()
        started.wait()
        if failed:
            raise failed[0]

    def running(self) -> bool:
        return self.proc.poll() is None

    def wait(self) -> int:
        """Block until the command has ended (and *on_exit* has run);
        return its exit status."""
        self._waiter.join()
        return self.proc.returncode

    def stop(self) -> int:
        """Terminate the command if it still runs; its exit status."""
        if self.running():
            self.proc.terminate()
        return self.wait()
