"""Live bitmap migration of a running guest whose own disk I/O, through an
emulated IDE controller, keeps dirtying the bitmaps (tests/guest/writer.S).

The guest is alive before, during and after migration (its serial counter
keeps growing), every destination bitmap equals the source bitmap at the
switchover (sha256 and regions), and the bitmaps keep tracking the
guest's writes on the destination.
"""

from __future__ import annotations

from pathlib import Path

from pyqemu.machine import guest, migration
from pyqemu.machine.vm import Bitmap, Disk, Pair
from pyqemu.paths import Layout
from pyqemu.util.poll import until
from pyqemu.util.units import KiB, MiB, TiB

LIVE = {"dirty-bitmaps": True, "dirty-bitmaps-live": True, "events": True}
BITMAPS = (Bitmap("bm-4k", 4 * KiB), Bitmap("bm-64k", 64 * KiB),
           Bitmap("bm-1m", MiB))


def writer_pair(layout: Layout, workdir: Path, size: int = TiB,
                **kwargs) -> Pair:
    disks = [Disk("disk0", size, bitmaps=BITMAPS,
                  device="ide-hd,bus=ide.0,unit=1")]
    boot = (guest.boot_disk(layout, workdir, "src"),
            guest.boot_disk(layout, workdir, "dst"))
    return Pair(layout, disks, workdir, boot=boot, **kwargs)


def test_guest_writes_dirty_the_bitmaps_through_ide(layout, workdir):
    with writer_pair(layout, workdir) as p:
        p.src.add_bitmaps()
        start = guest.progress(p.src.serial_log)
        n = guest.wait_progress(p.src.serial_log, start + 64)
        counts = {k: v["count"] for k, v in p.src.bitmaps().items()}
        assert all(c > 0 for c in counts.values()), counts
        # the k-th write is at sector k * 2056: the writes since the bitmaps
        # exist (the guest may have started before) are consecutive 4 KiB
        # granules of that stride
        stride = 2056 * 512
        regions = p.src.regions("disk0", "bm-4k")
        # (the serial counter is printed in batches: no exact count)
        assert len(regions) >= 32, (start, n, regions[:4])
        assert all(off % stride == 0 and length == 4 * KiB
                   for off, length in regions), regions[:8]
        first = regions[0][0] // stride
        assert [off // stride for off, _ in regions] == \
            list(range(first, first + len(regions)))


def test_live_migration_while_the_guest_writes(layout, workdir):
    """The guest writes into chunks already sent, they are sent again,
    and the destination ends up with exactly the source's bitmaps.

    The migration is held back (16 KiB/s, 1 ms of downtime allowed, so
    QEMU cannot switch over while anything at all is pending) and goes on
    at 32 MiB/s within 300 ms only once a chunk was resent.  Held back by
    the bandwidth alone it is luck: RAM's zero pages and the run of clear
    chunks cost almost nothing, a guest writing one chunk at a time
    leaves about a chunk pending, less than 300 ms at 16 KiB/s carry, and
    one warm suite run reached pre-switchover after 755 ms with 750 writes
    made and no chunk sent again."""
    with writer_pair(layout, workdir, dst_paused=True) as p:
        p.src.add_bitmaps()
        guest.wait_progress(p.src.serial_log, 64)
        migration.start(p.src, p.dst, p.uri,
                        dict(LIVE, **{"pause-before-switchover": True}),
                        {"max-bandwidth": 16 * KiB, "downtime-limit": 1})
        during = guest.progress(p.src.serial_log)
        info = until(lambda: migration.query(p.src),
                     lambda i: (i.get("dirty-bitmaps") or {}).get(
                         "resent-chunks", 0) > 0 or
                     i.get("status") in migration.TERMINAL + (
                         "pre-switchover",), 60,
                     "a chunk sent again", interval=0.1)
        assert (info.get("dirty-bitmaps") or {}).get("resent-chunks"), (
            f"{info['status']} before any chunk was sent again; the guest's "
            f"write count went from {during} to "
            f"{guest.progress(p.src.serial_log)}", info)
        migration.set_parameters(p.src, {"max-bandwidth": 32 * MiB,
                                         "downtime-limit": 300})
        migration.wait(p.src, ("pre-switchover",), 120)
        at_switchover = guest.progress(p.src.serial_log)
        # The guest ran during the migration, and stopped for switchover
        assert at_switchover > during
        shas = p.src.all_sha256()
        regions = p.src.all_regions()
        info = migration.switch_over(p.src, p.dst)

        # Compared before the guest runs on the destination (-S)
        assert p.dst.all_sha256() == shas
        assert p.dst.all_regions() == regions
        assert info["dirty-bitmaps"]["resent-chunks"] > 0

        # The guest goes on writing on the destination, tracked as usual
        counts = {k: v["count"] for k, v in p.dst.bitmaps().items()}
        p.dst.cmd("cont")
        # with a margin: the first counter lines on the destination may
        # still count writes the guest did on the source before the stop
        guest.wait_progress(p.dst.serial_log, at_switchover + 64)
        after = {k: v["count"] for k, v in p.dst.bitmaps().items()}
        assert all(after[k] > counts[k] for k in counts), (counts, after)
