"""``pyqemu bench migrate``: live mode against every alternative.

Three parts, in one run on the same machine:

1. :mod:`pyqemu.bench.compare`: every mode (no bitmaps, stock precopy,
   stock postcopy early and late, the fixes alone with
   avail-switchover-bandwidth, live, live + postcopy) over disk sizes
   and bitmap densities, repeated and interleaved, with the issue's
   targets checked for live mode, and when the fixes alone are enough;
2. :mod:`pyqemu.bench.writeload`: live mode under a Linux guest writing
   at several rates and patterns, resends measured against a model, and
   what the meta bitmap costs the guest's writes;
3. :mod:`pyqemu.bench.safety`: a fault right after the switchover in
   postcopy and in live mode, and which bitmaps survive where.

It writes ``results.md``, ``results.json`` and the PNG plots under
``<cache>/bench/migrate/``; ``pyqemu series cover-letter`` takes its
table from there.  Every VM of the run is on the host's accelerator
(:mod:`pyqemu.machine.accel`): the results say which, first thing, and
why (``accel`` in the JSON), since KVM and TCG numbers do not compare.
"""

from __future__ import annotations

import time
from dataclasses import asdict
from typing import Any

from ..machine import accel
from ..paths import Layout
from ..util.results import save
from . import compare, fill, safety
from .writeload import experiment as writeload
from .writeload import report as writeload_report
from .writeload.results import data as writeload_data


def main(layout: Layout, quick: bool = False) -> int:
    """Run the three parts; the results are saved after each, so that a
    part that breaks does not cost the ones before it."""
    start = time.monotonic()
    sizes = compare.QUICK_SIZES if quick else compare.SIZES
    densities = ("sparse", "full") if quick else fill.DENSITIES
    runs = 3 if quick else compare.RUNS
    host = accel.detect()
    samples = compare.sweep(layout, sizes, densities, runs)
    summaries = compare.summarize(samples)
    goals = compare.targets(summaries)
    parts = [
        f"Every guest runs on {host}.",
        "## Every mode, sizes and densities\n\n" + compare.describe(runs),
        compare.table(summaries),
        "Live mode against the targets:",
        compare.targets_table(goals),
        compare.ratios_table(summaries),
        compare.fixes_table(summaries),
    ]
    data: dict[str, Any] = {
        "accel": {"accel": host.accel, "label": host.label, "why": host.why},
        "params": compare.PARAMS, "runs": runs,
        "samples": [asdict(s) for s in samples],
        "summaries": [asdict(s) for s in summaries],
        "targets": [asdict(t) for t in goals],
    }
    d = save(layout, "migrate", "\n\n".join(parts), data)
    compare.plot(summaries, d / "downtime.png")

    load = writeload.run(layout, quick)
    parts += ["## Under write load\n\n" +
              writeload_report.describe(host.label),
              writeload_report.table(load), "Targets under write load:\n\n"
              + writeload_report.targets(load)]
    data["writeload"] = writeload_data(load)
    save(layout, "migrate", "\n\n".join(parts), data)
    writeload_report.plot(load, d / "writeload.png")

    faults = safety.run(layout, runs=1 if quick else 2)
    parts += ["## A fault right after the switchover\n\n" +
              safety.describe(), safety.table(faults)]
    data["safety"] = [asdict(r) for r in faults]
    md = "\n\n".join(parts)
    save(layout, "migrate", md, data)
    print(md)
    print(f"\n(written to {d}/results.md, results.json, downtime.png, "
          f"writeload.png; {time.monotonic() - start:.0f} s, guests on "
          f"{host.label})")
    return 0
