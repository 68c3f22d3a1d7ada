"""Running a migration between two VMs and reading what happened.

Waiting is always *polling with a deadline* on ``query-migrate``: the test
or report then says which state was reached when time ran out, instead of
hanging or sleeping and hoping.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from typing import Any, Callable

from ..errors import PyqemuError
from ..util.poll import PollTimeout, until
from ..util.units import KiB, MiB
from .vm import VM

TERMINAL = ("completed", "failed", "cancelled")


class MigrationTimeout(PyqemuError, TimeoutError):
    """The migration did not reach the wanted state in time."""


@dataclass
class MigrationResult:
    status: str
    total_ms: int | None
    downtime_ms: int | None
    info: dict                       # the last query-migrate on the source
    bitmaps_info: dict | None = None  # query-migrate's bitmap statistics
    error: str | None = None
    #: the guest's downtime (:func:`visible_downtime_ms`), for callers
    #: that wait for the destination to run (:class:`~.hops.Hops`)
    visible_downtime_ms: float | None = None

    @property
    def converged(self) -> bool:
        return self.status == "completed"


def set_capabilities(vm: VM, caps: dict[str, bool]) -> None:
    vm.cmd("migrate-set-capabilities",
           capabilities=[{"capability": k, "state": v} for k, v in caps.items()])


def set_parameters(vm: VM, params: dict[str, Any]) -> None:
    if params:
        vm.cmd("migrate-set-parameters", **params)


def start(src: VM, dst: VM, uri: str, caps: dict[str, bool],
          params: dict[str, Any] | None = None,
          dst_caps: dict[str, bool] | None = None) -> None:
    """Configure both ends and start the migration (non-blocking)."""
    set_capabilities(dst, caps if dst_caps is None else dst_caps)
    set_capabilities(src, caps)
    set_parameters(src, params or {})
    dst.cmd("migrate-incoming", uri=uri)
    src.cmd("migrate", uri=uri)


#: to_switchover()'s bandwidth until the guest has written (bytes/s)
CRAWL = 64 * KiB


def to_switchover(src: VM, dst: VM, uri: str, caps: dict[str, bool],
                  params: dict[str, Any], progress: Callable[[], int],
                  timeout: float = 120,
                  dst_caps: dict[str, bool] | None = None) -> tuple[int, int]:
    """Start a migration that stops the source before the switchover
    (``pause-before-switchover``), and wait for that stop.

    Returns the guest's write count (*progress*) once the migration has
    started and at the stop: a test of bitmaps that change during a
    migration needs the second to be larger, else it proves nothing.
    So the migration crawls (:data:`CRAWL`) until the guest has written,
    and only then gets *params*' ``max-bandwidth``: at full speed, a
    migration of sparse bitmaps can be over before the guest's next
    report.
    """
    full = params.get("max-bandwidth",
                      src.cmd("query-migrate-parameters")["max-bandwidth"])
    start(src, dst, uri, dict(caps, **{"pause-before-switchover": True}),
          dict(params, **{"max-bandwidth": CRAWL}), dst_caps)
    during = progress()
    until(progress, lambda n: n > during, timeout,
          "a guest write during the migration")
    set_parameters(src, {"max-bandwidth": full})
    wait(src, ("pre-switchover",), timeout)
    return during, progress()


def switch_over(src: VM, dst: VM, timeout: float = 60) -> dict:
    """Let a source that waits at pre-switchover (after the caller looked
    at its state) finish, and wait until both ends completed: a test
    compares the destination only then.  The source's last query-migrate.
    """
    src.cmd("migrate-continue", state="pre-switchover")
    info = wait(src, ("completed",), timeout)
    wait(dst, ("completed",), timeout)
    return info


def query(vm: VM) -> dict:
    return vm.cmd("query-migrate")


def wait(vm: VM, states: tuple[str, ...], timeout: float,
         on_poll: Callable[[dict], None] | None = None,
         interval: float = 0.05) -> dict:
    """Poll query-migrate until its status is in *states*; return it.

    A terminal status that is not wanted ends the wait at once: the
    migration cannot get there any more.
    """
    def probe() -> dict:
        info = query(vm)
        if on_poll:
            on_poll(info)
        return info

    def done(info: dict) -> bool:
        if info.get("status") in states:
            return True
        if info.get("status") in TERMINAL:
            raise MigrationTimeout(
                f"migration ended '{info['status']}' while waiting for "
                f"{states}: {info.get('error-desc', '')}")
        return False

    try:
        return until(probe, done, timeout, f"waiting for migration {states}",
                     interval)
    except PollTimeout as e:
        raise MigrationTimeout(str(e)) from None


def wait_while(vm: VM, status: str, timeout: float) -> dict:
    """Poll query-migrate until it leaves *status*; the last info either
    way (leaving it or not is the caller's result to judge)."""
    try:
        return until(lambda: query(vm), lambda i: i.get("status") != status,
                     timeout, f"migration leaving '{status}'")
    except PollTimeout:
        return query(vm)


def progress_printer(label: str) -> Callable[[dict], None]:
    """An on_poll callback printing one overwriting progress line."""
    last = [0.0]

    def show(info: dict) -> None:
        now = time.monotonic()
        if now - last[0] < 0.5 and info.get("status") not in TERMINAL:
            return
        last[0] = now
        ram = info.get("ram", {})
        bm = info.get("dirty-bitmaps", {})
        msg = (f"  {label}: {info.get('status', '?'):<15} "
               f"ram {ram.get('transferred', 0) / MiB:8.1f} MiB")
        if bm:
            msg += (f"  bitmaps {bm.get('transferred', 0) / KiB:9.1f} KiB "
                    f"sent, {bm.get('remaining', 0) / KiB:9.1f} KiB left")
        end = "\n" if info.get("status") in TERMINAL else "\r"
        if sys.stderr.isatty() or end == "\n":
            print(msg, end=end, file=sys.stderr, flush=True)

    return show


def cancel(src: VM, dst: VM | None = None, timeout: float = 30) -> dict:
    """``migrate_cancel`` on *src*, and its last query-migrate once the
    migration has ended: "cancelled" (or "failed") as asked, or
    "completed" when the migration completed before the cancel reached
    it.  That race is real: QEMU ignores ``migrate_cancel`` on a
    migration that is no longer running, without an error, so only the
    status that follows tells a completed migration from a cancelled one,
    and a caller that assumed the cancel took would throw a finished
    migration away (and kill the destination that now runs the guest).

    The destination *dst* of a migration that did not complete fails its
    incoming migration and exits with status 1 by design: that end is
    declared expected on it (:meth:`VM.allow_exit`).  MigrationTimeout if
    the migration has not ended *timeout* seconds after the cancel.
    """
    src.cmd("migrate_cancel")
    info = wait(src, TERMINAL, timeout)
    if dst is not None and info.get("status") != "completed":
        dst.allow_exit()
    return info


def run(src: VM, dst: VM, uri: str, caps: dict[str, bool],
        params: dict[str, Any] | None = None, timeout: float = 60,
        dst_caps: dict[str, bool] | None = None,
        on_poll: Callable[[dict], None] | None = None) -> MigrationResult:
    """Migrate and wait for the end (or the deadline, then cancel).

    A migration that does not converge by *timeout* is cancelled and
    reported with status "timeout": for a benchmark that is a result, not
    an error.  One that completes while it is being cancelled is reported
    as completed, like any other (see :func:`cancel`).  A destination
    whose migration did not complete may exit by itself (status 1).
    """
    start(src, dst, uri, caps, params, dst_caps)
    try:
        info = wait(src, TERMINAL, timeout, on_poll)
    except MigrationTimeout:
        last = query(src)
        info = cancel(src, dst)
        if info.get("status") != "completed":
            return MigrationResult("timeout", None, None, last,
                                   last.get("dirty-bitmaps"),
                                   f"not converged after {timeout:.0f}s "
                                   f"(status {last.get('status')})")
    if info.get("status") != "completed":
        dst.allow_exit()
    return MigrationResult(info["status"], info.get("total-time"),
                           info.get("downtime"), info,
                           info.get("dirty-bitmaps"), info.get("error-desc"))


def event_time(ev: dict) -> float:
    """A QMP event's own timestamp, in seconds: QEMU stamps it with the
    host clock, so two processes' events can be set against each other."""
    ts = ev["timestamp"]
    return float(ts["seconds"]) + float(ts["microseconds"]) / 1e6


def first_event(events: list[dict], name: str,
                status: str | None = None) -> float | None:
    """The time of the first event *name* (with ``data.status`` *status*
    if given) in *events*, or None."""
    for ev in events:
        if ev["event"] == name and (
                status is None or ev.get("data", {}).get("status") == status):
            return event_time(ev)
    return None


def visible_downtime_ms(src_events: list[dict],
                        dst_events: list[dict]) -> float | None:
    """The downtime the guest sees: the destination's ``RESUME`` minus the
    source's ``STOP``.  QEMU's own ``downtime`` ends when the source has
    sent its last byte, before the destination has loaded it."""
    stop = first_event(src_events, "STOP")
    resume = first_event(dst_events, "RESUME")
    if stop is None or resume is None:
        return None
    return (resume - stop) * 1000


def run_state(vm: VM) -> str:
    """query-status: "running", "paused", "inmigrate", "postmigrate"..."""
    return str(vm.cmd("query-status")["status"])


def wait_destination_running(dst: VM, timeout: float = 30,
                             interval: float = 0.05) -> None:
    try:
        until(lambda: run_state(dst), lambda s: s == "running", timeout,
              f"destination {dst.name} to run", interval)
    except PollTimeout as e:
        raise MigrationTimeout(str(e)) from None
