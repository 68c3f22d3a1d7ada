"""The patch series as a maintainer receives it: checkpatch-clean, signed
off, subjects in 'subsystem: summary' form, applying in order (the cheap
parts of ``pyqemu series check``; ``--full`` builds every prefix)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from pyqemu.checks import seriescheck
from pyqemu.tree import series

#: The patches that touch util/hbitmap.c where the drift below changes it
#: (hbitmap_set's definition), so cannot apply to the drifted tree.
FAIL_ON_DRIFT = ("0001-", "0008-", "0009-")


def test_series_is_clean_and_applies(layout):
    reports, clean = seriescheck.check(layout, quick=True)
    assert reports, "patches/ is empty"
    assert clean, "\n".join(r.line() for r in reports)


@pytest.mark.parametrize("subject,ok", [
    ("[PATCH 01/14] hbitmap: track changes", True),
    ("[PATCH] migration/block-dirty-bitmap: check chunks", True),
    ("[PATCH v2 3/9] block, migration: do things", True),
    ("[PATCH 2/3] Fix everything", False),
    ("[PATCH 2/3] hbitmap:missing space", False),
])
def test_subject_form(subject, ok):
    assert bool(seriescheck.SUBJECT.match(subject)) == ok


def test_failing_patches_are_all_named_with_the_reason(layout, workdir):
    """The rebase aid: against another tree, every failing patch is listed
    with git's reason, not just the first one -- and no patch that applies
    is blamed."""
    stock = layout.source("stock")
    tree = workdir / "tree"
    subprocess.run(["git", "clone", "-q", "--shared", str(stock), str(tree)],
                   check=True)
    patches = series.patches()
    # a tree where util/hbitmap.c changed under the series
    hb = tree / "util" / "hbitmap.c"
    hb.write_text(hb.read_text().replace("hbitmap_set(", "hbitmap_Set("))
    subprocess.run(["git", "-C", str(tree), "-c", "user.name=t", "-c",
                    "user.email=t@t", "commit", "-qam", "drift"], check=True)
    with pytest.raises(series.SeriesError) as e:
        series.apply_series(tree, patches)
    lines = str(e.value).splitlines()
    named = {re.search(r" (\S+\.patch) ", ln).group(1) for ln in lines}
    expected = {p.path.name for p in patches
                if p.path.name.startswith(FAIL_ON_DRIFT)}
    assert named == expected, lines
    for ln in lines:
        assert "does not apply" in ln and "hbitmap.c" in ln, ln


def test_checkpatch_that_cannot_run_is_a_failure(workdir):
    """A checkpatch that dies is not a clean patch."""
    scripts = workdir / "scripts"
    scripts.mkdir()
    (scripts / "checkpatch.pl").write_text("die 'broken checkpatch';\n")
    patch = series.patches()[0].path
    problems = seriescheck.checkpatch(workdir, patch)
    assert problems and "broken checkpatch" in problems[0], problems


def test_checkpatch_findings_are_reported(workdir):
    scripts = workdir / "scripts"
    scripts.mkdir()
    (scripts / "checkpatch.pl").write_text(
        'print "WARNING: line too long\\n"; exit 1;\n')
    problems = seriescheck.checkpatch(workdir, Path("x.patch"))
    assert problems == ["checkpatch WARNING: line too long"]
