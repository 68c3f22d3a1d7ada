"""The tiny writer guest (tests/guest/writer.S), built from source.

A boot sector that SeaBIOS loads from the first IDE disk; it writes to the
second IDE disk forever and prints a counter on COM1.  Built with the
machine's gcc and ld into the cache, once per set of build parameters.

With ``stamp`` every sector it writes names itself: its LBA and the
number of the write (see :func:`stamp`), so that a copy of the disk (a
restored backup) in which a block sits at the wrong place, or holds an
older write, differs from the disk.  Without it, every sector gets the same
512 bytes, and a comparison could only tell written from unwritten.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import struct
from dataclasses import dataclass
from pathlib import Path

from ..errors import PyqemuError
from ..paths import REPO, Layout
from ..util.poll import PollTimeout, until
from ..util.proc import run

SOURCE = REPO / "tests" / "guest" / "writer.S"


@dataclass(frozen=True)
class WriterConfig:
    """Where the guest writes: n-th write at (n * stride) % span sectors."""

    stride: int = 2056          # sectors: 1 MiB + 4 KiB
    span: int = 1 << 31         # sectors, a power of two: 1 TiB
    sectors: int = 8            # per write
    report: int = 16            # writes per serial line
    #: each sector carries its LBA and the write's number (:func:`stamp`),
    #: which a check that restores a backup needs: a block that went
    #: missing, moved or stale must not compare equal.  Off: zeros.
    stamp: bool = False

    def defines(self) -> list[str]:
        if self.span & (self.span - 1) or not 0 < self.span <= 1 << 32:
            raise ValueError("span must be a power of two of at most 2^32")
        if self.report & (self.report - 1):
            raise ValueError("report must be a power of two")
        out = [f"-DSTRIDE={self.stride}", f"-DSPAN={self.span:#x}",
               f"-DSECTORS={self.sectors}", f"-DREPORT={self.report}"]
        if self.stamp:
            out.append("-DSTAMP")
        return out

    def lba(self, n: int) -> int:
        """The first sector of write number *n* (as the guest computes it)."""
        return (n * self.stride) & (self.span - 1)


SECTOR = 512
#: The first bytes of every record of a stamped sector.
STAMP_MAGIC = b"PQWR"
_RECORD = struct.Struct("<4sQI")


def stamp(lba: int, n: int) -> bytes:
    """The 512 bytes the stamped guest writes to sector *lba* in its write
    number *n*: 32 records of "PQWR", the LBA (u64) and n (u32), little
    endian (tests/guest/writer.S)."""
    return _RECORD.pack(STAMP_MAGIC, lba, n) * (SECTOR // _RECORD.size)


def read_stamp(sector: bytes) -> tuple[int, int] | None:
    """(LBA, write number) of a sector the stamped guest wrote; None for
    anything else (zeros, a torn or foreign sector)."""
    magic, lba, n = _RECORD.unpack_from(sector)
    if magic != STAMP_MAGIC or sector != stamp(lba, n):
        return None
    return lba, n


def build(layout: Layout, config: WriterConfig = WriterConfig()) -> Path:
    """The 512-byte boot image for *config* (built if not cached)."""
    defines = config.defines()
    key = hashlib.sha256(SOURCE.read_bytes() + " ".join(defines).encode()
                         ).hexdigest()[:16]
    out = layout.root / "guest" / f"writer-{key}.img"
    if out.exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    # private names: parallel test workers may build the same image at
    # once, and only the final rename is atomic
    obj = out.with_suffix(f".{os.getpid()}.o")
    tmp = out.with_suffix(f".{os.getpid()}.tmp")
    run(["gcc", "-m32", "-c", *defines, "-o", obj, SOURCE])
    run(["ld", "-m", "elf_i386", "-Ttext=0x7c00", "--oformat=binary", "-o",
         tmp, obj])
    data = tmp.read_bytes()
    if len(data) != 512 or data[510:] != b"\x55\xaa":
        raise PyqemuError(f"{SOURCE} did not assemble into a boot sector "
                           f"({len(data)} bytes)")
    tmp.rename(out)
    obj.unlink()
    return out


def boot_disk(layout: Layout, workdir: Path, name: str,
              config: WriterConfig = WriterConfig()) -> Path:
    """A private copy of the boot image for one VM (no shared locks)."""
    path = workdir / f"{name}-boot.img"
    shutil.copyfile(build(layout, config), path)
    return path


def serial_text(serial_log: Path) -> str:
    """What a guest printed on COM1 so far ('' before QEMU created the
    file): a poll may well come before the first line."""
    try:
        return serial_log.read_text(errors="replace")
    except OSError:
        return ""


def progress(serial_log: Path) -> int:
    """The guest's last reported write count (0 before the first report)."""
    counts = re.findall(r"W([0-9a-f]{8})\n", serial_text(serial_log))
    return int(counts[-1], 16) if counts else 0


def wait_progress(serial_log: Path, beyond: int, timeout: float = 30) -> int:
    """Wait until the guest reports more than *beyond* writes."""
    try:
        return until(lambda: progress(serial_log), lambda n: n > beyond,
                     timeout, f"guest writes beyond {beyond} in {serial_log}")
    except PollTimeout as e:
        raise GuestStuck(str(e)) from None


class GuestStuck(PyqemuError, TimeoutError):
    """The guest stopped reporting progress."""
