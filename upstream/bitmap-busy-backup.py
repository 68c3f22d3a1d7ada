#!/usr/bin/env python3
"""A bitmap held by a running backup job fails the whole migration.

``blockdev-backup sync=incremental`` freezes its bitmap for as long as
the job runs (the bitmap is busy; new writes go to a successor).  With
the dirty-bitmaps capability, the migration's setup checks every named
bitmap with bdrv_dirty_bitmap_check() and gives up on the first busy
one: the migration fails with "Bitmap 'b0' is currently in use by
another operation and cannot be used".  A long backup thereby blocks
every live migration of the VM, including the evacuation of a host, and
the other bitmaps do not migrate either.

Here: four bitmaps on a 64 GiB null-co node, b0 held by an incremental
backup throttled to 1 MiB/s, migrated to a second QEMU.  Reproduced
when the migration fails because of the busy bitmap.  Fixed when it
completes and the other bitmaps arrive equal.
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
    crash_evidence,
    main,
    not_reproduced,
    note,
    reproduced,
    start_note,
)

SIZE = 64 * GiB
NAMES = ("b0", "b1", "b2", "b3")


def nodes() -> tuple:
    return ("-blockdev", f"driver=null-co,node-name=drive0,size={SIZE}",
            "-blockdev", f"driver=null-co,node-name=target0,size={SIZE}")


def sha256(vm: Qemu, name: str) -> str:
    return str(vm.cmd("x-debug-block-dirty-bitmap-sha256", node="drive0",
                      name=name)["sha256"])


def run(args: argparse.Namespace, workdir: Path) -> None:
    sock = workdir / "mig.sock"
    src = Qemu(args.qemu, workdir, "src", machine=args.machine,
               args=nodes()).launch()
    dst = Qemu(args.qemu, workdir, "dst", machine=args.machine,
               args=nodes() + ("-incoming", f"unix:{sock}")).launch()
    start_note(src)
    for name in NAMES:
        src.cmd("block-dirty-bitmap-add", node="drive0", name=name,
                granularity=64 * KiB)
    src.hmp('qemu-io drive0 "write 0 1G"')
    src.cmd("blockdev-backup", device="drive0", target="target0",
            sync="incremental", bitmap="b0", speed=MiB,
            **{"job-id": "backup0"})
    time.sleep(0.2)
    jobs = src.cmd("query-block-jobs")
    busy = src.bitmaps("drive0")["b0"].get("busy")
    note(f"backup job {[(j['device'], j['status']) for j in jobs]}, "
         f"b0 busy={busy}")
    if not jobs or jobs[0]["status"] != "running":
        raise HarnessError(f"the backup job is not running: {jobs}")
    expected = {name: sha256(src, name) for name in NAMES[1:]}
    for vm in (src, dst):
        vm.set_caps(events=True, **{"dirty-bitmaps": True})
    reply = src.try_cmd("migrate", uri=f"unix:{sock}")
    end = "failed" if "error" in reply else \
        src.wait_migration(("completed", "failed"), 60)
    info = src.cmd("query-migrate")
    # QEMU before 8.x reports a setup failure only on stderr
    error = reply.get("error") or info.get("error-desc") or " / ".join(
        ln.split(": ", 1)[-1] for ln in src.log().splitlines()
        if "Bitmap" in ln)
    jobs = src.cmd("query-block-jobs")
    note(f"migration {end}{': ' + error if error else ''}; source "
         f"{src.cmd('query-status')['status']}, job "
         f"{[(j['device'], j['status']) for j in jobs]}")
    if end == "failed":
        if "in use" in error or "busy" in error:
            reproduced(f"the migration failed: {error!r} (the backup job "
                       f"goes on: {[j['status'] for j in jobs]})")
        raise HarnessError(f"the migration failed for another reason: "
                           f"{error!r}")
    if end != "completed":
        raise HarnessError(f"the migration did not end in 60 s: {info}")
    if dst.wait_migration(("completed", "failed"), 30) != "completed":
        raise HarnessError(f"the destination did not complete: "
                           f"{crash_evidence(dst)}")
    got = dst.bitmaps("drive0")
    equal = [n for n in NAMES[1:] if n in got and
             sha256(dst, n) == expected[n]]
    note(f"destination bitmaps {sorted(got)}; equal: {equal}")
    if len(equal) != len(expected):
        raise HarnessError(f"migrated, but only {equal} of "
                           f"{sorted(expected)} arrived equal")
    not_reproduced(f"the migration completed with a backup holding b0; "
                   f"b1-b3 arrived equal; b0 "
                   f"{'arrived' if 'b0' in got else 'did not arrive'}")


if __name__ == "__main__":
    main(__doc__.splitlines()[0], run)
