"""Quitting the source while it sends bitmaps live, on the ASan+UBSan build.

``quit`` (or SIGTERM) frees the outgoing bitmap state from the main thread
while the migration thread, without the BQL, walks it in the bulk or the
dirty phase.  That was a heap use after free that only a sanitizer shows;
the release build hid it.  So the source here is the sanitized build, the
bitmaps are large enough that the migration thread is inside the bitmap
code when the signal or command arrives, and the test repeats: every run
must exit with status 0 and a log free of sanitizer and assertion reports.
"""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from pyqemu.build.driver import binary
from pyqemu.machine import migration
from pyqemu.machine.vm import VM, Bitmap, Disk
from pyqemu.paths import SANITIZED, Layout
from pyqemu.util.poll import until
from pyqemu.util.units import KiB, MiB, TiB

#: built in the background by ./run test: wait for it
pytestmark = pytest.mark.usefixtures("sanitized")

ROUNDS = 6
BITMAPS = tuple(Bitmap(f"bm{i}", 64 * KiB) for i in range(8))


def start_live_migration(layout: Layout, workdir: Path,
                         n: int) -> tuple[VM, VM]:
    disks = [Disk("disk0", 16 * TiB, bitmaps=BITMAPS)]
    src = VM(layout, f"src{n}", disks, SANITIZED, workdir,
             binary=binary(layout, "qemu-system-x86_64", SANITIZED))
    dst = VM(layout, f"dst{n}", disks, "patched", workdir, incoming=True)
    src.launch()
    dst.launch()
    src.add_bitmaps()
    for i in range(64):          # dirty chunks all over the disk
        src.write("disk0", i * (TiB // 4), 64 * KiB)
    uri = f"unix:{workdir}/mig{n}.sock"
    migration.start(src, dst, uri,
                    {"dirty-bitmaps": True, "dirty-bitmaps-live": True},
                    {"max-bandwidth": 8 * MiB})
    until(lambda: migration.query(src).get("dirty-bitmaps", {}).get(
        "transferred", 0), lambda sent: sent >= 64 * KiB, 60,
        "bitmap bytes sent")
    return src, dst


@pytest.mark.parametrize("how", ["quit", "sigterm"])
def test_quit_during_live_bitmap_migration(layout, workdir, how):
    for n in range(ROUNDS):
        src, dst = start_live_migration(layout, workdir, n)
        try:
            # exit status 0, and no assertion or sanitizer report
            src.quit(sig=None if how == "quit" else signal.SIGTERM)
        finally:
            dst.shutdown()
            src.shutdown()
