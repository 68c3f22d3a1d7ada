"""The kernel image the Linux guest boots: Debian's vmlinuz, unpacked.

Debian's ``vmlinuz`` is a bzImage whose payload is xz-compressed, and the
guest unpacks it itself before the kernel's first line runs.  Under TCG
that decompression dominates the boot: measured here (2 cores, idle,
q35, 256 MiB), 11 s from QEMU's start to the writer's first line, of
which the kernel counted 3.9 s as its own; booting the same kernel
unpacked took 4.0 s.  Every test with a Linux guest boots one, and the
suite's CPU time is its wall time on two cores.

So the payload is unpacked here, once per kernel (Python's ``lzma`` and
``gzip``: no package to install), and QEMU boots the resulting ELF
``vmlinux`` through its PVH entry point (``-kernel`` takes an ELF with a
PVH note; the option ROM is qemu-system-data's ``pvh.bin``).  A kernel
that does not allow this (another compression, no PVH note, not a
bzImage) is booted as it is: slower, never wrong.
"""

from __future__ import annotations

import hashlib
import lzma
import struct
import zlib
from pathlib import Path

from ..util.files import write_atomic

#: bzImage setup header (Documentation/arch/x86/boot.rst): setup_sects at
#: 0x1f1, the "HdrS" magic at 0x202, payload_offset/length at 0x248
#: (boot protocol 2.08 and later)
_SETUP_SECTS = 0x1F1
_HDRS = 0x202
_VERSION = 0x206
_PAYLOAD = 0x248
#: ELF note of a kernel with a PVH entry point: owner "Xen", type
#: XEN_ELFNOTE_PHYS32_ENTRY
_PVH_NOTE = (b"Xen\0", 18)
_PT_NOTE = 4
#: Bump when what is unpacked, or when, changes for the same vmlinuz
#: (another compression read, another check): the cache is keyed on it.
FORMAT = 1


def payload(image: bytes) -> bytes | None:
    """The compressed kernel inside a bzImage, None if *image* is not one
    (or too old to say where its payload is)."""
    if len(image) < _PAYLOAD + 8 or image[_HDRS:_HDRS + 4] != b"HdrS" \
            or struct.unpack_from("<H", image, _VERSION)[0] < 0x208:
        return None
    setup = ((image[_SETUP_SECTS] or 4) + 1) * 512
    offset, length = struct.unpack_from("<II", image, _PAYLOAD)
    if not length or setup + offset + length > len(image):
        return None
    return image[setup + offset:setup + offset + length]


def decompress(data: bytes) -> bytes | None:
    """*data* unpacked if it is xz or gzip, the compressions the standard
    library reads; None otherwise (zstd, lz4, lzo, ...).

    The kernel's build appends the uncompressed size after the stream,
    which the decompressors must ignore: hence no ``lzma.decompress``
    (it would read those 4 bytes as a second stream)."""
    try:
        if data.startswith(b"\xfd7zXZ\0"):
            x = lzma.LZMADecompressor(lzma.FORMAT_XZ)
            out, done = x.decompress(data), x.eof
        elif data.startswith(b"\x1f\x8b"):
            z = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
            out, done = z.decompress(data), z.eof
        else:
            return None
    except (lzma.LZMAError, zlib.error):
        return None
    return out if done else None        # a truncated stream is no kernel


def has_pvh_note(elf: bytes) -> bool:
    """*elf* is a 64-bit little-endian ELF with a PVH entry note, which
    QEMU's ``-kernel`` needs to boot it."""
    if len(elf) < 64 or elf[:4] != b"\x7fELF" or elf[4:6] != b"\x02\x01":
        return False
    phoff, = struct.unpack_from("<Q", elf, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", elf, 0x36)
    for i in range(phnum):
        at = phoff + i * phentsize
        if at + 56 > len(elf):
            return False
        p_type, = struct.unpack_from("<I", elf, at)
        if p_type != _PT_NOTE:
            continue
        off, = struct.unpack_from("<Q", elf, at + 8)
        size, = struct.unpack_from("<Q", elf, at + 32)
        end = min(off + size, len(elf))
        while off + 12 <= end:
            namesz, descsz, kind = struct.unpack_from("<III", elf, off)
            name = elf[off + 12:off + 12 + namesz]
            if (name, kind) == _PVH_NOTE:
                return True
            off += 12 + (namesz + 3) // 4 * 4 + (descsz + 3) // 4 * 4
    return False


def unpacked(vmlinuz: Path, cache: Path) -> Path:
    """The image to boot for *vmlinuz*: its payload as an ELF under
    *cache* (made once per content of *vmlinuz*), or *vmlinuz* itself
    when it cannot be unpacked into something QEMU boots."""
    image = vmlinuz.read_bytes()
    digest = hashlib.sha256(f"{FORMAT}\0".encode() + image
                            ).hexdigest()[:16]
    out = cache / f"vmlinux-{digest}"
    if out.exists():
        return out
    no = cache / f"vmlinux-{digest}.none"   # tried: boot vmlinuz
    if no.exists():
        return vmlinuz
    cache.mkdir(parents=True, exist_ok=True)
    packed = payload(image)
    elf = decompress(packed) if packed is not None else None
    if elf is None or not has_pvh_note(elf):
        no.touch()
        return vmlinuz
    write_atomic(out, elf)          # parallel workers
    return out
