"""The backup chain survives a live migration, checked by restoring it
(pyqemu/checks/backup.py): full backup, guest writes, live migration over
shared storage with the guest writing, writes on the destination,
incremental backup there with the migrated bitmap, then the restored chain
must equal the disk and the increment must hold exactly clusters the guest
wrote.

Stock QEMU runs the size it can migrate; the large bitmap (4 TiB at 4 KiB
granularity, 128 MiB of bitmap) only migrates with the series.  That stock
gives up on it is ``./run check backup``'s to show (15 s of a migration
that does not converge, a quarter of this module's time in a warm suite);
tests/test_e2e_migration.py asserts the same of stock with a bitmap a
sixteenth that size (test_multi_tib_bitmap_converges_only_with_the_series).
"""

from __future__ import annotations

import pytest

from pyqemu.checks import backup


def check(r: backup.BackupResult) -> None:
    assert r.migration == "completed", r
    assert r.compare == "identical", r
    # the increment is not empty, holds no cluster the guest did not
    # write after the full backup, and every cluster it surely wrote
    assert r.surely_written > 0 and r.inc_clusters >= r.surely_written, r
    assert r.inc_clusters <= r.written_clusters, r
    assert r.extra == 0, r
    assert r.missing == 0, r
    # the full backup is a real one: it holds the writes before it
    assert r.full_clusters > 0, r
    assert r.ok


@pytest.mark.parametrize("flavour", ["stock", "patched"])
def test_backup_chain_survives_migration(layout, workdir, flavour):
    r = backup.run(layout, backup.SMALL, flavour, workdir)
    check(r)
    assert r.live == (flavour == "patched"), r


def test_backup_chain_survives_migration_of_a_large_bitmap(layout, workdir):
    r = backup.run(layout, backup.LARGE, "patched", workdir)
    check(r)
    assert r.live, r
    # the bitmap went over while the guest wrote, thousands of times
    assert r.live_writes >= 1000, r
