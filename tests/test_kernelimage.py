"""The Linux guest boots its kernel unpacked (pyqemu/machine/kernelimage.py)
and falls back to the vmlinuz wherever that cannot be done."""

from __future__ import annotations

import gzip
import lzma
import struct
from pathlib import Path

from pyqemu.machine import kernelimage, linuxguest
from pyqemu.paths import Layout


def elf(notes: list[tuple[bytes, int]]) -> bytes:
    """A 64-bit little-endian ELF header, one PT_NOTE program header and
    the notes (owner, type), each with a 4-byte descriptor."""
    body = b"".join(struct.pack("<III", len(name), 4, kind) + name
                    + b"\0" * (-len(name) % 4) + b"\x00\x10\x00\x01"
                    for name, kind in notes)
    header = bytearray(64)
    header[:6] = b"\x7fELF\x02\x01"
    struct.pack_into("<Q", header, 0x20, 64)                # e_phoff
    struct.pack_into("<HH", header, 0x36, 56, 1)            # phentsize, num
    phdr = bytearray(56)
    struct.pack_into("<I", phdr, 0, 4)                      # PT_NOTE
    struct.pack_into("<Q", phdr, 8, 64 + 56)                # p_offset
    struct.pack_into("<Q", phdr, 32, len(body))             # p_filesz
    return bytes(header + phdr) + body


def bzimage(payload: bytes) -> bytes:
    """A bzImage as far as its setup header says where the payload is:
    one setup sector after the boot sector, the payload right after."""
    # the kernel's build appends the uncompressed size to the stream,
    # and counts it in the payload's length
    payload += struct.pack("<I", 1 << 20)
    image = bytearray(1024)
    image[0x1F1] = 1
    image[0x202:0x206] = b"HdrS"
    struct.pack_into("<H", image, 0x206, 0x20F)             # protocol 2.15
    struct.pack_into("<II", image, 0x248, 0, len(payload))
    return bytes(image) + payload


def old_protocol(image: bytes) -> bytes:
    """*image* claiming boot protocol 2.07, which has no payload fields."""
    out = bytearray(image)
    struct.pack_into("<H", out, 0x206, 0x207)
    return bytes(out)


PVH = elf([(b"GNU\0", 3), (b"Xen\0", 18)])


def test_pvh_note_is_found_among_others() -> None:
    assert kernelimage.has_pvh_note(PVH)
    assert not kernelimage.has_pvh_note(elf([(b"Xen\0", 17)]))
    assert not kernelimage.has_pvh_note(elf([(b"GNU\0", 18)]))
    assert not kernelimage.has_pvh_note(b"MZ" + bytes(100))
    assert not kernelimage.has_pvh_note(PVH[:80])       # cut short


def test_xz_and_gzip_payloads_unpack_and_nothing_else() -> None:
    trailer = struct.pack("<I", len(PVH))
    assert kernelimage.decompress(lzma.compress(PVH) + trailer) == PVH
    assert kernelimage.decompress(gzip.compress(PVH) + trailer) == PVH
    assert kernelimage.decompress(b"\x28\xb5\x2f\xfd" + bytes(64)) is None
    assert kernelimage.decompress(lzma.compress(PVH)[:-20]) is None
    assert kernelimage.decompress(b"\x1f\x8b" + bytes(30)) is None


def test_an_image_with_a_pvh_kernel_is_unpacked_once(tmp_path: Path
                                                     ) -> None:
    vmlinuz = tmp_path / "vmlinuz"
    vmlinuz.write_bytes(bzimage(gzip.compress(PVH)))
    cache = tmp_path / "cache"
    out = kernelimage.unpacked(vmlinuz, cache)
    assert out.parent == cache and out.read_bytes() == PVH
    mtime = out.stat().st_mtime_ns
    assert kernelimage.unpacked(vmlinuz, cache) == out
    assert out.stat().st_mtime_ns == mtime
    assert [p.name for p in cache.iterdir()] == [out.name]


def test_what_cannot_boot_unpacked_boots_as_it_is(tmp_path: Path) -> None:
    cases = {
        "no-pvh": bzimage(gzip.compress(elf([(b"GNU\0", 3)]))),
        "zstd": bzimage(b"\x28\xb5\x2f\xfd" + bytes(64)),
        "not-a-bzimage": b"\x7fELF" + bytes(2000),
        "protocol-2.07": old_protocol(bzimage(gzip.compress(PVH))),
        "payload-past-the-end": bzimage(gzip.compress(PVH))[:-10],
    }
    for name, data in cases.items():
        vmlinuz = tmp_path / name
        vmlinuz.write_bytes(data)
        cache = tmp_path / f"cache-{name}"
        assert kernelimage.unpacked(vmlinuz, cache) == vmlinuz, name
        # and it is not tried again
        assert [p.suffix for p in cache.iterdir()] == [".none"], name
        assert kernelimage.unpacked(vmlinuz, cache) == vmlinuz, name


def test_the_guest_boots_debians_kernel_unpacked(layout: Layout) -> None:
    """Debian's amd64 kernel is xz-compressed with a PVH note: the Linux
    guest's ``-kernel`` is the unpacked ELF, not the vmlinuz whose
    decompression took most of a TCG boot."""
    args = linuxguest.qemu_args(layout, linuxguest.WriterConfig())
    image = Path(args[args.index("-kernel") + 1])
    assert image.parent == layout.root / "guest", image
    with image.open("rb") as f:
        head = f.read(4096)
    assert head[:4] == b"\x7fELF"
    assert kernelimage.has_pvh_note(image.read_bytes())
