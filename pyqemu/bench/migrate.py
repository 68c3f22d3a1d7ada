"""``pyqemu bench migrate``: stock vs patched migration of large bitmaps.

Sweep: disk size (64 GiB .. 16 TiB) x bitmap count (1, 8), all bitmaps at
64 KiB granularity, with a fixed bandwidth cap and downtime limit.  Stock
uses today's ``dirty-bitmaps`` capability, patched adds
``dirty-bitmaps-live``.  The VM is the same ``-machine pc`` TCG guest with
a ``null-co`` disk; before migrating, writes spread over the disk make a
fixed number of 1 KiB bitmap chunks non-zero (what a guest that wrote to
that many places would leave behind).

Per case: converged?, total time, downtime, the downtime of the same VM
without bitmaps (each build's own baseline), bitmap bytes on the wire
(patched reports them in query-migrate) against the serialized bitmap
size, and how much of it fell into the downtime.  Then the same
comparison with a Linux guest writing all through the migration
(:mod:`pyqemu.bench.linux`).
"""

from __future__ import annotations

import json
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from ..log import info
from ..machine import migration
from ..machine.vm import Bitmap, Disk, Pair
from ..paths import Layout
from ..report.table import markdown_table
from ..util.units import GiB, KiB, MiB, TiB, fmt_bytes, fmt_size
from . import linux
from .results import save

GRANULARITY = 64 * KiB
PARAMS = {"max-bandwidth": 100 * MiB, "downtime-limit": 300}
STOCK_TIMEOUT = 20.0
PATCHED_TIMEOUT = 120.0
#: The workload writes once into every 1 KiB chunk of the bitmaps (each
#: covers 512 MiB of disk at 64 KiB granularity), up to this many writes;
#: larger disks get every n-th chunk.  So the bitmaps are not mostly zero
#: chunks, which would cost almost nothing on the wire.
MAX_WRITES = 16384

#: Limits generous enough that stock converges too, so that its downtime
#: can be set against the bitmap size: everything it sends (and the
#: destination finishes) lands in the downtime.
GENEROUS = {"max-bandwidth": GiB, "avail-switchover-bandwidth": GiB,
            "downtime-limit": 20_000}

CAPS = {
    "stock": {"dirty-bitmaps": True},
    "patched": {"dirty-bitmaps": True, "dirty-bitmaps-live": True},
}


@dataclass
class Case:
    flavour: str
    size: int
    bitmaps: int
    converged: bool
    total_ms: int | None
    downtime_ms: int | None
    baseline_downtime_ms: int | None
    serialized: int
    wire: int | None
    wire_in_downtime: int | None
    resent_chunks: int | None
    equal: bool | None


