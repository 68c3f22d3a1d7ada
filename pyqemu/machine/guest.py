"""The tiny writer guest (tests/guest/writer.S), built from source.

A boot sector that SeaBIOS loads from the first IDE disk; it writes to the
second IDE disk forever and prints a counter on COM1.  Built with the
machine's gcc and ld into the cache, once per set of build parameters.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
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
    #: guest address of the 512 bytes every sector gets.  0x8000 is
    #: zeroed memory; 0x7c00 (the boot sector itself) makes every write
    #: non-zero, which a check that restores a backup needs: a block that
    #: went missing must not compare equal by reading back as zeros.
    data: int = 0x8000

    def defines(self) -> list[str]:
        if self.span & (self.span - 1) or not 0 < self.span <= 1 << 32:
            raise ValueError("span must be a power of two of at most 2^32")
        if self.report & (self.report - 1):
            raise ValueError("report must be a power of two")
        out = [f"-DSTRIDE={self.stride}", f"-DSPAN={self.span:#x}",
               f"-DSECTORS={self.sectors}", f"-DREPORT={self.report}"]
        if self.data != 0x8000:     # the default needs no define
            out.append(f"-DDATA={self.data:#x}")
        return out


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
