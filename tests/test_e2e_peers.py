"""Live bitmap migration between our build and QEMUs that know nothing of
it: Debian bookworm's packaged QEMU 7.2 and a stock 10.2.2.

Only the source needs the live mode: the stream is unchanged, so an older
destination must load it, and an older source must migrate into the
patched build.  A guest writes to the disk through IDE all along, and the
machine type is 7.2's, which both ends know.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from pyqemu.build import deps
from pyqemu.machine import guest, migration
from pyqemu.machine.vm import VM, Bitmap, Disk
from pyqemu.paths import Layout
from pyqemu.util.units import GiB, KiB, MiB, TiB

MACHINE = "pc-i440fx-7.2"
BITMAPS = (Bitmap("bm-4k", 4 * KiB), Bitmap("bm-64k", 64 * KiB))
#: where Debian's package for the 7.2 peer (deps.PEERS) puts the emulator
DEBIAN_QEMU = Path("/usr/bin/qemu-system-x86_64")


@pytest.fixture(scope="module")
def qemu72() -> Path:
    """Debian's QEMU 7.2, which ``./run test`` installs like any dependency."""
    deps.require(deps.PEERS)
    out = subprocess.run([str(DEBIAN_QEMU), "--version"], capture_output=True,
                         text=True, check=True).stdout
    assert re.search(r"version 7\.2\.", out), out
    return DEBIAN_QEMU


def peer_binary(layout: Layout, peer: str, qemu72: Path) -> Path:
    return qemu72 if peer == "debian-7.2" else \
        layout.binary("qemu-system-x86_64", "stock")


def vms(layout: Layout, workdir: Path, src_bin: Path, dst_bin: Path,
        size: int = TiB) -> tuple[VM, VM]:
    disks = [Disk("disk0", size, bitmaps=BITMAPS,
                  device="ide-hd,bus=ide.0,unit=1")]
    # the guest writes inside the disk, wrapping around: a write past its
    # end fails and dirties nothing
    config = guest.WriterConfig(span=min(size // 512, 1 << 31))
    src = VM(layout, "src", disks, workdir=workdir, machine=MACHINE,
             binary=src_bin,
             boot=guest.boot_disk(layout, workdir, "src", config))
    # -S: compare the bitmaps before the guest runs on the destination
    dst = VM(layout, "dst", disks, workdir=workdir, machine=MACHINE,
             binary=dst_bin,
             boot=guest.boot_disk(layout, workdir, "dst", config),
             incoming=True, extra_args=("-S",))
    return src, dst


def migrate_while_writing(src: VM, dst: VM, uri: str, live: bool,
                          downtime_ms: int = 300) -> int:
    src.add_bitmaps()
    guest.wait_progress(src.serial_log, 64)
    caps = {"dirty-bitmaps": True, "events": True}
    src_caps = dict(caps, **({"dirty-bitmaps-live": True} if live else {}))
    # an older destination does not know dirty-bitmaps-live
    during, at_switchover = migration.to_switchover(
        src, dst, uri, src_caps,
        {"max-bandwidth": 32 * MiB, "downtime-limit": downtime_ms},
        lambda: guest.progress(src.serial_log), 120, dst_caps=caps)
    assert at_switchover > during, "the guest did not write"
    shas = src.all_sha256()
    migration.switch_over(src, dst, 120)
    assert dst.all_sha256() == shas
    return guest.progress(src.serial_log)


@pytest.mark.parametrize("peer", ["debian-7.2", "stock-10.2"])
def test_live_source_to_older_destination(layout, workdir, qemu72, peer):
    src, dst = vms(layout, workdir,
                   layout.binary("qemu-system-x86_64", "patched"),
                   peer_binary(layout, peer, qemu72))
    with src, dst:
        migrate_while_writing(src, dst, f"unix:{workdir}/mig.sock", live=True)
        # the bitmaps went out before the switchover, in live mode
        stats = migration.query(src)["dirty-bitmaps"]
        assert stats["transferred"] > stats["downtime-transferred"]
        assert src.is_running() and dst.is_running()


def test_older_source_to_patched_destination(layout, workdir, qemu72):
    # What a 7.2 source can migrate at all: it sends its bitmaps in the
    # downtime, and counts their bits as bytes against the threshold
    src, dst = vms(layout, workdir, qemu72,
                   layout.binary("qemu-system-x86_64", "patched"),
                   size=4 * GiB)
    with src, dst:
        written = migrate_while_writing(src, dst, f"unix:{workdir}/mig.sock",
                                        live=False, downtime_ms=2000)
        # the guest goes on writing on the destination, still tracked:
        # every write sets a clean 4 KiB granule, and a lap of the disk
        # moves on by one 64 KiB granule
        before = {k: v["count"] for k, v in dst.bitmaps().items()}
        dst.cmd("cont")
        guest.wait_progress(dst.serial_log, written)
        after = {k: v["count"] for k, v in dst.bitmaps().items()}
        assert set(after) == set(before) == {("disk0", b.name)
                                             for b in BITMAPS}
        grew = [k for k in before if after[k] > before[k]]
        assert sorted(grew) == sorted(before), (before, after)
        assert src.is_running() and dst.is_running()
