"""The model of ``bench writeload`` (pyqemu/bench/writeload/), without
QEMU: the benchmark sets its measurements against these numbers, so
they must say what the module's docstring says they say."""

from __future__ import annotations

import json
import math

from pyqemu.bench.writeload import model as wl
from pyqemu.bench.writeload import report, results
from pyqemu.util.units import KiB, MiB


def per_chunk() -> wl.Pattern:
    return next(p for p in wl.PATTERNS if p.name == "one per chunk")


def test_cursor_walks_the_bulk_in_order() -> None:
    # bitmap A: 4 chunks, chunk 1 non-zero; bitmap B: 8 chunks, none
    layout = [(4, [1]), (8, [])]
    # a chunk of zeroes is 13 bytes on the wire, one with data 1045
    total = 4 * 13 + (1045 - 13) + 8 * 13
    assert wl.Replay.cursor(layout, 0.0) == (0, 0)
    # chunk 0 (13 B) and chunk 1 (1045 B) sent: the cursor is at chunk 2
    assert wl.Replay.cursor(layout, (13 + 1045) / total) == (0, 2)
    assert wl.Replay.cursor(layout, (13 + 1044) / total) == (0, 1)
    assert wl.Replay.cursor(layout, 1.0) == (2, 0)
    positions = [wl.Replay.cursor(layout, i / 50) for i in range(51)]
    assert positions == sorted(positions)


def test_replay_counts_new_bits_behind_the_cursor_once() -> None:
    config = wl.writer(per_chunk(), 0)
    replay = wl.Replay(config, 0)
    # after the bulk: every write is behind the cursor; 10 writes, 10
    # chunks of bm-4k, and all in chunk 0 of bm-64k (512 MiB)
    assert replay.resent([(0, 10, 1.0)]) == 11
    # before the bulk reached anything: nothing is resent
    assert replay.resent([(10, 20, 0.0)]) == 0
    # writing the same granules again changes no bit, so no chunk: a
    # stride of exactly one chunk over 4 chunks comes back after 4 writes
    lap = wl.Replay(wl.WriterConfig(length=4 * wl.SPAN_4K,
                                    stride=wl.SPAN_4K), 0)
    assert lap.resent([(0, 4, 1.0)]) == 4 + 1
    assert lap.resent([(4, 40, 1.0)]) == 0


def test_threshold_of_one_write_per_chunk() -> None:
    """r* = bw / (1045 * 17/16), less the lap's extra 64 KiB chunk."""
    r = wl.threshold_rate(per_chunk(), 64 * MiB)
    assert math.isclose(r, 64 * MiB / (wl.CHUNK_WIRE * 17 / 16), rel_tol=0.01)
    assert math.isclose(wl.dirty_bytes_per_s(per_chunk(), r), 64 * MiB,
                        rel_tol=1e-6)


def test_hot_set_never_outruns_the_bandwidth() -> None:
    hot = next(p for p in wl.PATTERNS if p.name == "hot set")
    assert hot.length == wl.HOT_CHUNKS * 32 * MiB
    assert math.isinf(wl.threshold_rate(hot, 64 * MiB))
    # at most its chunks (4 + 1) per lap
    assert wl.dirty_bytes_per_s(hot, 1e9) <= 5 / wl.LAP * wl.CHUNK_WIRE


def test_distinct_chunks() -> None:
    seq = next(p for p in wl.PATTERNS if p.name == "sequential")
    assert wl.distinct_chunks(seq, 0, 4 * KiB) == 0
    # 8192 sequential 4 KiB writes fill one 32 MiB chunk (and touch the next)
    assert wl.distinct_chunks(seq, 8192, 4 * KiB) == 2
    rnd = wl.PATTERNS[0]
    assert math.isclose(wl.distinct_chunks(rnd, 100, 4 * KiB), 100,
                        rel_tol=0.01)


def _hop(downtime: int, rate: float) -> results.Hop:
    return results.Hop(True, 1200, downtime, rate, 40 * KiB, 0, 5, 0,
                       0.0, 0.5, 3.0, 4.0, 0)


