"""``pyqemu check faults|fuzz``: the fault scenarios and the stream fuzzer,
with a printed table (the pytest suite runs the same code and asserts)."""

from __future__ import annotations

import argparse

from . import build as buildmod
from . import faults
from .bench.report import markdown_table


def main(args: argparse.Namespace) -> int:
    if args.what == "fuzz":
        from . import fuzz
        return fuzz.main(args.inputs, args.seed)
    buildmod.build()
    rows, ok = [], True
    for scenario in faults.SCENARIOS:
        r = faults.run(scenario)
        ok &= r.ok
        rows.append((r.scenario, r.outcome,
                     "yes" if r.source_running else "NO",
                     "yes" if r.bitmaps_intact else "NO", r.destination,
                     r.retry))
    stock = faults.postcopy_failure("stock", live=False)
    for flavour, live in (("stock", False), ("patched", False),
                          ("patched", True)):
        got = faults.postcopy_failure(flavour, live)
        same = got == stock
        ok &= same
        rows.append((f"postcopy, destination killed ({flavour}"
                     f"{', live' if live else ''})", "/".join(got), "-", "-",
                     "-", "same as stock" if same else "DIFFERS from stock"))
    print(markdown_table(("scenario", "outcome", "source running",
                          "bitmaps intact", "destination", "retry"), rows))
    return 0 if ok else 1
