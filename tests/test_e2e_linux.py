"""Live bitmap migration with a Linux guest writing
(pyqemu/machine/linuxguest.py):
Debian's kernel on -machine q35 (KVM where the host has it, else TCG),
O_DIRECT random writes with fsync to a virtio-blk disk served by an
iothread, so bitmaps are dirtied from the iothread rather than from the
vCPU thread as with IDE.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pyqemu.checks import backup
from pyqemu.machine import linuxguest, migration
from pyqemu.machine.linuxguest import WriterConfig
from pyqemu.machine.vm import Bitmap, Pair
from pyqemu.paths import Layout
from pyqemu.util.units import KiB, MiB, TiB

LIVE = {"dirty-bitmaps": True, "dirty-bitmaps-live": True, "events": True}
BITMAPS = (Bitmap("bm-4k", 4 * KiB), Bitmap("bm-64k", 64 * KiB),
           Bitmap("bm-1m", MiB))
#: Writes per second.  Paced, so that the test checks the same thing on
#: either accelerator: unpaced, the guest wrote 5400/s on TCG here, and
#: on KVM it may well write several times as fast.  Each random write
#: sets a bit in a new 1 KiB chunk of the 4 KiB bitmap (32768 chunks over
#: 1 TiB), so at 40,000/s the three bitmaps would dirty about 60 MB of
#: chunks a second, nearly all that 64 MiB/s resends, and the migration
#: might never reach its switchover.  At 4000/s they need about 10 MB/s.
RATE = 4000
#: writes over the whole 1 TiB disk, offsets beyond 2^32 sectors included
WRITER = WriterConfig(length=TiB, seed=5, kick_ms=linuxguest.KICK_MS,
                      rate=RATE)


def linux_pair(layout: Layout, workdir: Path, **kwargs: Any) -> Pair:
    disks = [linuxguest.disk("disk0", TiB, bitmaps=BITMAPS)]
    return Pair(layout, disks, workdir,
                extra_args=linuxguest.qemu_args(layout, WRITER),
                machine=linuxguest.MACHINE, memory_mb=linuxguest.MEMORY_MB,
                **kwargs)


def test_live_migration_while_linux_writes(layout, workdir):
    with linux_pair(layout, workdir, dst_paused=True) as p:
        linuxguest.wait_started(p.src.serial_log)
        # bitmaps created once the guest runs: all they see is the writer
        n_pre = linuxguest.progress(p.src.serial_log)
        p.src.add_bitmaps()
        n_post = linuxguest.progress(p.src.serial_log)
        linuxguest.wait_progress(p.src.serial_log, n_post + 64)

        during, at_switchover = migration.to_switchover(
            p.src, p.dst, p.uri, LIVE,
            {"max-bandwidth": 64 * MiB, "downtime-limit": 300},
            lambda: linuxguest.progress(p.src.serial_log))
        # the guest wrote during the migration and is stopped now
        assert at_switchover > during
        backup.assert_running(p.src)
        shas = p.src.all_sha256()
        regions = p.src.regions("disk0", "bm-4k")
        info = migration.switch_over(p.src, p.dst)

        # compared before the guest runs on the destination (-S)
        assert p.dst.all_sha256() == shas
        assert p.dst.regions("disk0", "bm-4k") == regions
        assert info["dirty-bitmaps"]["resent-chunks"] > 0

        # The 4 KiB bitmap holds the writer's blocks: every block of the
        # writes surely done after the bitmaps existed, and nothing it did
        # not write.  Writes before a report line were done before it was
        # read; a line may lag its writes by a few lines (the slack).
        slack = 4 * WRITER.report
        dirty = {off for o, length in regions
                 for off in range(o, o + length, 4 * KiB)}
        surely = set(linuxguest.write_offsets(WRITER, n_post + slack,
                                              at_switchover))
        possibly = set(linuxguest.write_offsets(WRITER, n_pre,
                                                at_switchover + slack))
        assert surely <= dirty, len(surely - dirty)
        assert dirty <= possibly, len(dirty - possibly)

        # the guest goes on writing on the destination, tracked as usual
        counts = {k: v["count"] for k, v in p.dst.bitmaps().items()}
        p.dst.cmd("cont")
        # beyond the slack: the first report lines on the destination may
        # still count writes the guest did on the source before the stop
        linuxguest.wait_progress(p.dst.serial_log, at_switchover + slack)
        after = {k: v["count"] for k, v in p.dst.bitmaps().items()}
        assert all(after[k] > counts[k] for k in counts), (counts, after)
        backup.assert_running(p.dst)
