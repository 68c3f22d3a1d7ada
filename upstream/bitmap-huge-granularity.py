#!/usr/bin/env python3
"""From 256 MiB granularity on, bitmap migration spins forever.

A bitmap data chunk carries 1 KiB of bitmap, i.e. 8192 granules, and
the stream gives its length as a be32 number of 512-byte sectors.  At
256 MiB granularity a chunk covers 2^32 sectors: on a node of 2 TiB or
more, the chunk length computed in bulk_phase_send_chunk() truncates to
0, the cursor never advances, and the source loops forever in the
completion phase, with the VM stopped and the BQL held: the monitor
stops answering, and nothing but SIGKILL ends the process.

Here: a 4 TiB null-co node with a bitmap of 256 MiB granularity,
migrated to a second QEMU.  Reproduced when the source neither
completes nor answers query-status within the deadline (the CPU
time it burns meanwhile is reported).  Fixed when the migration
completes with the bitmap equal on both ends.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from _common import (
    GiB,
    HarnessError,
    MiB,
    TiB,
    main,
    migration_pair,
    not_reproduced,
    note,
    reproduced,
)

DISK = 4 * TiB
GRANULARITY = 256 * MiB
#: seconds the migration gets; the fixed QEMU completes in well under one
DEADLINE = 4.0


def run(args: argparse.Namespace, workdir: Path) -> None:
    src, dst, sock = migration_pair(args, workdir, DISK)
    src.cmd("block-dirty-bitmap-add", node="drive0", name="bitmap0",
            granularity=GRANULARITY)
    for offset in (0, DISK // 2 + 3 * GiB, DISK - 512):
        src.hmp(f'qemu-io drive0 "write {offset} 512"')
    expected = src.cmd("x-debug-block-dirty-bitmap-sha256", node="drive0",
                       name="bitmap0")["sha256"]
    for vm in (src, dst):
        vm.set_caps(events=True, **{"dirty-bitmaps": True})
    cpu0 = src.cpu_seconds()
    t0 = time.monotonic()
    src.cmd("migrate", uri=f"unix:{sock}")
    end = src.wait_migration(("completed", "failed"), DEADLINE)
    if end == "completed":
        dst.wait_migration(("completed",), 30)
        got = dst.cmd("x-debug-block-dirty-bitmap-sha256", node="drive0",
                      name="bitmap0")["sha256"]
        if got != expected:
            raise HarnessError(f"migrated, but bitmap0 differs: "
                               f"{got} != {expected}")
        not_reproduced(f"the migration completed in "
                       f"{time.monotonic() - t0:.2f} s, bitmap0 equal")
    if end is not None or not src.alive():
        raise HarnessError(f"the migration ended {end}; source "
                           f"{src.status}: {src.log().strip()[-400:]}")
    answers = src.answers(2.0)
    spent = time.monotonic() - t0
    cpu = src.cpu_seconds() - cpu0
    note(f"{spent:.1f} s after migrate: no MIGRATION completed event, "
         f"query-status {'answered' if answers else 'got no answer in 2 s'}, "
         f"source used {cpu:.1f} s of CPU")
    if not answers:
        reproduced(f"the source did not complete the migration of a "
                   f"{GRANULARITY // MiB} MiB-granularity bitmap of a "
                   f"{DISK // TiB} TiB node in {spent:.0f} s, its monitor "
                   f"stopped answering (query-status: no reply in 2 s), and it "
                   f"spent {cpu:.1f} s of CPU meanwhile")
    status = src.cmd("query-migrate")["status"] if answers else "?"
    raise HarnessError(f"neither completed nor hung: migration {status}, "
                       f"CPU {cpu:.1f} s in {spent:.1f} s")


if __name__ == "__main__":
    main(__doc__.splitlines()[0], run)