def serialized_size(size: int, count: int) -> int:
    """Bytes of the bitmaps serialized: one bit per granule, whole words."""
    bits = -(-size // GRANULARITY)
    return count * (-(-bits // 64) * 8)


def dirty(pair: Pair, size: int) -> None:
    chunk_span = GRANULARITY * 8 * KiB          # disk bytes per 1 KiB chunk
    chunks = size // chunk_span
    n = min(MAX_WRITES, chunks)
    for i in range(n):
        pair.src.write("disk0", (i * chunks // n) * chunk_span + (i % 7) *
                       GRANULARITY, GRANULARITY)


def run_case(layout: Layout, flavour: str, size: int, count: int,
             workdir: Path,
             baseline: bool = False,
             params: dict | None = None) -> migration.MigrationResult:
    bitmaps = () if baseline else tuple(
        Bitmap(f"bm{i}", GRANULARITY) for i in range(count))
    disks = [Disk("disk0", size, bitmaps=bitmaps)]
    d = workdir / f"{flavour}-{size}-{count}-{int(baseline)}-{int(bool(params))}"
    d.mkdir()
    with Pair(layout, disks, d, flavour, flavour) as pair:
        pair.src.add_bitmaps()
        dirty(pair, size)
        before = pair.src.all_sha256()
        timeout = STOCK_TIMEOUT if flavour == "stock" else PATCHED_TIMEOUT
        res = migration.run(pair.src, pair.dst, pair.uri, CAPS[flavour],
                            params or PARAMS, timeout)
        if res.converged:
            migration.wait_destination_running(pair.dst)
            res.info["_equal"] = pair.dst.all_sha256() == before
    return res


def sweep(layout: Layout, sizes: list[int], counts: list[int]) -> list[Case]:
    cases = []
    with tempfile.TemporaryDirectory(prefix="pq-bench-", dir="/tmp") as tmp:
        workdir = Path(tmp)
        for size in sizes:
            baselines = {}
            for flavour in ("stock", "patched"):
                base = run_case(layout, flavour, size, 0, workdir,
                                baseline=True)
                baselines[flavour] = base.downtime_ms
            for count in counts:
                for flavour in ("stock", "patched"):
                    info(f"bench: {flavour}, {fmt_size(size)}, "
                         f"{count} bitmap(s)")
                    res = run_case(layout, flavour, size, count, workdir)
                    bm = res.bitmaps_info or {}
                    cases.append(Case(
                        flavour, size, count, res.converged, res.total_ms,
                        res.downtime_ms, baselines[flavour],
                        serialized_size(size, count),
                        bm.get("transferred"), bm.get("downtime-transferred"),
                        bm.get("resent-chunks"), res.info.get("_equal")))
    return cases


@dataclass
class DowntimePoint:
    flavour: str
    size: int
    bitmaps: int
    bitmap_bytes: int
    converged: bool
    downtime_ms: int | None


def downtime_sweep(layout: Layout, sizes: list[int],
                   count: int) -> list[DowntimePoint]:
    """Downtime against total bitmap size, with limits both builds meet."""
    points = []
    with tempfile.TemporaryDirectory(prefix="pq-bench-", dir="/tmp") as tmp:
        workdir = Path(tmp)
        for size in sizes:
            for flavour in ("stock", "patched"):
                info(f"bench: generous limits, {flavour}, {fmt_size(size)}, "
                     f"{count} bitmaps")
                res = run_case(layout, flavour, size, count, workdir,
                               params=GENEROUS)
                points.append(DowntimePoint(
                    flavour, size, count, serialized_size(size, count),
                    res.converged, res.downtime_ms))
    return points


def downtime_table(points: list[DowntimePoint]) -> str:
    by = {(p.flavour, p.size): p for p in points}
    rows = []
    for size in sorted({p.size for p in points}):
        s, pt = by[("stock", size)], by[("patched", size)]
        rows.append((fmt_size(size), fmt_bytes(s.bitmap_bytes),
                     f"{s.downtime_ms} ms" if s.converged else "no",
                     f"{pt.downtime_ms} ms" if pt.converged else "no"))
    return markdown_table(("disk", "bitmaps (serialized)", "stock downtime",
                           "patched downtime"), rows)


def verdict(c: Case) -> str:
    """The issue's targets for the patched build, checked per case."""
    if c.flavour != "patched":
        return ""
    problems = []
    if not c.converged or c.downtime_ms is None:
        problems.append("did not converge")
    else:
        limit = PARAMS["downtime-limit"]
        base = c.baseline_downtime_ms or 0
        if c.downtime_ms > limit:
            problems.append("downtime over the limit")
        if c.downtime_ms > max(base * 1.1, base + 10):
            problems.append("downtime > baseline + max(10%, 10 ms)")
        if c.wire is not None and c.wire > 1.05 * (
                c.serialized + (c.resent_chunks or 0) * KiB):
            problems.append("wire > 1.05 x (serialized + resent)")
        if not c.equal:
            problems.append("bitmaps differ")
    return "ok" if not problems else "; ".join(problems)


def table(cases: list[Case]) -> str:
    rows = []
    for c in cases:
        rows.append((
            fmt_size(c.size), c.bitmaps, c.flavour,
            "yes" if c.converged else "no",
            f"{c.total_ms} ms" if c.total_ms is not None else "-",
            f"{c.downtime_ms} ms" if c.downtime_ms is not None else "-",
            f"{c.baseline_downtime_ms} ms",
            fmt_bytes(c.serialized), fmt_bytes(c.wire),
            fmt_bytes(c.wire_in_downtime), verdict(c)))
    return markdown_table(
        ("disk", "bitmaps", "build", "converged", "total", "downtime",
         "downtime w/o bitmaps", "bitmaps serialized", "bitmap bytes sent",
         "sent in downtime", "targets"), rows)


def plot(cases: list[Case], points: list[DowntimePoint], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    limit = PARAMS["downtime-limit"]
    ax = axes[0]
    for count, style in ((1, "o"), (8, "s")):
        for flavour, colour in (("stock", "tab:red"), ("patched", "tab:blue")):
            sel = [c for c in cases if c.flavour == flavour and
                   c.bitmaps == count]
            ok = [c for c in sel if c.converged]
            ax.plot([c.size / TiB for c in ok], [c.downtime_ms for c in ok],
                    style + "-", color=colour,
                    label=f"{flavour}, {count} bitmap(s)")
            stuck = [c for c in sel if not c.converged]
            # non-converging cases in a band above the limit
            ax.plot([c.size / TiB for c in stuck],
                    [limit * (3 if count == 1 else 6)] * len(stuck), style,
                    color=colour, fillstyle="none")
    ax.axhline(limit, color="black", lw=0.8, ls="--", label="downtime limit")
    ax.text(0.02, 0.62, "hollow markers above the limit: never converged",
            transform=ax.transAxes, fontsize=7, va="center")
    ax.set(xscale="log", yscale="log", xlabel="disk size (TiB)",
           ylabel="downtime (ms)",
           title=f"{PARAMS['max-bandwidth'] >> 20} MiB/s, limit {limit} ms")
    ax.legend(fontsize=7, loc="center right")

    ax = axes[1]
    for flavour, colour in (("stock", "tab:red"), ("patched", "tab:blue")):
        done = [p for p in points if p.flavour == flavour and p.converged]
        ax.plot([p.bitmap_bytes / MiB for p in done],
                [max(p.downtime_ms or 0, 0.5) for p in done], "o-",
                color=colour, label=flavour)
    ax.set(xscale="log", yscale="log", xlabel="bitmaps, serialized (MiB)",
           ylabel="downtime (ms)",
           title="downtime vs bitmap size, limits both builds meet")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(layout: Layout, quick: bool = False) -> int:
    sizes = [64 * GiB, TiB, 16 * TiB] if quick else \
        [64 * GiB, 256 * GiB, TiB, 4 * TiB, 16 * TiB]
    counts = [1] if quick else [1, 8]
    start = time.monotonic()
    cases = sweep(layout, sizes, counts)
    points = downtime_sweep(layout, sizes[-3:], 8)
    guest_runs = linux.run(layout)
    md = (f"Migration of 64 KiB-granularity bitmaps with a write in every "
          f"1 KiB chunk (at most {MAX_WRITES} writes), max-bandwidth "
          f"{PARAMS['max-bandwidth'] // MiB} MiB/s,"
          f" downtime-limit {PARAMS['downtime-limit']} ms; stock uses "
          f"dirty-bitmaps (given up after {STOCK_TIMEOUT:.0f} s), patched adds"
          f" dirty-bitmaps-live.\n\n" + table(cases) +
          "\n\nDowntime against bitmap size, 8 bitmaps, with limits stock "
          "meets too (1 GiB/s, avail-switchover-bandwidth 1 GiB/s, "
          "downtime-limit 20 s): stock sends every bitmap, and the "
          "destination finishes it, inside the downtime.\n\n" +
          downtime_table(points) + "\n\n" + linux.describe() + "\n\n" +
          linux.table(guest_runs))
    d = save(layout, "migrate", md, [asdict(c) for c in cases])
    (d / "downtime.json").write_text(json.dumps([asdict(p) for p in points],
                                                indent=1))
    (d / "linux-guest.json").write_text(json.dumps(
        [asdict(r) for r in guest_runs], indent=1))
    plot(cases, points, d / "migrate.png")
    print(md)
    print(f"\n(written to {d}/results.md, results.json, migrate.png; "
          f"{time.monotonic() - start:.0f} s)")
    return 0
