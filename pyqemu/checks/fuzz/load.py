"""One fuzz input on a fresh sanitized destination, classified.

QEMU is launched by the project's one launcher (:class:`VM`, over
qemu.machine): QMP over a socket pair, so there is no connect race to
retry, and its output goes to a log file, never to a pipe that a chatty
sanitizer could fill.  Acceptable outcomes: the stream loads, or QEMU
fails it with an error message.  Anything else is a finding.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from ...machine.vm import VM
from ...paths import Layout
from ...util.poll import PollTimeout, until
from .seeds import RAM_MB, disks

#: Sanitizers abort on the first report, and leaks at exit are not ours.
SANITIZER_ENV = ("env", "ASAN_OPTIONS=detect_leaks=0:abort_on_error=1",
                 "UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1")
#: The destination's name: its output is in ``<workdir>/load.log``.
NAME = "load"
#: Outcomes that are findings; "harness" is a failure of this code or an
#: overloaded machine, not of the input, and is retried once.
FINDINGS = ("crash", "sanitizer", "hang", "no-message", "harness")


@dataclass
class Outcome:
    verdict: str        # "loaded", "error", or one of FINDINGS
    detail: str


def log_path(workdir: Path) -> Path:
    """Where the last destination run in *workdir* wrote its output (the
    raw bytes; Outcome.detail has them decoded with replacement)."""
    return workdir / f"{NAME}.log"


def _feed(vm: VM, stream: Path, deadline: float) -> tuple[bool, str | None]:
    """Start the incoming migration and follow it to its end; (whether
    QEMU took the stream, its last status).  QMP errors mean QEMU went
    away: its exit and output say why, so they are not raised."""
    try:
        vm.cmd("migrate-incoming", uri=f"file:{stream}")
    except Exception:
        return False, None
    status = None
    try:
        status = until(lambda: vm.cmd("query-migrate").get("status"),
                       lambda s: s in ("completed", "failed"),
                       max(deadline - time.monotonic(), 0), "incoming stream",
                       interval=0.01)
        if status == "completed":
            vm.cmd("quit")
    except PollTimeout:
        pass
    except Exception:
        pass
    return True, status


def load(layout: Layout, binary: Path, stream: Path, workdir: Path,
         timeout: float = 20) -> Outcome:
    """Feed *stream* to a fresh destination; classify what happens."""
    vm = VM(layout, NAME, disks(), workdir=workdir, incoming=True,
            machine="none", memory_mb=RAM_MB, extra_args=("-S",),
            binary=binary, wrapper=SANITIZER_ENV)
    deadline = time.monotonic() + timeout
    try:
        vm.launch()
    except Exception as e:
        vm.shutdown()
        return Outcome("harness", f"QEMU did not start: {e}")
    try:
        talked, status = _feed(vm, stream, deadline)
        try:
            until(vm.is_running, lambda running: not running,
                  max(deadline - time.monotonic(), 2), "QEMU to exit")
        except PollTimeout:
            pass
    finally:
        end = vm.shutdown()
    problem = end.problem()
    if problem:
        sanitizer = "Sanitizer" in problem or "runtime error" in problem
        return Outcome("sanitizer" if sanitizer else "crash",
                       f"{problem}\n{end.log[-4000:]}")
    if end.killed_by_us:
        if not talked:
            return Outcome("harness", "QEMU never took the stream")
        return Outcome("hang", f"no end after {timeout:.0f}s (status {status})")
    if status == "completed" and end.code == 0:
        return Outcome("loaded", "")
    message = end.log.strip().splitlines()
    if end.code != 0 and message:
        return Outcome("error", message[-1][:200])
    return Outcome("no-message", f"exit {end.code}, status {status}: "
                                 f"{end.log[-500:]}")


def load_retrying(layout: Layout, binary: Path, stream: Path,
                  workdir: Path) -> Outcome:
    """load(), once more if the harness rather than QEMU failed."""
    outcome = load(layout, binary, stream, workdir)
    if outcome.verdict == "harness":
        outcome = load(layout, binary, stream, workdir)
    return outcome
