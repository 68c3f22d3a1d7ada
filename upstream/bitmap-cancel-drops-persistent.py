#!/usr/bin/env python3
"""A cancelled migration with dirty-bitmaps drops persistent bitmaps.

When a migration with the dirty-bitmaps capability starts, every
migrated bitmap is flagged "skip store": the destination will own it,
so the source must not write it back into its image when it hands the
image over.  A migration cancelled before the switchover never hands
the image over, and nothing clears the flag: the source runs on as the
bitmap's owner, but when it later shuts down cleanly, its persistent
bitmap is silently missing from the qcow2 image.

Here: a qcow2 image with a persistent bitmap, a migration to a file
cancelled at pre-switchover, a clean ``quit``, and the image's bitmaps
read back with ``qemu-img info``.
"""

from __future__ import annotations

import argparse
import json
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


def image_bitmaps(qemu_img: str, image: Path) -> list:
    info = json.loads(run_tool([qemu_img, "info", "--output=json",
                                "-U", str(image)]))
    data = info.get("format-specific", {}).get("data", {})
    return [(b["name"], b["flags"]) for b in data.get("bitmaps", [])]


def run(args: argparse.Namespace, workdir: Path) -> None:
    image = workdir / "disk.qcow2"
    run_tool([args.qemu_img, "create", "-q", "-f", "qcow2", str(image),
              str(64 * MiB)])
    with Qemu(args.qemu, workdir, "src", machine=args.machine, args=(
            "-blockdev", f"driver=qcow2,node-name=drive0,"
                         f"file.driver=file,file.filename={image}",
    )) as vm:
        start_note(vm)
        vm.cmd("block-dirty-bitmap-add", node="drive0", name="bitmap0",
               granularity=64 * KiB, persistent=True)
        vm.hmp('qemu-io drive0 "write 1M 64k"')
        count = vm.bitmaps("drive0")["bitmap0"]["count"]
        if count != 64 * KiB:
            raise HarnessError(f"bitmap0 counts {count} after a 64 KiB write")
        vm.set_caps(events=True, **{"dirty-bitmaps": True,
                                    "pause-before-switchover": True})
        vm.cmd("migrate", uri=f"exec:cat > {workdir / 'stream'}")
        if vm.wait_migration(("pre-switchover", "failed"), 60) \
                != "pre-switchover":
            raise HarnessError("the migration did not reach pre-switchover: "
                               f"{vm.cmd('query-migrate')}")
        vm.cmd("migrate_cancel")
        if vm.wait_migration(("cancelled",), 30) is None:
            raise HarnessError("migrate_cancel did not end the migration")
        note(f"migration cancelled at pre-switchover; bitmap0 in memory: "
             f"count {vm.bitmaps('drive0')['bitmap0']['count']}")
        vm.cmd("quit")
        status = vm.wait_exit(30)
        if status != 0:
            raise HarnessError(f"quit ended QEMU with {status}: {vm.log()}")
    stored = image_bitmaps(args.qemu_img, image)
    note(f"after a clean quit, qemu-img info lists: {stored}")
    if not any(name == "bitmap0" for name, _ in stored):
        reproduced("persistent bitmap 'bitmap0' is missing from the qcow2 "
                   "image after a migration cancelled at pre-switchover and "
                   "a clean quit (exit status 0)")
    not_reproduced(f"the image still has its bitmap: {stored}")


if __name__ == "__main__":
    main(__doc__.splitlines()[0], run, tools=("qemu-img",))
