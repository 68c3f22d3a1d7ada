#!/usr/bin/env python3
"""HMP qemu-io writing to a node that migration inactivated aborts QEMU.

After a migration completes, the source's nodes are inactive: the
destination owns the images.  The block layer asserts that nothing
writes to an inactive node, and HMP ``qemu-io`` writes through a
BlockBackend that has the write permission, so

    qemu-io drive0 "write 0 64k"

on the migrated source aborts it.  Fixed when the write fails with an
error and the source stays in ``postmigrate``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from _common import (
    HarnessError,
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
    with Qemu(args.qemu, workdir, "src", machine=args.machine, args=(
            "-blockdev", f"driver=null-co,node-name=drive0,size={64 * MiB}",
    )) as vm:
        start_note(vm)
        out = vm.hmp('qemu-io drive0 "read 0 64k"')
        # success prints the transfer, or nothing (to QEMU's stdout then)
        if out.strip() and "read 65536/65536" not in out:
            raise HarnessError(f"qemu-io does not work here: {out.strip()}")
        vm.set_caps(events=True)
        vm.cmd("migrate", uri=f"exec:cat > {workdir / 'stream'}")
        if vm.wait_migration(("completed", "failed"), 60) != "completed":
            raise RuntimeError(f"the migration did not complete: "
                               f"{vm.cmd('query-migrate')}")
        note(f"migration completed, status {vm.cmd('query-status')['status']}")
        try:
            out = vm.hmp('qemu-io drive0 "write 0 64k"')
        except Exception as e:          # noqa: BLE001 - QEMU died under it
            note(f"qemu-io got no answer: {type(e).__name__}")
            out = ""
        if vm.wait_exit(10 if not out else 1) is not None:
            reproduced(f"HMP qemu-io write to the inactive node: "
                       f"{crash_evidence(vm)}")
        status = vm.cmd("query-status")["status"]
        not_reproduced(f"QEMU still runs ({status}); qemu-io said: "
                       f"{out.strip()}")


if __name__ == "__main__":
    main(__doc__.splitlines()[0], run)
