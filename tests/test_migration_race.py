"""A migration that completes while it is being cancelled is a completed
migration.

QEMU ignores ``migrate_cancel`` once the migration is no longer running,
without an error: when completion wins the race with the cancel, only
the status that follows says so.  The harness used to assume the cancel
took and report "timeout", for a migration whose guest already ran on
the destination.  The race is made deterministic here by a stand-in for
the source's QMP monitor: the migration stays "active" through every
poll until the deadline, and completes exactly when ``migrate_cancel``
arrives.
"""

from __future__ import annotations

from typing import Any, cast

import pytest

from pyqemu.bench import modes
from pyqemu.machine import migration
from pyqemu.machine.vm import VM


class RacingPeer:
    """The QMP side of one QEMU, as far as pyqemu.machine.migration talks
    to it.  As a source: "active" until ``migrate_cancel``, which finds
    the migration completed (*completes_on_cancel*) or cancels it."""

    def __init__(self, completes_on_cancel: bool) -> None:
        self.completes_on_cancel = completes_on_cancel
        self.status = "none"
        self.commands: list[str] = []
        self.allowed_status: int | None = None

    def cmd(self, command: str, **args: Any) -> Any:
        self.commands.append(command)
        if command == "migrate":
            self.status = "active"
        elif command == "migrate_cancel":
            self.status = "completed" if self.completes_on_cancel \
                else "cancelled"
        elif command == "query-migrate":
            info: dict[str, Any] = {"status": self.status}
            if self.status == "completed":
                info.update({"total-time": 1234, "downtime": 12,
                             "dirty-bitmaps": {"transferred": 4096,
                                               "resent-chunks": 1}})
            return info
        elif command == "query-migrate-parameters":
            return {"max-bandwidth": 1 << 30}
        return {}

    def allow_exit(self, status: int = 1) -> None:
        self.allowed_status = status


def peers(completes_on_cancel: bool) -> tuple[RacingPeer, RacingPeer]:
    return RacingPeer(completes_on_cancel), RacingPeer(False)


@pytest.mark.parametrize("completes", [True, False])
def test_run_reports_what_the_cancel_found(completes: bool) -> None:
    src, dst = peers(completes)
    res = migration.run(cast(VM, src), cast(VM, dst), "unix:/nowhere",
                        {"dirty-bitmaps": True}, timeout=0.2)
    assert "migrate_cancel" in src.commands
    if completes:
        assert res.status == "completed" and res.converged, res
        assert (res.total_ms, res.downtime_ms) == (1234, 12)
        assert res.bitmaps_info == {"transferred": 4096, "resent-chunks": 1}
        # the destination runs the guest now: its end is not expected
        assert dst.allowed_status is None
    else:
        assert res.status == "timeout" and not res.converged, res
        assert dst.allowed_status == 1


def test_bench_measures_a_migration_that_won_the_race() -> None:
    """The benchmark's own loop (it requests postcopy on the way) shares
    the cancel with :func:`migration.run`."""
    src, dst = peers(True)
    mode = modes.Mode("live, short", "patched", live=True, timeout=0.2)
    sample = modes.Sample(mode.name, 1 << 40, 1, "sparse", False, "?")
    src.cmd("migrate")
    modes._drive(cast(VM, src), cast(VM, dst), mode, sample)
    assert sample.converged and sample.status == "completed", sample
    assert (sample.total_ms, sample.wire, sample.resent_chunks) == \
        (1234, 4096, 1)


def test_a_cancel_that_never_ends_the_migration_is_an_error() -> None:
    class Stuck(RacingPeer):
        def cmd(self, command: str, **args: Any) -> Any:
            if command == "migrate_cancel":
                self.commands.append(command)
                self.status = "cancelling"
                return {}
            return super().cmd(command, **args)

    src = Stuck(False)
    src.cmd("migrate")
    with pytest.raises(migration.MigrationTimeout, match="cancelling"):
        migration.cancel(cast(VM, src), timeout=0.2)
