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

from pyqemu.machine import migration
from pyqemu.machine.vm import VM, Bitmap, Disk
from pyqemu.paths import SANITIZED, Layout
from pyqemu.util.poll import until
from pyqemu.util.units import KiB, MiB, TiB

#: built in the background by ./run test: wait for it
pytestmark = pytest.mark.usefixtures("sanitized")

ROUNDS = 6
#: non-zero chunks per bitmap (a chunk covers 512 MiB at 64 KiB)
CHUNKS = 256
BITMAPS = tuple(Bitmap(f"bm{i}", 64 * KiB) for i in range(8))


def live_migration(layout: Layout, workdir: Path, n: int) -> tuple[VM, VM]:
    """The sanitized source and a patched destination (not launched)."""
    disks = [Disk("disk0", 16 * TiB, bitmaps=BITMAPS)]
    src = VM(layout, f"src{n}", disks, SANITIZED, workdir,
             binary=layout.binary("qemu-system-x86_64", SANITIZED))
    dst = VM(layout, f"dst{n}", disks, "patched", workdir, incoming=True)
    return src, dst


def start(src: VM, dst: VM, workdir: Path, n: int) -> None:
    """A live migration, once the source is inside the bitmap code.

    It must not be able to finish before the quit: a migration that
    completed first would test nothing (the destination would run the
    guest), and with 64 dirty chunks per bitmap one did, 0.1 s after the
    wait below ended.  So the source pauses before the switchover, and
    the bitmaps carry 256 non-zero chunks each, a bulk phase that goes
    on for a few tenths of a second at 8 MiB/s after the first 64 KiB."""
    src.add_bitmaps()
    for i in range(CHUNKS):      # one write per chunk, all over the disk
        src.write("disk0", i * (16 * TiB // CHUNKS), 64 * KiB)
    uri = f"unix:{workdir}/mig{n}.sock"
    migration.start(src, dst, uri,
                    {"dirty-bitmaps": True, "dirty-bitmaps-live": True,
                     "pause-before-switchover": True},
                    {"max-bandwidth": 8 * MiB},
                    dst_caps={"dirty-bitmaps": True})
    until(lambda: migration.query(src).get("dirty-bitmaps", {}).get(
        "transferred", 0), lambda sent: sent >= 64 * KiB, 60,
        "bitmap bytes sent")


@pytest.mark.parametrize("how", ["quit", "sigterm"])
def test_quit_during_live_bitmap_migration(layout, workdir, how):
    for n in range(ROUNDS):
        src, dst = live_migration(layout, workdir, n)
        # leaving the block checks both ends: a crash report, a signal or
        # an unexpected exit status on either fails the test
        with dst, src:
            start(src, dst, workdir, n)
            # exit status 0, and no assertion or sanitizer report
            src.quit(sig=None if how == "quit" else signal.SIGTERM)
            # the stream cut off half-way, the destination fails its
            # load and exits by itself with status 1: not a crash, not
            # a hang, not a completed migration
            until(dst.is_running, lambda running: not running, 30,
                  f"{dst.name} to give up the cut-off stream")
            dst.allow_exit(1)
        assert dst.exit is not None and dst.exit.code == 1, dst.exit
