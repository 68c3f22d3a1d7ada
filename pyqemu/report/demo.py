"""``pyqemu demo``: the main job.

Builds both trees, then migrates the same running ``-machine pc`` VM (TCG)
with large dirty bitmaps twice over a unix socket: with stock QEMU and
today's ``dirty-bitmaps`` capability, and with the series and
``dirty-bitmaps-live``.  Prints what happened: convergence, total time,
downtime, bitmap bytes on the wire (and in the downtime), and the sha256
of every bitmap on both sides.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..build.driver import build
from ..machine import migration
from ..machine.vm import Bitmap, Disk, Pair
from ..paths import Layout
from ..tree import series, stock
from ..util.table import table
from ..util.units import KiB, MiB, TiB, fmt_bytes

DISK_SIZE = 4 * TiB
BITMAPS = (Bitmap("bm-64k", 64 * KiB), Bitmap("bm-1m", MiB),
           Bitmap("bm-16k-frozen", 16 * KiB, disabled=True))
PARAMS = {"max-bandwidth": 100 * MiB, "downtime-limit": 300}
#: Stock never converges here: its bitmaps (about 40 MiB) must all go in
#: the downtime, which at max-bandwidth takes 400 ms, longer than
#: downtime-limit.  Five seconds is five times what the RAM needs, and
#: the patched migration completes in about 10 ms.
STOCK_TIMEOUT = 5.0


@dataclass
class Run:
    label: str
    result: migration.MigrationResult
    before: dict
    after: dict
    wall: float


def dirty(pair: Pair) -> None:
    """Writes spread over the disk; the frozen bitmap records some first."""
    pair.src.cmd("block-dirty-bitmap-enable", node="disk0",
                 name="bm-16k-frozen")
    for i in range(8):
        pair.src.write("disk0", i * DISK_SIZE // 8 + i * MiB, 64 * KiB)
    pair.src.cmd("block-dirty-bitmap-disable", node="disk0",
                 name="bm-16k-frozen")
    for i in range(32):
        pair.src.write("disk0", i * DISK_SIZE // 32 + 12 * KiB, 4 * KiB)


def migrate(layout: Layout, flavour: str, caps: dict, timeout: float,
            workdir: Path, label: str) -> Run:
    disks = [Disk("disk0", DISK_SIZE, bitmaps=BITMAPS)]
    with Pair(layout, disks, workdir / flavour, flavour, flavour) as pair:
        pair.src.add_bitmaps()
        dirty(pair)
        before = pair.src.all_sha256()
        start = time.monotonic()
        res = migration.run(pair.src, pair.dst, pair.uri, caps, PARAMS,
                            timeout, on_poll=migration.progress_printer(label))
        wall = time.monotonic() - start
        after = {}
        if res.converged:
            migration.wait_destination_running(pair.dst)
            after = pair.dst.all_sha256()
    return Run(label, res, before, after, wall)


def report(runs: list[Run]) -> None:
    print(f"\nVM: -machine pc (TCG), 64 MiB RAM, disk0 = {DISK_SIZE // TiB} TiB "
          "null-co with bitmaps " + ", ".join(
              f"{b.name} ({fmt_bytes(b.granularity)} granularity)"
              for b in BITMAPS))
    print(f"migration: unix socket, max-bandwidth "
          f"{PARAMS['max-bandwidth'] // MiB} MiB/s, downtime-limit "
          f"{PARAMS['downtime-limit']} ms\n")
    rows: list[tuple[str, ...]] = []

    def row(name: str, f: Callable[[Run], str]) -> None:
        rows.append((name, *[f(r) for r in runs]))

    row("status", lambda r: r.result.status if r.result.converged else
        f"not converged in {r.wall:.0f} s")
    row("total time", lambda r: f"{r.result.total_ms} ms"
        if r.result.total_ms is not None else "-")
    row("downtime", lambda r: f"{r.result.downtime_ms} ms"
        if r.result.downtime_ms is not None else "-")
    row("bitmap bytes sent", lambda r: fmt_bytes(
        (r.result.bitmaps_info or {}).get("transferred")))
    row("  of which in downtime", lambda r: fmt_bytes(
        (r.result.bitmaps_info or {}).get("downtime-transferred")))
    row("bitmaps equal (sha256)", lambda r: (
        f"{sum(r.after.get(k) == v for k, v in r.before.items())}"
        f"/{len(r.before)}") if r.after else "-")
    print(table(("", *[r.label for r in runs]), rows, markdown=False))

    for r in runs:
        if not r.after:
            continue
        print(f"\n{r.label}: sha256 per bitmap (source -> destination)")
        for key, sha in sorted(r.before.items()):
            dst = r.after.get(key, "")
            print(f"  {'/'.join(key):<22} {sha[:16]} -> {dst[:16]}  "
                  f"{'equal' if dst == sha else 'DIFFERENT'}")


def main(layout: Layout) -> int:
    build(layout)
    origin = stock.read_origin(layout)
    print(f"QEMU: {origin.describe() if origin else '?'}; series: "
          f"{len(series.patches())} patches")
    with tempfile.TemporaryDirectory(prefix="pq-demo-", dir="/tmp") as tmp:
        workdir = Path(tmp)
        stock_run = migrate(layout, "stock", {"dirty-bitmaps": True},
                            STOCK_TIMEOUT, workdir, "stock, dirty-bitmaps")
        patched = migrate(layout, "patched", {"dirty-bitmaps": True,
                                              "dirty-bitmaps-live": True},
                          60.0, workdir, "patched, dirty-bitmaps-live")
    report([stock_run, patched])
    ok = patched.result.converged and patched.after == patched.before
    print("\nresult: " + ("the series migrated every bitmap intact, live"
                          if ok else "FAILED: see above"))
    return 0 if ok else 1
