"""Faults during live bitmap migration (pyqemu/checks/faults.py): a running
writer guest migrated between two network namespaces over a rate-limited
veth link, broken during the bitmap bulk phase."""

from __future__ import annotations

import pytest

from pyqemu.checks import faults


@pytest.mark.parametrize("scenario", faults.SCENARIOS)
def test_fault_during_bulk_phase_loses_nothing(layout, scenario):
    r = faults.run(layout, scenario)
    assert r.outcome in ("cancelled", "failed"), r
    assert r.source_running, r
    assert r.bitmaps_intact, r
    assert r.destination in ("no bitmaps", "process gone"), r
    assert r.retry == "completed, bitmaps equal", r


@pytest.mark.parametrize("flavour,live", [("stock", False),
                                          ("patched", False),
                                          ("patched", True)])
def test_postcopy_failure_behaviour_is_unchanged(layout, flavour, live):
    """The destination dying during bitmap postcopy ends as it does with
    stock QEMU (pinned: paused postcopy, source stopped), with the series
    too, live or not."""
    got = faults.postcopy_failure(layout, flavour, live)
    assert got == faults.POSTCOPY_FAILURE
