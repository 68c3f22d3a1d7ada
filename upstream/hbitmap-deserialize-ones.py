#!/usr/bin/env python3
"""hbitmap_deserialize_ones() sets bits past the end of a bitmap.

A qcow2 bitmap table entry of 1 means "this cluster of the bitmap is all
ones" (docs/interop/qcow2.rst, "Bitmap table").  qcow2 loads such a
cluster with hbitmap_deserialize_ones(), which fills whole 64-bit words
of the last level: when the bitmap's size is not a multiple of 64 bits,
the bits past its end in the last word are set too.  The bitmap's count
does not see them, but once the node grows (block_resize) they are
inside the bitmap, and the next operation that counts afresh finds dirty
bits that nobody set.

Here: a 1 MiB + 64 KiB qcow2 image with a 64 KiB-granularity bitmap
(17 bits), its bitmap table entry rewritten to "all ones", opened,
resized to 8 MiB, and merged into a new empty bitmap.  The merge must
count 17 granules; with the defect it counts 64 (one whole word).
"""

from __future__ import annotations

import argparse
import struct
from pathlib import Path

from _common import (
    HarnessError,
    KiB,
    MiB,
    Qemu,
    main,
    not_reproduced,
    note,
    reproduced,
    run_tool,
    start_note,
)

GRANULARITY = 64 * KiB
SIZE = MiB + GRANULARITY        # 17 granules: not a multiple of 64
BITS = SIZE // GRANULARITY
NEW_SIZE = 8 * MiB
#: qcow2 header extension "bitmaps"
BITMAPS_EXT = 0x23852875


def set_all_ones(image: Path) -> None:
    """Turn the first bitmap's table entry into the all-ones flag
    (offset 0, bit 0 set), as the qcow2 spec allows."""
    with open(image, "r+b") as f:
        header = f.read(4096)
        magic, version = struct.unpack_from(">4sI", header, 0)
        if magic != b"QFI\xfb" or version < 3:
            raise HarnessError(f"not a qcow2 v3 image: {magic!r} {version}")
        (header_length,) = struct.unpack_from(">I", header, 100)
        pos = header_length
        while True:
            ext_type, ext_len = struct.unpack_from(">II", header, pos)
            if ext_type == 0:
                raise HarnessError("the image has no bitmaps extension")
            if ext_type == BITMAPS_EXT:
                nb, _, _dir_size, dir_offset = \
                    struct.unpack_from(">IIQQ", header, pos + 8)
                break
            pos += 8 + (ext_len + 7) // 8 * 8
        f.seek(dir_offset)
        table_offset, table_size = struct.unpack(">QI", f.read(12))
        if nb != 1 or table_size != 1:
            raise HarnessError(f"{nb} bitmaps, table of {table_size}: "
                               f"expected 1 and 1")
        f.seek(table_offset)
        (entry,) = struct.unpack(">Q", f.read(8))
        if entry != 0:
            raise HarnessError(f"a clear bitmap's table entry is {entry:#x}")
        f.seek(table_offset)
        f.write(struct.pack(">Q", 1))


def run(args: argparse.Namespace, workdir: Path) -> None:
    image = workdir / "disk.qcow2"
    run_tool([args.qemu_img, "create", "-q", "-f", "qcow2", str(image),
              str(SIZE)])
    run_tool([args.qemu_img, "bitmap", "--add", "-g", str(GRANULARITY),
              str(image), "b0"])
    set_all_ones(image)
    note(f"{image.name}: {SIZE} bytes, bitmap b0 of {BITS} granules of "
         f"{GRANULARITY // KiB} KiB stored as one all-ones table entry")
    with Qemu(args.qemu, workdir, "vm", machine=args.machine, args=(
            "-blockdev", f"driver=qcow2,node-name=drive0,"
                         f"file.driver=file,file.filename={image}",
    )) as vm:
        start_note(vm)
        loaded = vm.bitmaps("drive0")["b0"]["count"]
        note(f"b0 loaded, count {loaded} ({loaded // GRANULARITY} granules)")
        if loaded != SIZE:
            raise HarnessError(f"the all-ones bitmap loaded with count "
                               f"{loaded}, not {SIZE}")
        vm.cmd("block_resize", size=NEW_SIZE, **{"node-name": "drive0"})
        after_resize = vm.bitmaps("drive0")["b0"]["count"]
        note(f"resized to {NEW_SIZE // MiB} MiB: b0 count {after_resize}")
        vm.cmd("block-dirty-bitmap-add", node="drive0", name="b1",
               granularity=GRANULARITY)
        vm.cmd("block-dirty-bitmap-merge", node="drive0", target="b1",
               bitmaps=["b0"])
        merged = vm.bitmaps("drive0")["b1"]["count"]
        note(f"b0 merged into an empty b1: b1 count {merged} "
             f"({merged // GRANULARITY} granules)")
        if merged > loaded:
            reproduced(
                f"bitmap b0 was loaded from an all-ones qcow2 cluster with "
                f"{BITS} granules dirty; after block_resize to "
                f"{NEW_SIZE // MiB} MiB a merge of it counts "
                f"{merged // GRANULARITY} granules ({merged} bytes): "
                f"{(merged - loaded) // GRANULARITY} granules past the old "
                f"end that were never set")
        not_reproduced(f"after block_resize the merged bitmap counts "
                       f"{merged // GRANULARITY} granules, the {BITS} loaded")


if __name__ == "__main__":
    main(__doc__.splitlines()[0], run, tools=("qemu-img",))
