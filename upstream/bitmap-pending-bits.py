#!/usr/bin/env python3
"""The dirty-bitmaps pending estimate counts bits as bytes.

The migration core compares every device's pending data with what the
link carries within the downtime limit, in bytes.  The dirty bitmap
handler reports the number of bitmap *bits* not sent yet
(dirty_bitmap_state_pending(), called dirty_bitmap_save_pending() in
older versions): eight times the size of the bitmap data, and far more
than the few KiB a mostly clear bitmap takes on the wire.  Bitmaps are
not sent before the switchover, so nothing brings the figure down: a
migration whose bitmap data fits the downtime limit easily never
converges.

Here: four bitmaps of 1 MiB granularity on a 4 TiB null-co node, a few
granules dirty: 16 Mi bits, 2 MiB serialized, a few dozen KiB on the
wire.  The link is declared at 16 MiB/s (avail-switchover-bandwidth)
with a 300 ms downtime limit, so the switchover may carry 5 MB.
Reproduced when the migration does not complete within the deadline
and the traced estimate is the number of bits.  QEMU before 8.2 has no
avail-switchover-bandwidth: there only the traced estimate is checked.
"""

from __future__ import annotations

import argparse
import re
import time
from pathlib import Path

from _common import (
    HarnessError,
    MiB,
    Qemu,
    TiB,
    cannot_run,
    main,
    not_reproduced,
    note,
    reproduced,
    start_note,
)

DISK = 4 * TiB
GRANULARITY = MiB
NB_BITMAPS = 4
BITS = NB_BITMAPS * DISK // GRANULARITY
SERIALIZED = BITS // 8
BANDWIDTH = 16 * MiB        # bytes/s
DOWNTIME_MS = 300
THRESHOLD = BANDWIDTH * DOWNTIME_MS // 1000
#: seconds the migration gets: the fixed estimate completes in about one
DEADLINE = 4.0
PENDING = re.compile(r"dirty_bitmap_(?:state|save)_pending pending (\d+)")


def run(args: argparse.Namespace, workdir: Path) -> None:
    with Qemu(args.qemu, workdir, "src", machine=args.machine, args=(
            "-blockdev", f"driver=null-co,node-name=drive0,size={DISK}",
            "-trace", "enable=dirty_bitmap_s*_pending",
    )) as vm:
        start_note(vm)
        for i in range(NB_BITMAPS):
            vm.cmd("block-dirty-bitmap-add", node="drive0", name=f"b{i}",
                   granularity=GRANULARITY)
        vm.hmp(f'qemu-io drive0 "write {DISK // 2} 4M"')
        params = vm.cmd("query-migrate-parameters")
        knob = "avail-switchover-bandwidth" in params
        vm.set_caps(events=True, **{"dirty-bitmaps": True})
        vm.cmd("migrate-set-parameters", **{"downtime-limit": DOWNTIME_MS})
        if knob:
            vm.cmd("migrate-set-parameters",
                   **{"avail-switchover-bandwidth": BANDWIDTH})
        note(f"{NB_BITMAPS} bitmaps: {BITS} bits, {SERIALIZED // MiB} MiB "
             f"serialized; " + (
                 f"switchover may carry {THRESHOLD} bytes "
                 f"({BANDWIDTH // MiB} MiB/s x {DOWNTIME_MS} ms)" if knob else
                 "no avail-switchover-bandwidth: estimate only"))
        t0 = time.monotonic()
        vm.cmd("migrate", uri=f"exec:cat > {workdir / 'stream'}")
        # the idle migration thread asks for the estimate in a busy loop:
        # keep the trace to its first few thousand calls
        while time.monotonic() < t0 + DEADLINE and vm.alive() and \
                not PENDING.search(vm.log()):
            time.sleep(0.01)
        vm.cmd("trace-event-set-state", name="dirty_bitmap_s*_pending",
               enable=False)
        end = vm.wait_migration(("completed", "failed"),
                                t0 + (DEADLINE if knob else 2.0)
                                - time.monotonic())
        spent = time.monotonic() - t0
        if not vm.alive():
            raise HarnessError(f"QEMU ended {vm.status}: {vm.log()[-400:]}")
        traced = [int(n) for n in PENDING.findall(vm.log())]
    estimate = (f"pending estimate traced {len(traced)} times, first "
                f"{traced[0]}, last {traced[-1]}" if traced else
                "pending estimate not traced (no trace backend?)")
    note(estimate)
    bits = bool(traced) and traced[0] >= BITS
    if end == "completed":
        not_reproduced(f"completed in {spent:.2f} s; {estimate}")
    if end is not None:
        raise HarnessError(f"the migration {end}")
    if knob:
        if traced and not bits:
            raise HarnessError(f"not converged, but the estimate is not the "
                               f"bit count: {estimate}")
        reproduced(f"not converged in {DEADLINE:.0f} s although the "
                   f"{NB_BITMAPS} bitmaps are {SERIALIZED // MiB} MiB "
                   f"serialized and the switchover may carry {THRESHOLD} "
                   f"bytes; {estimate}"
                   + (f" (= the {BITS} bits)" if bits else ""))
    if bits:
        reproduced(f"{estimate}: the {BITS} bits of {NB_BITMAPS} bitmaps "
                   f"whose data is {SERIALIZED} bytes serialized "
                   f"(convergence not tested: no avail-switchover-bandwidth)")
    if not traced:
        cannot_run("no avail-switchover-bandwidth parameter (QEMU < 8.2) "
                   "and no dirty_bitmap_*_pending trace")
    not_reproduced(f"{estimate}: below the {BITS} bits")


if __name__ == "__main__":
    main(__doc__.splitlines()[0], run)