def _load(rate: int, idle: float, downtimes: tuple[int, ...],
          live_rate: float, plain_downtime: int) -> results.LoadResult:
    """A boot of the random pattern at rate setting *rate* (0: as fast as
    it goes): *idle* writes/s before and after the hops, one live hop per
    entry of *downtimes* (ms) with the guest at *live_rate* writes/s, and
    the migration without bitmaps at the idle rate; no stall, a 10 s
    boot.  The report tests differ only in these numbers, so each states
    just them."""
    return results.LoadResult("random", rate, idle, idle,
                              [_hop(d, live_rate) for d in downtimes],
                              _hop(plain_downtime, idle), 0, 10.0)


def test_report_of_a_sweep_states_both_targets() -> None:
    """The tables render (a row as long as its header) and the targets
    say met or MISSED from the numbers, both ways."""
    loads: list[results.Result] = [
        _load(1000, 1000.0, (3, 4, 5), 990.0, plain_downtime=2),
        _load(0, 4000.0, (30, 40, 50), 3000.0, plain_downtime=3),
        # as fast as it goes, the target is the held migrations' ratio
        # in one QEMU, not the hops' (0.75 here)
        results.CostResult("random", [3900.0, 4000.0], [4000.0, 4100.0])]
    tables = report.table(loads)
    assert "| random" in tables and "| 3900/4000" in tables, tables
    text = report.targets(loads)
    assert "live median 17.5 ms" in text and "MISSED" in text, text
    assert "paced: median 0.99" in text and \
        "as fast as it goes: median 0.98 over 1 boots" in text, text


def test_results_come_back_from_their_json() -> None:
    """The cover letter reads the write-load numbers from results.json."""
    loads: list[results.Result] = [
        results.LoadResult("hot set", 200, 200.0, 201.0,
                           [_hop(d, 199.0) for d in (3, 4)], _hop(2, 200.0),
                           0, 10.0),
        results.CostResult("hot set", [3000.0, 3100.0], [3050.0, 3000.0])]
    rows = json.loads(json.dumps(results.data(loads)))
    back = results.load_results(rows)
    assert back == loads
    assert report.target_values(back) == report.target_values(loads)


def test_fixes_only_set_against_live_under_the_same_writes() -> None:
    """A fixes-only boot is compared with the live hops of its own
    pattern and rate only, by the guest's downtime, and comes back from
    results.json (the cover letter reads it)."""
    not_converged = results.Hop(False, None, None, 900.0, None, None, None,
                                0, 0.0, 0.0, 0.0, 0.0, None)
    fixes_hops = [_hop(d, 3000.0) for d in (500, 600, 700)]
    for h, visible in zip(fixes_hops, (520.0, 610.0, 790.0), strict=True):
        h.visible_downtime_ms = visible
        h.switch_pending = 40 * MiB       # 625 ms at 64 MiB/s
    loads: list[results.Result] = [
        _load(0, 4000.0, (3, 4, 5), 3000.0, plain_downtime=3),
        # another rate: must not be taken for the fixes' comparison
        _load(1000, 1000.0, (90, 90, 90), 990.0, plain_downtime=2),
        results.FixesResult("random", 0, 4000.0, not_converged, fixes_hops,
                            12.0)]
    [(_, fixes, live)] = report.fixes_vs_live(loads)
    assert fixes is not None and live is not None
    assert (fixes.median, fixes.high, live.median) == (610.0, 790.0, 4.0)
    row = next(line for line in report.table(loads).splitlines()
               if "not in" in line)
    assert [c.strip() for c in row.strip("|").split("|")] == [
        "random", "max", "4.0 (3.0-5.0, n=3)", "not in 8 s",
        "610.0 (520.0-790.0, n=3)", "625", "yes", "152x"]
    assert "did not converge at 300 ms" in report.targets(loads)
    back = results.load_results(json.loads(json.dumps(results.data(loads))))
    assert back == loads
