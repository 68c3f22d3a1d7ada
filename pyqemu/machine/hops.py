"""One guest migrated again and again: A -> B -> A' -> B' ...

Booting the Linux guest under TCG costs 8-20 s, a migration a few
seconds: a benchmark that wants many migrations of one workload keeps the
guest and moves it on, each hop to a fresh ``-incoming defer`` QEMU
started with the current one's arguments (:meth:`VM.successor`).  Its
bitmaps travel with it (capability ``dirty-bitmaps``), and its workload
keeps running across the hops.

A hop that does not complete (timed out and cancelled, or failed) leaves
the guest where it was, running, and the next hop starts from there with
another new destination.  Like :class:`~pyqemu.machine.vm.Pair`, the
``with`` block stops every QEMU it started, and a QEMU that ended badly
(a signal nobody sent, a crash report, an exit status nobody expected)
fails it: each one is checked as soon as it is left behind.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from . import migration
from .migration import MigrationResult
from .vm import VM, raise_or_note, shutdown_all


class Hops:
    """The QEMU the guest runs in now (:attr:`vm`), and the way on."""

    def __init__(self, first: VM, sockdir: Path, prefix: str = "hop") -> None:
        #: where the guest runs now
        self.vm = first
        self.sockdir = sockdir
        self.prefix = prefix
        #: destinations started so far, the ones that failed included
        self.started = 0
        self._dst: VM | None = None

    def __enter__(self) -> "Hops":
        self.vm.launch()
        return self

    def migrate(self, caps: dict[str, bool], params: dict[str, Any],
                timeout: float, dst_caps: dict[str, bool] | None = None,
                on_poll: Callable[[dict], None] | None = None
                ) -> MigrationResult:
        """Migrate the guest to a new QEMU (:func:`migration.run`: a hop
        that does not complete by *timeout* is cancelled and reported).

        Completed, the guest runs on the destination when this returns and
        the old source is gone (and was checked), and the result has the
        downtime the guest saw; otherwise the failed destination is gone
        and the guest goes on where it was.
        """
        self.started += 1
        dst = self.vm.successor(f"{self.prefix}{self.started}")
        sock = self.sockdir / f"{self.prefix}{self.started}.sock"
        sock.unlink(missing_ok=True)
        self._dst = dst
        dst.launch()
        self.vm.drain_events()
        res = migration.run(self.vm, dst, f"unix:{sock}", caps, params,
                            timeout, dst_caps, on_poll)
        if res.converged:
            migration.wait_destination_running(dst)
            # the source's events must be read before it is shut down
            res.visible_downtime_ms = migration.visible_downtime_ms(
                self.vm.drain_events(), dst.drain_events())
            old, self.vm = self.vm, dst
        else:
            old = dst
        self._dst = None
        sock.unlink(missing_ok=True)
        old.check_exit()
        return res

    def __exit__(self, exc_type: object, exc: BaseException | None,
                 tb: object) -> None:
        raise_or_note(shutdown_all((self._dst, self.vm)), exc)
