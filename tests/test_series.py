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

#: Patches whose context includes hbitmap_set()'s definition in
#: util/hbitmap.c: the drift below must make each of them fail.
FAIL_ON_DRIFT = ("0012-", "0013-", "0017-", "0018-")
GIT = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]


def drifted_clone(stock: Path, tree: Path) -> str:
    """A clone of the stock tree where util/hbitmap.c changed under the
    series (hbitmap_set renamed); returns the drift commit."""
    subprocess.run(["git", "clone", "-q", "--shared", str(stock), str(tree)],
                   check=True)
    hb = tree / "util" / "hbitmap.c"
    hb.write_text(hb.read_text().replace("hbitmap_set(", "hbitmap_Set("))
    subprocess.run([*GIT, "-C", str(tree), "commit", "-qam", "drift"],
                   check=True)
    return subprocess.run(["git", "-C", str(tree), "rev-parse", "HEAD"],
                          check=True, capture_output=True,
                          text=True).stdout.strip()


def failing_by_git(tree: Path, patches: list[series.Patch]) -> set[str]:
    """The oracle, with plain git and none of pyqemu's code: which patches
    `git am` rejects, applied in order, skipping the rejected ones."""
    failed = set()
    for p in patches:
        res = subprocess.run([*GIT, "-C", str(tree), "am", "-q", "--keep-cr",
                              str(p.path)], capture_output=True, check=False)
        if res.returncode != 0:
            failed.add(p.path.name)
            subprocess.run([*GIT, "-C", str(tree), "am", "--abort"],
                           capture_output=True, check=False)
    return failed


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
    patches = series.patches()
    tree = workdir / "tree"
    drift = drifted_clone(stock, tree)
    expected = failing_by_git(tree, patches)
    for prefix in FAIL_ON_DRIFT:
        assert any(name.startswith(prefix) for name in expected), \
            f"the drift does not break {prefix}*: the test lost its point"

    # the same tree back at the drift (a second clone costs 8 s)
    subprocess.run(["git", "-C", str(tree), "reset", "-q", "--hard", drift],
                   check=True)
    with pytest.raises(series.SeriesError) as e:
        series.apply_series(tree, patches)
    lines = str(e.value).splitlines()
    named = {re.search(r" (\S+\.patch) ", ln).group(1) for ln in lines}
    assert named == expected, lines
    for ln in lines:
        assert "does not apply" in ln and "error: " in ln, ln
        if ln.split()[2].startswith(FAIL_ON_DRIFT):
            assert "hbitmap.c" in ln, ln


def test_every_fix_names_its_own_iotest():
    """series check runs a patch's own iotests on its own prefix: every
    stand-alone fix (Cc: stable) must bring a regression test -- an iotest,
    or a unit test in test-hbitmap, which every prefix runs."""
    for p in series.patches():
        text = p.path.read_text()
        if "Cc: qemu-stable@nongnu.org" not in text:
            continue
        assert seriescheck.own_iotests(p.path) or \
            "tests/unit/test-hbitmap.c" in text, p.path.name
    pending = next(p for p in series.patches() if "pending" in p.path.name)
    assert seriescheck.own_iotests(pending.path) == ("migrate-bitmaps-pending",)


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


def test_only_justified_checkpatch_warnings_are_waived(workdir):
    """An iotest's .out cannot carry a license line, and a file that
    MAINTAINERS already covers needs no new line: those two warnings are
    waived (and reported as such); the same warnings for anything else are
    not."""
    (workdir / "MAINTAINERS").write_text("Block layer core\n"
                                         "F: tests/qemu-iotests/\n")
    scripts = workdir / "scripts"
    scripts.mkdir()
    warn = ("WARNING: Does new file 'tests/qemu-iotests/tests/t.out' need "
            "'SPDX-License-Identifier'?\\n"
            "WARNING: Does new file 'docs/x.rst' need "
            "'SPDX-License-Identifier'?\\n"
            "WARNING: added, moved or deleted file(s):\\n\\n"
            "  tests/qemu-iotests/tests/t\\n  tests/qemu-iotests/tests/t.out\\n"
            "\\nDoes MAINTAINERS need updating?\\n"
            "WARNING: added, moved or deleted file(s):\\n\\n  util/new.c\\n"
            "\\nDoes MAINTAINERS need updating?\\n"
            "total: 0 errors, 4 warnings, 10 lines checked\\n")
    (scripts / "checkpatch.pl").write_text(f'print "{warn}"; exit 1;\n')
    waived: list[str] = []
    problems = seriescheck.checkpatch(workdir, Path("x.patch"), waived)
    assert len(waived) == 2, waived
    assert [p.split("'")[1] if "'" in p else p for p in problems] == \
        ["docs/x.rst",
         "checkpatch WARNING: added, moved or deleted file(s): util/new.c"]


def test_the_fixes_come_first() -> None:
    """series.FIXES is the prefix that the fixes flavour builds and whose
    tests series check runs on each parent: every patch that asks for
    qemu-stable is in it, and the first patch after it is not a fix."""
    patches = series.patches()
    fixes = series.fixes(patches)
    stable = [p.path.name for p in patches
              if "Cc: qemu-stable@nongnu.org" in p.path.read_text()]
    assert stable, "no patch asks for qemu-stable: the test lost its point"
    assert set(stable) <= {p.path.name for p in fixes}, stable
    after = patches[len(fixes)]
    assert "Cc: qemu-stable" not in after.path.read_text()
    assert "] hbitmap: track changes" in after.subject, after.subject
