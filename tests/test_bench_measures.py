"""What ``bench migrate`` builds its comparison on must itself be right.

The benchmark does not assert, so these tests hold its instruments to
account: the density fill must produce exactly the bitmaps it claims,
the byte count read from the stock build's trace must agree with the
series' own counter, and the "bytes at risk" must see a postcopy phase
(and see none in live mode, which is the series' promise).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from pyqemu.bench import compare, fill, modes
from pyqemu.machine.vm import VM, Bitmap, Disk
from pyqemu.paths import Layout
from pyqemu.util.units import GiB, KiB, MiB, TiB

PARAMS = {"max-bandwidth": 400 * MiB, "downtime-limit": 300}


@pytest.mark.parametrize("density", fill.DENSITIES)
def test_fill_makes_exactly_the_claimed_bitmaps(layout: Layout,
                                                workdir: Path,
                                                density: str) -> None:
    """Every bitmap of the disk holds the density's ranges, and nothing
    else: compared region by region, not by count alone."""
    size = 3 * TiB + 5 * GiB        # not a multiple of any stretch
    disk = Disk("disk0", size, bitmaps=(Bitmap("a", 64 * KiB),
                                        Bitmap("b", 64 * KiB)))
    with VM(layout, "src", [disk], "patched", workdir) as vm:
        vm.add_bitmaps()
        fill.fill(vm, disk, density)
        want = fill.ranges(size, 64 * KiB, density)
        for name in ("a", "b"):
            got = vm.regions("disk0", name, max_regions=4096)
            assert _merged(got) == _merged(want), (density, name)
        count = vm.bitmaps()[("disk0", "a")]["count"]
        assert count == min(fill.dirty_bits(size, 64 * KiB, density) *
                            64 * KiB, size)
        # the helper node is gone, and with it its bitmap
        assert {n["node-name"] for n in vm.cmd("query-named-block-nodes",
                                               flat=True)} == {"disk0"}


def _merged(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for off, length in sorted(ranges):
        if out and out[-1][0] + out[-1][1] == off:
            out[-1] = (out[-1][0], out[-1][1] + length)
        else:
            out.append((off, length))
    return out


def test_fill_mixed_granularities_only_when_full(layout: Layout,
                                                 workdir: Path) -> None:
    """Sparse and half depend on the granularity, so mixed ones are
    refused; full sets every bit of each bitmap (the demo's bitmaps of
    16 KiB, 64 KiB and 1 MiB), the disabled one too."""
    disk = Disk("disk0", TiB, bitmaps=(Bitmap("a", 64 * KiB),
                                       Bitmap("b", 4 * KiB),
                                       Bitmap("c", MiB, disabled=True)))
    with VM(layout, "src", [disk], "patched", workdir) as vm:
        vm.add_bitmaps()
        with pytest.raises(ValueError, match="one granularity"):
            fill.fill(vm, disk, "sparse")
        fill.fill(vm, disk, "full")
        counts = {name: d["count"] for (_, name), d in vm.bitmaps().items()}
        assert counts == {"a": TiB, "b": TiB, "c": TiB}


@pytest.mark.parametrize("density", ("sparse", "full"))
def test_trace_bytes_agree_with_the_series_counter(layout: Layout,
                                                   workdir: Path,
                                                   density: str) -> None:
    """Stock has no bitmap byte counter, so the bench counts its chunks
    in the trace.  On the patched build both exist: they must agree to
    within the bitmaps' names, which ride on their first chunk only.
    Postcopy requested at once: every chunk goes after the switchover,
    so the bytes at risk are all of them."""
    mode = modes.Mode("postcopy, counted twice", "patched", postcopy_after=0)
    s = modes.run(layout, mode, 4 * TiB, 3, density, PARAMS, workdir)
    assert s.converged, s
    assert s.postcopy == "entered"
    assert s.wire and s.traced_wire
    assert 0 <= s.wire - s.traced_wire <= 3 * 64, (s.wire, s.traced_wire)
    assert s.at_risk == s.traced_wire
    assert s.risk_ms is not None and s.risk_ms > 0
    assert s.equal is True


def test_live_mode_leaves_nothing_for_after_the_switchover(
        layout: Layout, workdir: Path) -> None:
    """Live mode plus a postcopy request that comes only after the bulk
    phase: no chunk may follow the switchover."""
    mode = modes.Mode("live, late postcopy", "patched", live=True,
                      postcopy_after=30)
    s = modes.run(layout, mode, 4 * TiB, 2, "full", PARAMS, workdir)
    assert s.converged and s.equal is True, s
    assert s.postcopy == "", s          # completed long before 30 s
    assert s.at_risk == 0 and s.at_risk_chunks == 0
    assert s.usable_ms is not None and s.visible_downtime_ms is not None


def test_the_bitmap_section_of_the_downtime_is_measured(
        layout: Layout, workdir: Path) -> None:
    """256 MiB of fully dirty bitmaps: QEMU's own per-section downtime
    accounting is what the benchmark reads for the bitmaps' share of the
    downtime, on both ends.  Live mode must report the section; stock
    precopy with a downtime limit that lets it finish is the positive
    control, where the same instrument must see the bitmaps go through
    the downtime: over 100 ms (hundreds here), a lower bound that a
    loaded machine only makes easier to meet.

    That live mode's share is next to nothing (the issue's first report
    of live mode was 8 ms above the floor) is a wall-clock figure that a
    loaded machine can inflate at will: the benchmark holds it to its
    target (compare.BITMAP_SECTION_MS), not this test."""
    live = modes.run(layout, modes.BY_NAME["live"], 16 * TiB, 8, "full",
                     PARAMS, workdir)
    assert live.converged and live.equal is True, live
    assert live.bitmap_save_us is not None and live.bitmap_load_us is not None
    stock = modes.run(layout, modes.BY_NAME["stock precopy, 20 s allowed"],
                      16 * TiB, 8, "full", PARAMS, workdir)
    assert stock.converged and stock.equal is True, stock
    assert stock.bitmap_load_us is not None
    assert stock.bitmap_load_us > 100_000, stock


def test_the_bench_holds_live_mode_to_its_downtime_share() -> None:
    """The target that took over the test's old "< 20 ms": met at the
    measured 0.2 ms, missed at the 8 ms of the first report."""
    def summary(ms: float) -> compare.Summary:
        d = compare.dist([ms])
        return compare.Summary("live", TiB, "full", 1, 1, None, None, None,
                               None, 0, None, d, d, None, None, "1/1", "")

    for ms, met in ((0.2, True), (8.0, False)):
        got = [t for t in compare.targets([summary(ms)])
               if t.what.startswith("bitmap section")]
        assert [t.met for t in got] == [met], got


def test_ratios_against_stock_and_against_the_fixes() -> None:
    """One row per case and median: live mode against the fixes as well
    as against stock, and where stock precopy never converges, stock's
    ratios come from its run with 20 s allowed, said in the cell."""
    def summary(mode: str, runs: int, ms: float | None) -> compare.Summary:
        d = None if ms is None else compare.dist([ms])
        return compare.Summary(mode, TiB, "full", runs, 0 if ms is None
                               else runs, d, d, d, d, 0, None, None, None,
                               None, None, "1/1", "")

    sums = [summary("stock precopy", 1, None),
            summary(compare.STOCK_ALLOWED, 1, 400.0),
            summary(modes.FIXES, 3, 40.0), summary("live", 3, 2.0)]
    lines = compare.ratios_table(sums).splitlines()
    row = next(ln for ln in lines if "downtime seen by the guest" in ln)
    assert [c.strip() for c in row.strip("|").split("|")] == [
        "1 TiB", "full", "downtime seen by the guest",
        "never converges; 400 with 20 s allowed", "40", "2.0", "0.10x",
        "5.0e-03x", "0.05x"]
    # without the allowed run, no ratio against stock at all
    row = next(ln for ln in compare.ratios_table(
        [s for s in sums if s.mode != compare.STOCK_ALLOWED]).splitlines()
        if "| total" in ln)
    assert [c.strip() for c in row.strip("|").split("|")][3:] == [
        "never converges", "40", "2.0", "-", "-", "0.05x"]
