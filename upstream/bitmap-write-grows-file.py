#!/usr/bin/env python3
"""A write that grows an image file whose bitmap migrates aborts QEMU.

With the dirty-bitmaps capability, every named bitmap is busy from the
migration's setup to its end.  A write past the end of a protocol node
(an allocating qcow2 write appends clusters to its file) grows the node
in bdrv_co_write_req_finish(), which truncates every bitmap of the node,
and bdrv_dirty_bitmap_truncate() asserts that none of them is busy.  So
a guest write during the migration aborts the source when its qcow2
file carries a bitmap: the block_resize case (refused by the series'
patch 07) has a second way in that no command guards.

Here: a 64 GiB qcow2 node on a file node, with a bitmap on the file
node; a 1 TiB null-co node with two bitmaps keeps the migration active
at 4 MiB/s; then HMP ``qemu-io drive0 "write 40G 1M"``.  Fixed when
the write succeeds and the source keeps running (the migration may go
on or fail cleanly).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from _common import (
    GiB,
    HarnessError,
    KiB,
    MiB,
    Qemu,
    TiB,
    crash_evidence,
    main,
    not_reproduced,
    note,
    reproduced,
    run_tool,
    start_note,
)


def run(args: argparse.Namespace, workdir: Path) -> None:
    image = workdir / "disk.qcow2"
    run_tool([args.qemu_img, "create", "-q", "-f", "qcow2", str(image),
              str(64 * GiB)])
    with Qemu(args.qemu, workdir, "src", machine=args.machine, args=(
            "-blockdev", f"driver=file,node-name=file0,filename={image}",
            "-blockdev", "driver=qcow2,node-name=drive0,file=file0",
            "-blockdev", f"driver=null-co,node-name=big,size={TiB}",
    )) as vm:
        start_note(vm)
        vm.cmd("block-dirty-bitmap-add", node="file0", name="fb",
               granularity=64 * KiB)
        for i in range(2):
            vm.cmd("block-dirty-bitmap-add", node="big", name=f"b{i}",
                   granularity=64 * KiB)
        vm.set_caps(events=True, **{"dirty-bitmaps": True})
        vm.cmd("migrate-set-parameters", **{"max-bandwidth": 4 * MiB,
                                            "downtime-limit": 300})
        vm.cmd("migrate", uri=f"exec:cat > {workdir / 'stream'}")
        time.sleep(0.5)
        status = vm.migration_status()
        busy = vm.bitmaps("file0")["fb"].get("busy")
        size0 = image.stat().st_size
        note(f"migration {status}, bitmap fb of file0 busy={busy}, "
             f"file {size0} bytes")
        if status != "active" or busy is False:
            raise HarnessError(f"not the state to test: migration {status}, "
                               f"fb busy={busy}")
        answered = True
        try:
            out = vm.hmp('qemu-io drive0 "write 40G 1M"')
        except Exception as e:          # noqa: BLE001 - QEMU died under it
            note(f"qemu-io got no answer: {type(e).__name__}")
            out, answered = "", False
        # a monitor that answered (HMP qemu-io prints nothing on success)
        # had a QEMU alive after the write; one that did not may still
        # be dying
        if vm.wait_exit(1 if answered else 10) is not None:
            reproduced(f"a 1 MiB write that grew the qcow2 file during the "
                       f"migration: {crash_evidence(vm)}")
        if "error" in out.lower() or "fail" in out.lower():
            raise HarnessError(f"the write failed: {out.strip()}")
        size1 = image.stat().st_size
        not_reproduced(f"QEMU still runs; the write returned "
                       f"{out.strip() or '(no error)'}, the file grew from "
                       f"{size0} to {size1} bytes; migration "
                       f"{vm.migration_status()}, bitmap fb count "
                       f"{vm.bitmaps('file0')['fb']['count']}")


if __name__ == "__main__":
    main(__doc__.splitlines()[0], run, tools=("qemu-img",))
