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
size, and how much of it fell into the downtime.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from .. import migration
from ..log import info
from ..vm import Bitmap, Disk, Pair
from .report import fmt_bytes, fmt_size, markdown_table, save

KiB, MiB, GiB, TiB = 1 << 10, 1 << 20, 1 << 30, 1 << 40

GRANULARITY = 64 * KiB
PARAMS = {"max-bandwidth": 100 * MiB, "downtime-limit": 300}
STOCK_TIMEOUT = 20.0
PATCHED_TIMEOUT = 120.0
#: The workload writes once into every 1 KiB chunk of the bitmaps (each
#: covers 512 MiB of disk at 64 KiB granularity), up to this many writes;
#: larger disks get every n-th chunk.  So the bitmaps are not mostly zero
#: chunks, which would cost almost nothing on the wire.
MAX_WRITES = 16384

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


def run_case(flavour: str, size: int, count: int, workdir: Path,
             baseline: bool = False) -> migration.MigrationResult:
    bitmaps = () if baseline else tuple(
        Bitmap(f"bm{i}", GRANULARITY) for i in range(count))
    disks = [Disk("disk0", size, bitmaps=bitmaps)]
    d = workdir / f"{flavour}-{size}-{count}-{int(baseline)}"
    d.mkdir()
    with Pair(disks, d, flavour, flavour) as pair:
        pair.src.add_bitmaps()
        dirty(pair, size)
        before = pair.src.all_sha256()
        timeout = STOCK_TIMEOUT if flavour == "stock" else PATCHED_TIMEOUT
        res = migration.run(pair.src, pair.dst, pair.uri, CAPS[flavour],
                            PARAMS, timeout)
        if res.converged:
            migration.wait_destination_running(pair.dst)
            res.info["_equal"] = pair.dst.all_sha256() == before
    return res


def sweep(sizes: list[int], counts: list[int]) -> list[Case]:
    workdir = Path(tempfile.mkdtemp(prefix="pq-bench-", dir="/tmp"))
    cases = []
    try:
        for size in sizes:
            baselines = {}
            for flavour in ("stock", "patched"):
                base = run_case(flavour, size, 0, workdir, baseline=True)
                baselines[flavour] = base.downtime_ms
            for count in counts:
                for flavour in ("stock", "patched"):
                    info(f"bench: {flavour}, {fmt_size(size)}, "
                         f"{count} bitmap(s)")
                    res = run_case(flavour, size, count, workdir)
                    bm = res.bitmaps_info or {}
                    cases.append(Case(
                        flavour, size, count, res.converged, res.total_ms,
                        res.downtime_ms, baselines[flavour],
                        serialized_size(size, count),
                        bm.get("transferred"), bm.get("downtime-transferred"),
                        bm.get("resent-chunks"), res.info.get("_equal")))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return cases


def verdict(c: Case) -> str:
    """The issue's targets for the patched build, checked per case."""
    if c.flavour != "patched":
        return ""
    problems = []
    if not c.converged:
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


def plot(cases: list[Case], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for count, style in ((1, "o"), (8, "s")):
        for flavour, colour in (("stock", "tab:red"), ("patched", "tab:blue")):
            sel = [c for c in cases if c.flavour == flavour and
                   c.bitmaps == count]
            if not sel:
                continue
            xs = [c.size / TiB for c in sel]
            ys = [c.downtime_ms if c.converged else PARAMS["downtime-limit"] * 4
                  for c in sel]
            axes[0].plot(xs, ys, style + "-", color=colour,
                         label=f"{flavour}, {count} bitmap(s)")
            for c, x, y in zip(sel, xs, ys):
                if not c.converged:
                    axes[0].annotate("no convergence", (x, y), fontsize=7,
                                     color=colour)
            axes[1].plot(xs, [c.serialized / MiB for c in sel], style + ":",
                         color="grey")
            if flavour == "patched":
                axes[1].plot(xs, [(c.wire or 0) / MiB for c in sel],
                             style + "-", color=colour,
                             label=f"sent, {count} bitmap(s)")
    axes[0].axhline(PARAMS["downtime-limit"], color="black", lw=0.8, ls="--",
                    label="downtime limit")
    axes[0].set(xscale="log", yscale="log", xlabel="disk size (TiB)",
                ylabel="downtime (ms)", title="downtime")
    axes[1].set(xscale="log", yscale="symlog", xlabel="disk size (TiB)",
                ylabel="MiB", title="bitmap bytes sent (patched) vs "
                                    "serialized (dotted)")
    axes[0].legend(fontsize=7)
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(quick: bool = False) -> int:
    sizes = [64 * GiB, TiB, 16 * TiB] if quick else \
        [64 * GiB, 256 * GiB, TiB, 4 * TiB, 16 * TiB]
    counts = [1] if quick else [1, 8]
    start = time.monotonic()
    cases = sweep(sizes, counts)
    md = (f"Migration of 64 KiB-granularity bitmaps with a write in every "
          f"1 KiB chunk (at most {MAX_WRITES} writes), max-bandwidth {PARAMS['max-bandwidth'] // MiB} MiB/s,"
          f" downtime-limit {PARAMS['downtime-limit']} ms; stock uses "
          f"dirty-bitmaps (given up after {STOCK_TIMEOUT:.0f} s), patched adds"
          f" dirty-bitmaps-live.\n\n" + table(cases))
    d = save("migrate", md, [asdict(c) for c in cases])
    plot(cases, d / "migrate.png")
    print(md)
    print(f"\n(written to {d}/results.md, results.json, migrate.png; "
          f"{time.monotonic() - start:.0f} s)")
    return 0
