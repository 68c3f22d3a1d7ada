"""Peers that stall and links that are slow (pyqemu/checks/links.py): the
source's monitor answers while the destination does not read, cancel and
yank end the migration, no bit is lost, and bad links either carry a
live migration or leave it cancellable."""

from __future__ import annotations

import pytest

from pyqemu.checks import links
from pyqemu.paths import SANITIZED

#: query-migrate's answer while the destination stalls: what the median
#: must stay under, and what no answer may take (a blocked monitor does
#: not answer at all; a loaded machine delays some answers)
QUERY_MEDIAN_S = 0.1
ANSWER_MAX_S = 1.0
#: cancel or yank until the migration has ended
END_MAX_S = 1.0


def check_stall(r: links.StallResult) -> None:
    assert r.query_median < QUERY_MEDIAN_S, r
    assert r.slowest < ANSWER_MAX_S, r
    assert r.outcome in ("cancelled", "failed"), r
    assert 0 <= r.end_s < END_MAX_S, r
    assert r.source_running, r
    assert r.bitmaps_intact, r
    assert r.retry == "completed, bitmaps equal", r


@pytest.mark.parametrize("how,end", [("sigstop", "cancel"),
                                     ("partition", "yank")])
def test_stalled_destination(layout, how, end):
    check_stall(links.stall(layout, how, end))


def test_stalled_destination_sanitized(layout, sanitized):
    """The same on the ASan and UBSan build: no report, no abort (the VM's
    teardown fails the test on either)."""
    check_stall(links.stall(layout, "sigstop", "yank", flavour=SANITIZED))


@pytest.mark.parametrize("setting", sorted(links.SLOW))
def test_slow_link(layout, setting):
    r = links.slow(layout, setting)
    if setting == "too-slow":
        # migrate_cancel shuts the return path down before it sets
        # "cancelling" (migration_cancel(), stock 10.2.2 too), so the
        # return path's error sometimes wins and the migration ends
        # "failed": what matters is that it ended, still active at the
        # cancel, with the source running and its bitmaps intact.
        assert r.outcome in ("active, then cancelled",
                             "active, then failed"), r
        assert r.source_running, r
    else:
        assert r.outcome == "completed", r
        assert r.downtime_ms >= 0, r
    assert r.bitmaps_equal, r
    assert r.query_max_s < ANSWER_MAX_S, r


def test_postcopy_live_recovers_after_pause(layout):
    """The migration recovers and completes.  A bitmap whose data was
    still arriving at the pause is dropped by the destination, as stock
    QEMU drops it on any broken stream; none arrives different."""
    status, bitmaps = links.postcopy_recovery(layout)
    assert status == "recovered", (status, bitmaps)
    assert not bitmaps.startswith("DIFFER"), bitmaps
