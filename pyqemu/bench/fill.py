"""Bitmaps of a chosen density, made in well under a second.

A benchmark has to compare sparse and fully dirty bitmaps of up to
16 TiB x 8 (256 MiB serialized).  Dirtying them with guest-sized writes
is far too slow: HMP ``qemu-io write`` is limited to 2 GiB per request,
and on a ``null-co`` disk every zero write falls back to a 16 MiB bounce
buffer, so 16 TiB took 91 s here.

Instead the source VM gets a helper node on a sparse tmpfs file of the
disk's size, opened with ``discard=unmap``: ``write -z -u -n`` on it
punches holes in a file that has none, which costs nothing however long
the range, and dirties the helper node's own bitmap like any write.  That
bitmap, at the same granularity, is then merged into every bitmap of the
disk (an O(size) word-wise OR), and the helper goes away.  The disk's
bitmaps end up exactly as if the guest had written those ranges.

Densities:

``sparse``
    one granule in each of at most :data:`SPARSE_CHUNKS` evenly spread
    chunks: most chunks stay all-zero and cost only their header on the
    wire;
``half``
    every other one of :data:`HALF_STRETCHES` equal stretches of the disk:
    half the bits, half the chunks full and half empty;
``full``
    every bit set.
"""

from __future__ import annotations

import os
import tempfile

from ..machine.vm import VM, Disk
from . import chunks

DENSITIES = ("sparse", "half", "full")
SPARSE_CHUNKS = 1024
HALF_STRETCHES = 128
_HELPER = "pq-fill"


class FillError(RuntimeError):
    """The helper node refused a write: the bitmaps are not what the
    benchmark says they are, so it must not go on."""


def ranges(size: int, granularity: int,
           density: str) -> list[tuple[int, int]]:
    """(offset, length) byte ranges to dirty for *density* on a disk of
    *size* bytes whose bitmaps have *granularity*."""
    if density == "full":
        return [(0, size)]
    if density == "half":
        stretch = -(-size // HALF_STRETCHES)
        stretch = -(-stretch // granularity) * granularity
        return [(off, min(stretch, size - off))
                for off in range(0, size, 2 * stretch)]
    if density == "sparse":
        span = chunks.BITS * granularity           # disk bytes per chunk
        count = -(-size // span)
        n = min(SPARSE_CHUNKS, count)
        return [((i * count // n) * span, granularity) for i in range(n)]
    raise ValueError(f"unknown density {density!r}; known: {DENSITIES}")


def dirty_bits(size: int, granularity: int, density: str) -> int:
    """How many bits *density* sets: what the bitmaps' count must be."""
    bits = 0
    for off, length in ranges(size, granularity, density):
        first, last = off // granularity, (off + length - 1) // granularity
        bits += last - first + 1
    return bits


def fill(vm: VM, disk: Disk, density: str) -> None:
    """Dirty every bitmap of *disk* on *vm* to *density*.

    All bitmaps of the disk must share one granularity for "sparse" and
    "half", whose meaning depends on it; "full" sets every bit whatever
    the granularity (the helper has the finest one, and QEMU merges it
    into coarser bitmaps range by range)."""
    grans = {b.granularity for b in disk.bitmaps}
    if not grans or (len(grans) != 1 and density != "full"):
        raise ValueError(f"a {density} fill needs one granularity per "
                         f"disk, got {grans}")
    gran = min(grans)
    with tempfile.NamedTemporaryFile(prefix=_HELPER, dir="/dev/shm") as f:
        os.truncate(f.name, disk.size)
        vm.cmd("blockdev-add", driver="file", filename=f.name,
               discard="unmap", **{"node-name": _HELPER})
        try:
            vm.cmd("block-dirty-bitmap-add", node=_HELPER, name="fill",
                   granularity=gran)
            for off, length in ranges(disk.size, gran, density):
                try:
                    vm.qemu_io_write(_HELPER, f"write -z -u -n {off} {length}")
                except RuntimeError as e:
                    raise FillError(f"the helper node: {e}") from None
            for b in disk.bitmaps:
                vm.cmd("block-dirty-bitmap-merge", node=disk.node,
                       target=b.name,
                       bitmaps=[{"node": _HELPER, "name": "fill"}])
        finally:
            vm.cmd("blockdev-del", **{"node-name": _HELPER})
    want = dirty_bits(disk.size, gran, density) * gran
    for (node, name), desc in vm.bitmaps().items():
        if node == disk.node and desc["count"] < min(want, disk.size):
            raise FillError(f"bitmap {node}/{name} has {desc['count']} dirty "
                            f"bytes after the {density} fill, expected "
                            f"{want}")
