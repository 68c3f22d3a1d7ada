#!/usr/bin/env python3
"""A migration during a backup job hands over images it never inactivated.

At the switchover the source inactivates its block nodes
(bdrv_inactivate_all()) so that the destination can take the images
over.  bdrv_inactivate_all() walks bdrv_first()/bdrv_next(), i.e. the
roots of BlockBackends and the monitor's own nodes, and skips every node
that has a node parent, trusting the recursion from that parent.  A
running ``blockdev-backup`` puts a copy-before-write filter above its
source node, with the target as its second child; the filter's only
parent is the job itself, through a BdrvChild of the job class, not a
BlockBackend.  So bdrv_next() never returns the filter, the source and
target nodes are skipped because the filter is their parent, nothing
is inactivated, and bdrv_inactivate_all() returns 0 (a debugger on
10.2.2 shows it entered and bdrv_inactivate_recurse() never called).

So the migration completes on the source with every node still active
and the backup job still writing.  The destination, on the same
images, cannot take their write locks ('Failed to get "write" lock')
and stays paused with inactive nodes: the migration reports
"completed" on both ends while the guest runs on neither.  Where the
storage has no such locks, both ends run on the images at once.

Here: a qcow2 image and a raw backup target, a running incremental
backup at 4 MiB/s, a migration without dirty-bitmaps to a second QEMU
on the same files.  Reproduced when both ends report the migration
completed but the destination does not run (or the source's nodes are
still active: ``active`` in query-named-block-nodes, QEMU 10.0 on).
Fixed when the migration fails cleanly, or completes with the source's
nodes inactive and the destination running.
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
    run_tool,
    start_note,
)


def active_nodes(vm: Qemu) -> list:
    """Nodes reported active (None where QEMU does not report it)."""
    return [n["node-name"] for n in vm.cmd("query-named-block-nodes")
            if n.get("active") is True]


def run(args: argparse.Namespace, workdir: Path) -> None:
    disk, target = workdir / "disk.qcow2", workdir / "target.raw"
    run_tool([args.qemu_img, "create", "-q", "-f", "qcow2", str(disk),
              str(4 * GiB)])
    run_tool([args.qemu_img, "create", "-q", "-f", "raw", str(target),
              str(4 * GiB)])
    nodes = ("-blockdev", f"driver=qcow2,node-name=drive0,file.driver=file,"
                          f"file.filename={disk}",
             "-blockdev", f"driver=raw,node-name=target0,file.driver=file,"
                          f"file.filename={target}")
    sock = workdir / "mig.sock"
    src = Qemu(args.qemu, workdir, "src", machine=args.machine,
               args=nodes).launch()
    dst = Qemu(args.qemu, workdir, "dst", machine=args.machine,
               args=nodes + ("-incoming", f"unix:{sock}")).launch()
    start_note(src)
    src.cmd("block-dirty-bitmap-add", node="drive0", name="b0",
            granularity=64 * KiB)
    src.hmp('qemu-io drive0 "write -P 0x55 0 256M"')
    src.cmd("blockdev-backup", device="drive0", target="target0",
            sync="incremental", bitmap="b0", speed=4 * MiB,
            **{"job-id": "backup0"})
    time.sleep(0.2)
    jobs = src.cmd("query-block-jobs")
    if not jobs or jobs[0]["status"] != "running":
        raise HarnessError(f"the backup job is not running: {jobs}")
    for vm in (src, dst):
        vm.set_caps(events=True)
    src.cmd("migrate", uri=f"unix:{sock}")
    src_end = src.wait_migration(("completed", "failed"), 60)
    if src_end == "failed":
        not_reproduced(f"the source's migration failed: "
                       f"{src.cmd('query-migrate').get('error-desc')}; "
                       f"source {src.cmd('query-status')['status']}")
    if src_end is None:
        raise HarnessError("the migration did not end in 60 s")
    dst_end = dst.wait_migration(("completed", "failed"), 30)
    if not dst.alive():
        raise HarnessError(f"destination {crash_evidence(dst)}")
    time.sleep(0.5)     # the destination activates its nodes after the event
    dst_state = dst.cmd("query-status")["status"]
    src_active = active_nodes(src)
    jobs = src.cmd("query-block-jobs")
    lock = [ln.strip() for ln in dst.log().splitlines() if "lock" in ln]
    note(f"source: migration completed, {src.cmd('query-status')['status']}"
         f", active nodes {src_active}, jobs "
         f"{[(j['device'], j['status'], j['offset']) for j in jobs]}")
    note(f"destination: migration {dst_end}, {dst_state}, active nodes "
         f"{active_nodes(dst)}; log: {' / '.join(lock) or '-'}")
    if dst_end == "completed" and dst_state != "running":
        reproduced(f"both ends report the migration completed, but the "
                   f"destination stays {dst_state!r}"
                   + (f" ({lock[0]})" if lock else "")
                   + " and the source kept its nodes"
                   + (f" {src_active} active" if src_active else "")
                   + f" with the backup job {jobs[0]['status'] if jobs else 'gone'}")
    if src_active:
        reproduced(f"the migration completed with the source's nodes "
                   f"{src_active} still active and the destination "
                   f"{dst_state}")
    not_reproduced(f"the destination runs ({dst_state}) and the source's "
                   f"nodes are inactive")


if __name__ == "__main__":
    main(__doc__.splitlines()[0], run, tools=("qemu-img",))
