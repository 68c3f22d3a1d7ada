"""Faults during live bitmap migration (pyqemu/faults.py): a running
writer guest migrated between two network namespaces over a rate-limited
veth link, broken during the bitmap bulk phase."""

from __future__ import annotations

import pytest

from pyqemu import faults


@pytest.mark.parametrize("scenario", faults.SCENARIOS)
def test_fault_during_bulk_phase_loses_nothing(scenario):
    r = faults.run(scenario)
    assert r.outcome in ("cancelled", "failed"), r
    assert r.source_running, r
    assert r.bitmaps_intact, r
    assert r.destination in ("no bitmaps", "process gone"), r
    assert r.retry == "completed, bitmaps equal", r


def test_postcopy_failure_behaviour_is_unchanged():
    """The destination dying during bitmap postcopy ends the same way with
    the series, live or not, as with stock QEMU."""
    stock = faults.postcopy_failure("stock", live=False)
    assert faults.postcopy_failure("patched", live=False) == stock
    assert faults.postcopy_failure("patched", live=True) == stock
