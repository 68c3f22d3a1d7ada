#!/usr/bin/env python3
"""A destination node smaller than the source's aborts the destination.

QEMU gitlab issue #2650.  The destination takes the position of each
bitmap data chunk from the stream and hands it to hbitmap, which
asserts that it fits (serialization_chunk()).  When the destination's
node is smaller than the source's (a disk hot-plugged on the source
with another size than the one given to the destination), the source
sends chunks past the end of the destination's bitmap, and the
destination aborts, taking the migrated VM with it, after the source
already completed.

Here: a 2 GiB null-co node with a bitmap dirty at both ends, migrated
into a 1 GiB node of the same name.  Fixed when the destination
survives (it may drop the bitmap, with an error in its log).

``--larger``: the other way round, a 2 GiB destination and a source of
1 GiB + 3 MiB + 512 bytes, whose bitmap ends inside a serialization
word (64 bits of bitmap, 4 MiB of disk at 64 KiB granularity).  The
source's last chunk then ends at its own end, which for the larger
destination is neither its end nor aligned, and the destination aborts
on another assertion of serialization_chunk().  Fixed when the bitmap
arrives whole.  (A larger destination with an aligned source size, e.g.
1 GiB into 2 GiB, works on every version.)
"""

from __future__ import annotations

import argparse
from pathlib import Path

from _common import (
    GiB,
    HarnessError,
    KiB,
    MiB,
    crash_evidence,
    main,
    migration_pair,
    not_reproduced,
    note,
    reproduced,
)

GRANULARITY = 64 * KiB


def run(args: argparse.Namespace, workdir: Path) -> None:
    if args.larger:
        src_size, dst_size = GiB + 3 * MiB + 512, 2 * GiB
    else:
        src_size, dst_size = 2 * GiB, GiB
    src, dst, sock = migration_pair(args, workdir, src_size, dst_size)
    src.cmd("block-dirty-bitmap-add", node="drive0", name="bitmap0",
            granularity=GRANULARITY)
    src.hmp('qemu-io drive0 "write 1M 64k"')
    src.hmp(f'qemu-io drive0 "write {src_size - 512} 512"')
    expected = src.bitmaps("drive0")["bitmap0"]["count"]
    note(f"source node {src_size} bytes, destination node {dst_size}; "
         f"bitmap0 count {expected}")
    if expected != 2 * GRANULARITY:
        raise HarnessError(f"bitmap0 counts {expected} after two writes")
    for vm in (src, dst):
        vm.set_caps(events=True, **{"dirty-bitmaps": True})
    src.cmd("migrate", uri=f"unix:{sock}")
    src_end = src.wait_migration(("completed", "failed"), 60)
    dst_end = dst.wait_migration(("completed", "failed"), 30)
    dst_status = dst.wait_exit(5 if dst_end is None else 0.5)
    note(f"source migration {src_end}; destination migration {dst_end}, "
         f"process {'running' if dst_status is None else dst_status}")
    if dst_status is not None:
        reproduced(f"source migration {src_end}; destination "
                   f"{crash_evidence(dst)}")
    if dst_end != "completed":
        raise HarnessError(f"the destination's migration ended {dst_end}: "
                           f"{dst.log().strip()[-500:]}")
    got = dst.bitmaps("drive0")
    count = got["bitmap0"]["count"] if "bitmap0" in got else None
    log = " / ".join(ln.strip() for ln in dst.log().splitlines()
                     if "bitmap" in ln.lower())
    note(f"destination bitmaps: {sorted(got)}; its log: {log or '-'}")
    if args.larger:
        if count != expected:
            reproduced(f"the destination runs but bitmap0 "
                       f"{'is missing' if count is None else f'counts {count}'}"
                       f", not {expected}; its log: {log or '-'}")
        not_reproduced(f"bitmap0 arrived with count {count}")
    not_reproduced(f"the destination runs; bitmap0 "
                   f"{'dropped' if count is None else f'count {count}'}; "
                   f"its log: {log or '-'}")


def options(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--larger", action="store_true",
                    help="a larger destination and an unaligned source size")


if __name__ == "__main__":
    main(__doc__.splitlines()[0], run, extra=options)
