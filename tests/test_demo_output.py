"""How ``./run demo`` reports, without running its migrations: the
migrations are replaced by canned runs, so only the table and the result
line are under test.  The real migrations are what ``./run demo`` is for
(and the e2e tests cover the fixes column's claim:
test_fixes_alone_converge_where_stock_counts_bits)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pyqemu.machine import accel, migration
from pyqemu.paths import Layout
from pyqemu.report import demo

SHA = {("disk0", "bm"): "ab" * 32}


def canned(live_converges: bool):
    """A stand-in for demo.migrate: stock and the fixes never converge,
    live mode does (or not) with its bitmaps intact."""
    def migrate(layout: Layout, case: demo.Case, column: demo.Column,
                workdir: Path) -> demo.Run:
        ok = column.name == "live" and live_converges
        res = migration.MigrationResult(
            "completed" if ok else "cancelled", 7 if ok else None,
            1 if ok else None, {}, {"transferred": 76288,
                                    "downtime-transferred": 31} if ok
            else None)
        return demo.Run(column.name, res, SHA, SHA if ok else {},
                        0.01 if ok else 1.5, 1.8 if ok else None)
    return migrate


@pytest.mark.parametrize("live_converges", (True, False))
def test_demo_shows_three_columns_per_case_and_a_result(
        tmp_path, monkeypatch, capsys, live_converges) -> None:
    monkeypatch.setattr(demo, "migrate", canned(live_converges))
    rc = demo.run(Layout(tmp_path / "cache"))
    out = capsys.readouterr().out
    assert f"VM: -machine pc ({accel.label()})" in out, out
    heads = [line.split() for line in out.splitlines()
             if line.split()[:1] == ["stock"] and "fixes" in line]
    assert heads == [["stock", "fixes", "live"]] * len(demo.CASES), out
    statuses = [line for line in out.splitlines()
                if line.startswith("status")]
    assert len(statuses) == len(demo.CASES)
    for line in statuses:
        assert line.count("not converged in 1.5 s") == \
            (2 if live_converges else 3), line
    last = out.rstrip("\n").splitlines()[-1]
    if live_converges:
        assert rc == 0
        assert last == ("result: the series migrated every bitmap intact, "
                        "live")
    else:
        assert rc == 1 and last == "result: FAILED: see above"
