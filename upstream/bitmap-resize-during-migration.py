#!/usr/bin/env python3
"""block_resize of a node whose dirty bitmap is being migrated aborts QEMU.

With the dirty-bitmaps capability, every named bitmap is marked busy
from the migration's setup to its end.  A resize truncates every bitmap
of the node, and bdrv_dirty_bitmap_truncate() asserts that none of them
is busy; nothing refuses the resize first (block jobs that make a bitmap
busy also take away the resize permission, a migration does not).  So
``block_resize`` while the migration waits at ``pre-switchover`` aborts
the source.  Fixed when block_resize fails with an error and the
migration can still be cancelled.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from _common import (
    GiB,
    HarnessError,
    KiB,
    MiB,
    Qemu,
    crash_evidence,
    main,
    not_reproduced,
    note,
    reproduced,
    start_note,
)


def run(args: argparse.Namespace, workdir: Path) -> None:
    disk = workdir / "disk.raw"
    with open(disk, "wb") as f:
        f.truncate(GiB)
    with Qemu(args.qemu, workdir, "src", machine=args.machine, args=(
            "-blockdev", f"driver=file,node-name=drive0,filename={disk}",
    )) as vm:
        start_note(vm)
        vm.cmd("block-dirty-bitmap-add", node="drive0", name="bitmap0",
               granularity=64 * KiB)
        vm.hmp('qemu-io drive0 "write 1M 64k"')
        vm.set_caps(events=True, **{"dirty-bitmaps": True,
                                    "pause-before-switchover": True})
        vm.cmd("migrate", uri=f"exec:cat > {workdir / 'stream'}")
        if vm.wait_migration(("pre-switchover", "failed"), 60) \
                != "pre-switchover":
            raise RuntimeError("the migration did not reach pre-switchover: "
                               f"{vm.cmd('query-migrate')}")
        note("migration paused at pre-switchover, bitmap0 is being migrated")
        try:
            reply = vm.try_cmd("block_resize", size=2 * GiB,
                               **{"node-name": "drive0"})
        except Exception as e:          # noqa: BLE001 - QEMU died under it
            note(f"block_resize got no answer: {type(e).__name__}")
            reply = None
        if vm.wait_exit(10 if reply is None else 1) is not None:
            reproduced(f"block_resize during the migration: "
                       f"{crash_evidence(vm)}")
        note(f"block_resize replied {reply}")
        if "error" in reply and "bitmap" not in reply["error"]:
            raise HarnessError(f"block_resize failed for another reason: "
                               f"{reply['error']}")
        vm.cmd("migrate_cancel")
        vm.wait_migration(("cancelled",), 30)
        size = os.path.getsize(disk)
        not_reproduced(f"QEMU still runs; block_resize replied {reply}; "
                       f"migration {vm.migration_status()}; image size "
                       f"{size // MiB} MiB")


if __name__ == "__main__":
    main(__doc__.splitlines()[0], run)
