"""The upstream reproducers (``upstream/``) are the evidence the series
gives upstream instead of its code, so each must tell a QEMU with the
defect from one without it.

Every reproducer runs on stock 10.2.2, where its defect must show
(``REPRODUCED``: the positive control), and on the patched build, where
it must not (``NOT REPRODUCED``: the negative control) when a patch of
the series fixes it.  A defect no patch fixes yet (``fixed_by=None`` in
:data:`pyqemu.checks.reproducers.REPRODUCERS`) must still show on the
patched build; the fix flips it there, in the same commit.  A script's
own failure (``ERROR``) or a ``CANNOT RUN`` fails the test either way.
Debian's 7.2 is left to ``./run check upstream``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from pyqemu.checks import reproducers as rp
from pyqemu.paths import Layout

LABELS = {"stock": "stock-10.2.2", "patched": "patched"}


@pytest.fixture(scope="module")
def bins(layout: Layout) -> dict[str, rp.Binaries]:
    rp.require_checker()
    return {b.label: b for b in rp.binaries(layout, debian=False)}


@pytest.mark.parametrize("rep, flavour", [
    pytest.param(rep, flavour, id=f"{rep.name}-{flavour}",
                 marks=[pytest.mark.slow] if LABELS[flavour] in rep.slow
                 else [])
    for rep in rp.REPRODUCERS for flavour in LABELS])
def test_reproducer(bins: dict[str, rp.Binaries], rep: rp.Reproducer,
                    flavour: str) -> None:
    label = LABELS[flavour]
    got = rp.run(rep, bins[label], quick=True)
    want = rp.expected(rep, label)
    assert got.verdict == want, \
        f"{rep.script} {' '.join(rep.args)} on {label}: {got.verdict}: " \
        f"{got.text}\n{got.output}"


def _script(tmp_path: Path, body: str) -> rp.Reproducer:
    path = tmp_path / "fake.py"
    path.write_text(body)
    return rp.Reproducer("fake", str(path), "a fake", "0000")


def test_no_verdict_line_is_an_error(tmp_path: Path) -> None:
    """A script that dies half-way must not read as a fixed QEMU."""
    rep = _script(tmp_path, "print('# started')\nraise SystemExit(1)\n")
    got = rp.run(rep, rp.Binaries("x", Path(sys.executable),
                                  Path(sys.executable)))
    assert got.verdict == "ERROR" and "no verdict line" in got.text


def test_verdict_must_match_exit_status(tmp_path: Path) -> None:
    rep = _script(tmp_path, "print('NOT REPRODUCED: fine')\n")
    got = rp.run(rep, rp.Binaries("x", Path(sys.executable),
                                  Path(sys.executable)))
    assert got.verdict == "ERROR" and "exit status 0" in got.text


def test_deadline_kills_the_script(tmp_path: Path) -> None:
    rep = _script(tmp_path, "import time\ntime.sleep(60)\n")
    got = rp.run(rep, rp.Binaries("x", Path(sys.executable),
                                  Path(sys.executable)), timeout=1)
    assert got.verdict == "ERROR" and got.seconds < 30


def test_check_upstream_table_files_and_result(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture
                                               ) -> None:
    """``./run check upstream`` ends like every check: the table, the
    files it wrote, one ``result:`` line; a verdict against the series'
    claim (here: a fixed defect still showing on patched) fails it.
    Canned outcomes, nothing built or run."""
    from pyqemu.build import driver
    monkeypatch.setattr(driver, "build", lambda *a, **k: [])
    monkeypatch.setattr(rp, "require_checker", lambda: None)
    fake = Path(sys.executable)
    monkeypatch.setattr(rp, "binaries", lambda layout: [
        rp.Binaries(label, fake, fake) for label in
        ("debian-7.2", "stock-10.2.2", "patched")])

    def run(rep: rp.Reproducer, b: rp.Binaries) -> rp.Outcome:
        verdict = rp.expected(rep, b.label) or "CANNOT RUN"
        if rep.name == "resize-during-migration" and b.label == "patched":
            verdict = "REPRODUCED"
        return rp.Outcome(verdict, "canned", 0.0, "")

    monkeypatch.setattr(rp, "run", run)
    layout = Layout(tmp_path / "cache")
    assert rp.main(layout) == 1
    out = capsys.readouterr().out
    lines = out.rstrip("\n").splitlines()
    assert lines[-1].startswith("result: ") and "FAILED: 1 unexpected" in \
        lines[-1] and "resize-during-migration on patched" in lines[-1]
    wrote = [Path(ln.removeprefix("wrote ")) for ln in lines
             if ln.startswith("wrote ")]
    assert wrote == [layout.results("upstream") / f"results.{x}"
                     for x in ("md", "json")]
    assert all(p.exists() for p in wrote)
    row = next(ln for ln in lines if ln.startswith("| resize-during"))
    assert [c.strip() for c in row.strip("|").split("|")] == [
        "resize-during-migration", "0007", "cannot run", "reproduced",
        "reproduced (!)"]
