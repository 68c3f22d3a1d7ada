"""``pyqemu bench migrate``, Linux guest part: a real guest writing.

The sweep in :mod:`pyqemu.bench.migrate` dirties the bitmaps before it
migrates; here Debian's kernel runs the project's O_DIRECT writer on a
virtio-blk disk served by an iothread (:mod:`pyqemu.machine.linuxguest`)
all through the migration, so the bitmaps keep changing from another
thread than the vCPU's while chunks are sent.  Per build: did it
converge, the downtime, the bitmap bytes sent and how many of them fell
into the downtime, the chunks sent again, and the guest's write rate
before and during the migration (their ratio is what the meta bitmap
costs the guest's I/O path, measured in the same run).
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from ..log import info
from ..machine import linuxguest, migration
from ..machine.linuxguest import WriterConfig
from ..machine.vm import Bitmap, Pair
from ..paths import Layout
from ..report.table import markdown_table
from ..util.units import KiB, MiB, TiB, fmt_bytes

#: 1 TiB disk, two bitmaps of which the 4 KiB one is 32 MiB serialized
BITMAPS = (Bitmap("bm-4k", 4 * KiB), Bitmap("bm-64k", 64 * KiB))
WRITER = WriterConfig(length=TiB, seed=7, kick_ms=linuxguest.KICK_MS)
PARAMS = {"max-bandwidth": 64 * MiB, "downtime-limit": 300}
CAPS = {
    "stock": {"dirty-bitmaps": True},
    "patched": {"dirty-bitmaps": True, "dirty-bitmaps-live": True},
}
#: How long the write rate is measured before migrating
RATE_WINDOW = 3.0
TIMEOUT = {"stock": 30.0, "patched": 120.0}


@dataclass
class GuestRun:
    flavour: str
    converged: bool
    total_ms: int | None
    downtime_ms: int | None
    wire: int | None
    wire_in_downtime: int | None
    resent_chunks: int | None
    rate_before: float          # guest writes per second, no migration
    rate_during: float          # guest writes per second, migrating


def _rate(serial_log: Path, seconds: float) -> float:
    """Writes per second the guest reports over *seconds*."""
    n0, t0 = linuxguest.progress(serial_log), time.monotonic()
    time.sleep(seconds)
    return (linuxguest.progress(serial_log) - n0) / (time.monotonic() - t0)


def run_one(layout: Layout, flavour: str, workdir: Path) -> GuestRun:
    disks = [linuxguest.disk("disk0", TiB, bitmaps=BITMAPS)]
    with Pair(layout, disks, workdir, flavour, flavour,
              extra_args=linuxguest.qemu_args(layout, WRITER),
              machine=linuxguest.MACHINE,
              memory_mb=linuxguest.MEMORY_MB) as p:
        linuxguest.wait_started(p.src.serial_log)
        p.src.add_bitmaps()
        before = _rate(p.src.serial_log, RATE_WINDOW)
        n0, t0 = linuxguest.progress(p.src.serial_log), time.monotonic()
        res = migration.run(p.src, p.dst, p.uri, CAPS[flavour], PARAMS,
                            TIMEOUT[flavour])
        # the guest runs until the switchover (or the give-up)
        elapsed = (res.total_ms / 1000 if res.total_ms
                   else time.monotonic() - t0)
        during = (linuxguest.progress(p.src.serial_log) - n0) / elapsed
        bm = res.bitmaps_info or {}
        return GuestRun(flavour, res.converged, res.total_ms,
                        res.downtime_ms, bm.get("transferred"),
                        bm.get("downtime-transferred"),
                        bm.get("resent-chunks"), before, during)


def run(layout: Layout) -> list[GuestRun]:
    runs = []
    for flavour in ("stock", "patched"):
        info(f"bench: Linux guest writing, {flavour}")
        with tempfile.TemporaryDirectory(prefix="pq-bl-", dir="/tmp") as tmp:
            runs.append(run_one(layout, flavour, Path(tmp)))
    return runs


def table(runs: list[GuestRun]) -> str:
    def ms(v: int | None) -> str:
        return "-" if v is None else f"{v} ms"

    rows = [[r.flavour, "yes" if r.converged else "no", ms(r.total_ms),
             ms(r.downtime_ms),
             "-" if r.wire is None else fmt_bytes(r.wire),
             "-" if r.wire_in_downtime is None else fmt_bytes(
                 r.wire_in_downtime),
             "-" if r.resent_chunks is None else str(r.resent_chunks),
             f"{r.rate_before:.0f}", f"{r.rate_during:.0f}",
             f"{r.rate_during / r.rate_before:.2f}" if r.rate_before else "-"]
            for r in runs]
    return markdown_table(
        ["build", "converged", "total", "downtime", "bitmap bytes sent",
         "sent in downtime", "resent chunks", "writes/s before",
         "writes/s during", "during/before"], rows)


def describe() -> str:
    return ("Linux guest (Debian 6.1 kernel, q35, TCG) doing O_DIRECT random "
            "4 KiB writes with fsync over a 1 TiB virtio-blk disk on an "
            "iothread, during the whole migration; bitmaps at 4 KiB and "
            f"64 KiB granularity, max-bandwidth "
            f"{PARAMS['max-bandwidth'] // MiB} MiB/s, downtime-limit "
            f"{PARAMS['downtime-limit']} ms.  The write rates are the "
            "guest's own count, before migrating and while migrating.")
