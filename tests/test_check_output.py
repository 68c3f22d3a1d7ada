"""How every ``./run check`` ends, without running its scenarios: the
scenario functions are replaced by canned results, so only the printing
and saving under test run.  Each check ends like the demo: the path of
every file it wrote, then one ``result:`` line; ``check faults`` says
each scenario's end as it comes, ``check fuzz`` calls a clean rejection
a rejection, not an error."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pyqemu.checks import backup, faults, libvirt, links, operator
from pyqemu.checks.fuzz import campaign
from pyqemu.checks.fuzz import report as fuzz_report
from pyqemu.machine import accel
from pyqemu.paths import Layout


@pytest.fixture
def layout(tmp_path, monkeypatch) -> Layout:
    """A cache of its own (the results go there), nothing built: neither
    QEMU nor, for check libvirt, libvirt (into this empty cache, that
    fetched the source and compiled it: two minutes)."""
    for module in (faults, backup, libvirt, operator):
        monkeypatch.setattr(module, "build", lambda *a, **k: [])
    for module in (libvirt, operator):
        monkeypatch.setattr(module, "build_libvirt", lambda *a, **k: None)
    return Layout(tmp_path / "cache")


def ending(out: str) -> tuple[list[Path], str]:
    """The files a check says it wrote, and its last line."""
    lines = out.rstrip("\n").splitlines()
    wrote = [Path(ln.removeprefix("wrote ")) for ln in lines
             if ln.startswith("wrote ")]
    return wrote, lines[-1]


def test_check_faults_prints_each_scenario_and_a_result(layout, monkeypatch,
                                                         capsys):
    def run(layout, scenario):
        ok = scenario != "cut-link"
        return faults.FaultResult(scenario, "cancelled", True, ok,
                                  "no bitmaps", "completed, bitmaps equal", ok)

    monkeypatch.setattr(faults, "run", run)
    monkeypatch.setattr(faults, "postcopy_failure",
                        lambda layout, flavour, live: faults.POSTCOPY_FAILURE)
    monkeypatch.setattr(links, "stall", lambda layout, how, end: links.StallResult(
        how, end, "patched", [0.001] * 3, 0.001, 0.002, 0.01, "cancelled",
        True, True, "completed, bitmaps equal"))
    monkeypatch.setattr(links, "slow", lambda layout, setting: links.SlowResult(
        setting, "completed", 3.0, 0.01, True, True))
    monkeypatch.setattr(links, "postcopy_recovery",
                        lambda layout: ("recovered", "all equal"))
    assert faults.main(layout) == 1
    out, err = capsys.readouterr()
    progress = [ln for ln in err.splitlines() if "] fault " in ln]
    total = len(faults.SCENARIOS) + len(faults.POSTCOPY_RUNS)
    assert len(progress) == total, err
    assert "cut-link: NOT as it must be" in err
    wrote, last = ending(out)
    assert last.startswith("result: FAILED")
    assert last.endswith(f"scenarios, guests on {accel.label()})"), last
    assert wrote == [layout.root / "bench" / "faults" / f"results.{x}"
                     for x in ("md", "json")]
    assert all(p.exists() for p in wrote)
    assert not json.loads(wrote[1].read_text())["ok"]


def test_check_fuzz_says_rejected_cleanly_and_ends_with_a_result(
        layout, monkeypatch, capsys):
    finding = layout.root / "fuzz-findings" / "finding-3-17.bin"
    summary = campaign.Summary(200, {"loaded": 31, "error": 168, "crash": 1},
                               [("sector=0", finding, "Assertion failed")],
                               42.0)
    monkeypatch.setattr(fuzz_report, "run", lambda layout, n, seed: summary)
    assert fuzz_report.main(layout, 200, 3) == 1
    out = capsys.readouterr().out
    assert "loaded 31, rejected cleanly 168, crash 1" in out
    assert "error 168" not in out
    wrote, last = ending(out)
    assert last.startswith("result: 1 FINDINGS in 200 inputs")
    assert wrote == [layout.root / "bench" / "fuzz" / "results.md",
                     layout.root / "bench" / "fuzz" / "results.json",
                     finding, finding.with_suffix(".txt")]
    summary.counts, summary.findings = {"loaded": 32, "error": 168}, []
    assert fuzz_report.main(layout, 200, 3) == 0
    wrote, last = ending(capsys.readouterr().out)
    assert last == ("result: no findings in 200 inputs: every stream loaded "
                    "or was rejected cleanly") and len(wrote) == 2


def test_check_backup_ends_with_a_result(layout, monkeypatch, capsys):
    def run(layout, scenario, flavour):
        return backup.BackupResult(scenario.name, flavour,
                                   migration="completed", compare="identical",
                                   inc_clusters=3)

    monkeypatch.setattr(backup, "run", run)
    assert backup.main(layout, ("small",)) == 0
    wrote, last = ending(capsys.readouterr().out)
    assert last.startswith("result: restored chain equals the disk: yes")
    assert last.endswith(f"; guests on {accel.label()})"), last
    assert wrote == [layout.root / "bench" / "backup" / f"results.{x}"
                     for x in ("md", "json")]


def test_check_libvirt_ends_with_a_result(layout, monkeypatch, capsys):
    monkeypatch.setattr(libvirt, "run_all",
                        lambda layout, flavours: libvirt.Check([], {}, []))
    assert libvirt.main(layout) == 1
    wrote, last = ending(capsys.readouterr().out)
    assert last.startswith("result: restored disk equals the disk: NO")
    assert wrote == [layout.root / "bench" / "libvirt" / f"results.{x}"
                     for x in ("md", "json")]


def test_check_operator_ends_with_a_result(layout, monkeypatch, capsys):
    """No domain migrated is a failure, said in the result line."""
    monkeypatch.setattr(operator, "run_all", lambda layout, runs, concurrency:
                        operator.Result(operator.Workload(), [], [], []))
    assert operator.main(layout) == 1
    wrote, last = ending(capsys.readouterr().out)
    assert last.startswith("result: operator check (0 s): FAILED"), last
    assert wrote == [layout.root / "bench" / "operator" / f"results.{x}"
                     for x in ("md", "json")]
