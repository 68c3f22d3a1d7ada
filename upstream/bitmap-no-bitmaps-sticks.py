#!/usr/bin/env python3
"""After one bitmap migration finds no bitmap, later ones migrate none.

With the dirty-bitmaps capability, a migration that finds no bitmap sets
no_bitmaps in migration/block-dirty-bitmap.c, and the handler's
is_active() answers false from then on.  Only the handler's setup clears
the flag, and qemu_savevm_state_setup() never sets up an inactive
handler.  So once a migration of the process found no bitmap (here: a
migration cancelled before the switchover), every later migration leaves
all bitmaps behind, including the ones added since, and nothing reports
it: the destination simply starts without them.

Here: a cancelled migration without bitmaps, then a bitmap with 64 KiB
set, then a migration to a second QEMU.  Reproduced when the destination
has no bitmap after the migration completed; fixed when it has the
bitmap with the same bits.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from _common import (
    HarnessError,
    MiB,
    main,
    migration_pair,
    not_reproduced,
    reproduced,
)


def run(args: argparse.Namespace, workdir: Path) -> None:
    src, dst, sock = migration_pair(args, workdir, 64 * MiB)
    for vm in (src, dst):
        vm.set_caps(events=True, **{"dirty-bitmaps": True})

    src.set_caps(**{"pause-before-switchover": True})
    src.cmd("migrate", uri="exec:cat > /dev/null")
    if src.wait_migration(("pre-switchover",), 30) is None:
        raise HarnessError("the first migration never reached pre-switchover")
    src.cmd("migrate_cancel")
    if src.wait_migration(("cancelled",), 30) is None:
        raise HarnessError("the first migration was not cancelled")
    src.set_caps(**{"pause-before-switchover": False})

    src.cmd("block-dirty-bitmap-add", node="drive0", name="bitmap0",
            granularity=65536)
    src.hmp('qemu-io drive0 "write 1M 64k"')
    expected = src.cmd("x-debug-block-dirty-bitmap-sha256", node="drive0",
                       name="bitmap0")["sha256"]
    src.cmd("migrate", uri=f"unix:{sock}")
    if src.wait_migration(("completed", "failed"), 60) != "completed":
        raise HarnessError(f"the second migration did not complete: "
                           f"{src.log().strip()[-400:]}")
    if dst.wait_migration(("completed",), 60) is None:
        raise HarnessError("the destination did not complete")

    names = [b["name"] for n in dst.cmd("query-named-block-nodes")
             if n.get("node-name") == "drive0"
             for b in n.get("dirty-bitmaps", [])]
    if "bitmap0" not in names:
        reproduced("after a cancelled migration without bitmaps, a bitmap "
                   "added since was not migrated: the destination has "
                   f"{names or 'no bitmap'} on drive0, and no error was "
                   "reported")
    got = dst.cmd("x-debug-block-dirty-bitmap-sha256", node="drive0",
                  name="bitmap0")["sha256"]
    if got != expected:
        raise HarnessError(f"bitmap0 migrated but differs: {got} != "
                           f"{expected}")
    not_reproduced("the bitmap added after the cancelled migration arrived "
                   "with equal bits")


if __name__ == "__main__":
    main(__doc__.splitlines()[0], run)
