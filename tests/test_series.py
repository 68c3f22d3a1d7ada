"""The patch series as a maintainer receives it: checkpatch-clean, signed
off, subjects in 'subsystem: summary' form, applying in order (the cheap
parts of ``pyqemu series check``; ``--full`` builds every prefix)."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from pyqemu import series, seriescheck
from pyqemu.paths import Layout


def test_series_is_clean_and_applies():
    reports, clean = seriescheck.check(quick=True)
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


def test_failing_patches_are_all_named_with_the_reason():
    """The rebase aid: against another tree, every failing patch is listed
    with git's reason, not just the first one."""
    stock = Layout.default("debian").source("stock")
    tmp = Path(tempfile.mkdtemp(prefix="pq-series-"))
    try:
        tree = tmp / "tree"
        subprocess.run(["git", "clone", "-q", "--shared", str(stock),
                        str(tree)], check=True)
        patches = series.patches()
        # a tree where util/hbitmap.c changed under the series
        hb = tree / "util" / "hbitmap.c"
        hb.write_text(hb.read_text().replace("hbitmap_set(", "hbitmap_Set("))
        subprocess.run(["git", "-C", str(tree), "-c", "user.name=t", "-c",
                        "user.email=t@t", "commit", "-qam", "drift"],
                       check=True)
        with pytest.raises(series.SeriesError) as e:
            series.apply_series(tree, patches)
        message = str(e.value)
        assert patches[0].path.name in message
        assert "does not apply" in message and "hbitmap.c" in message
        # later patches were tried too: the block layer one applies
        assert patches[1].path.name not in message
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
