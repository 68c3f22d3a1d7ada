"""The boot-sector writer's stamps (tests/guest/writer.S with ``stamp``),
and the misplaced-block control of the libvirt check.

The libvirt check proves that a backup chain restored after ``virsh
migrate`` equals the disk.  With the same 512 bytes in every written
sector, that proves only that the written LBAs are non-zero: a block
restored at the wrong place compares equal.  So the guest stamps each
sector with its LBA and the write's number; here it writes a small disk,
wrapping around it so that blocks are written twice, and

* every written sector names its own LBA and the write that wrote it
  last (the Python mirror, :func:`pyqemu.machine.guest.stamp`, agrees
  with the assembly);
* :func:`pyqemu.machine.images.misplace` (the libvirt check's control:
  one block copied over another) and a block of an older write both make
  ``qemu-img compare`` report a difference, while rewriting a block with
  its own data does not.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from pyqemu.machine import guest, images
from pyqemu.machine.vm import VM, Disk
from pyqemu.paths import Layout
from pyqemu.util.poll import PollTimeout
from pyqemu.util.proc import run
from pyqemu.util.units import MiB

#: 128 places for a write of 8 sectors (stride 2056 = 8 * 257, span 2^10
#: sectors): from write 128 on, the guest writes over its own blocks
WRITER = guest.WriterConfig(span=1 << 10, stamp=True)
PLACES = WRITER.span // WRITER.sectors
WRITES = PLACES + 48
DISK = MiB
FLAVOUR = "patched"


def sectors(raw: bytes) -> list[bytes]:
    return [raw[i:i + guest.SECTOR] for i in range(0, len(raw), guest.SECTOR)]


@pytest.fixture(scope="module")
def written(layout: Layout, tmp_path_factory: pytest.TempPathFactory
            ) -> tuple[Path, bytes]:
    """The disk (qcow2) after the stamped guest made more than WRITES
    writes and stopped, and its contents."""
    workdir = tmp_path_factory.mktemp("stamps")
    qemu_img = layout.binary("qemu-img", FLAVOUR)
    disk = workdir / "disk.qcow2"
    run([qemu_img, "create", "-q", "-f", "qcow2", disk, str(DISK)])
    vm = VM(layout, "writer", [Disk("disk0", DISK, file=disk,
                                    device="ide-hd,bus=ide.0,unit=1")],
            flavour=FLAVOUR, workdir=workdir,
            boot=guest.boot_disk(layout, workdir, "writer", WRITER))
    with vm:
        guest.wait_progress(vm.serial_log, WRITES, timeout=120)
        vm.cmd("stop")
        vm.quit()
    raw = workdir / "disk.raw"
    run([qemu_img, "convert", "-f", "qcow2", "-O", "raw", disk, raw])
    return disk, raw.read_bytes()


def test_every_written_sector_names_its_lba_and_last_write(
        written: tuple[Path, bytes]) -> None:
    _, raw = written
    found = {}
    for lba, data in enumerate(sectors(raw)):
        if data == bytes(guest.SECTOR):
            continue
        got = guest.read_stamp(data)
        assert got is not None, f"sector {lba} holds no stamp: {data[:32]!r}"
        assert got[0] == lba, f"sector {lba} holds sector {got[0]}'s data"
        found[lba] = got[1]
    assert found, "the guest wrote nothing"
    last = max(found.values())
    assert last >= WRITES
    # every place was written, and holds the newest write that went there
    # (up to the last one, which `stop` may have cut between sectors)
    for n in range(last - PLACES + 1, last):
        first = WRITER.lba(n)
        assert [found.get(first + k) for k in range(WRITER.sectors)] == \
            [n] * WRITER.sectors, f"write {n} at sector {first}"
    assert not set(found) - {WRITER.lba(n) + k for n in range(PLACES)
                             for k in range(WRITER.sectors)}


def test_a_misplaced_or_stale_block_fails_the_comparison(
        layout: Layout, written: tuple[Path, bytes], workdir: Path) -> None:
    disk, raw = written
    qemu_img = layout.binary("qemu-img", FLAVOUR)
    qemu_io = layout.binary("qemu-io", FLAVOUR)
    size = WRITER.sectors * guest.SECTOR
    src, dst = WRITER.lba(1), WRITER.lba(0)
    # the libvirt check's control: write 1's block copied over write 0's
    moved = images.misplace(qemu_img, qemu_io, disk, workdir / "moved", src,
                            dst, WRITER.sectors)
    assert images.compare(qemu_img, moved, disk).startswith("differ")

    def put(name: str, data: bytes, lba: int) -> Path:
        copy = images.overlay(qemu_img, disk, workdir / f"{name}.qcow2")
        block = workdir / f"{name}.block"
        block.write_bytes(data)
        images.write(qemu_io, copy, block, lba * guest.SECTOR, len(data))
        return copy

    # the same block, rewritten with what it holds: no difference, so the
    # differences here come from the data, not from the overlay
    own = raw[dst * guest.SECTOR:dst * guest.SECTOR + size]
    assert images.compare(qemu_img, put("same", own, dst),
                          disk) == "identical"
    # the right place, but an older write's data (a stale generation)
    stamp = guest.read_stamp(own[:guest.SECTOR])
    assert stamp is not None and stamp[1] >= PLACES
    stale = b"".join(guest.stamp(dst + k, stamp[1] - PLACES)
                     for k in range(WRITER.sectors))
    assert images.compare(qemu_img, put("stale", stale, dst),
                          disk).startswith("differ")


def test_wait_closed_waits_for_the_last_holder(workdir: Path) -> None:
    """What the libvirt check does after virtnbdrestore, whose qemu-nbd
    may still hold the restored image when the tool returns."""
    image = workdir / "image"
    image.write_bytes(b"x")
    with image.open("rb") as f:
        holder = subprocess.Popen(["sleep", "1"], stdin=f)
    try:
        assert images.holders(image) == [holder.pid]
        start = time.monotonic()
        images.wait_closed(image, timeout=30)
        assert time.monotonic() - start >= 0.5
        assert holder.poll() is not None
    finally:
        holder.kill()
        holder.wait()
    with pytest.raises(PollTimeout, match="holding"):
        with image.open("rb") as f:
            images.wait_closed(image, timeout=0.2)
