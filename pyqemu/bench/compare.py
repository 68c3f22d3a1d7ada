"""Every bitmap migration mode side by side, over sizes and densities.

The sweep runs each mode of :mod:`pyqemu.bench.modes` on the same VM
with the same limits, for every disk size and bitmap density, and repeats
the whole round :data:`RUNS` times, interleaved (round after round, not
mode after mode), so that a noisy moment on this 2-core machine hits all
modes alike.  A mode that did not converge in the first round is not run
again for that case: non-convergence is not a distribution.

The summary gives distributions (median, min, max) and checks the
issue's targets for live mode: downtime within 2 ms of the no-bitmap
median, bitmaps usable no later than with early postcopy, nothing at
risk, and wire bytes within 1.05 x (serialized + resent chunks).
"""

from __future__ import annotations

import statistics
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from ..log import info
from ..machine import accel
from ..machine.vm import Bitmap, Disk
from ..paths import Layout
from ..util.table import markdown_table
from ..util.units import KiB, MiB, TiB, fmt_bytes, fmt_size
from . import chunks, fill, modes
from .modes import MODES, Sample

PARAMS = {"max-bandwidth": modes.LINK, "downtime-limit": 300}
BITMAPS = 8
RUNS = 5
SIZES = (TiB, 4 * TiB, 16 * TiB)
QUICK_SIZES = (TiB, 16 * TiB)
#: Live mode's downtime may exceed the no-bitmap median by this much
DOWNTIME_MARGIN_MS = 2.0
#: the bitmap section's own time inside live mode's downtime, on either
#: end (QEMU's vmstate_downtime_* trace; 0.2 ms at most in the runs so
#: far, 8 ms when the destination still walked its bitmaps there).  A
#: benchmark target, not a test: on a loaded machine the section can be
#: descheduled for longer than the whole budget.
BITMAP_SECTION_MS = 2.0
WIRE_FACTOR = 1.05


def serialized(size: int, count: int = BITMAPS) -> int:
    return chunks.serialized_size(Disk("d", size, bitmaps=tuple(
        Bitmap(f"b{i}", modes.GRANULARITY) for i in range(count))))


def sweep(layout: Layout, sizes: Sequence[int], densities: Sequence[str],
          runs: int) -> list[Sample]:
    samples: list[Sample] = []
    stuck: set[tuple[str, int, str]] = set()
    with tempfile.TemporaryDirectory(prefix="pq-cmp-", dir="/tmp") as tmp:
        for r in range(runs):
            for size in sizes:
                for density in densities:
                    for mode in MODES:
                        if not mode.bitmaps and density != densities[0]:
                            continue    # the floor does not depend on it
                        key = (mode.name, size, density)
                        if key in stuck:
                            continue
                        info(f"bench ({accel.label()}): round {r + 1}/"
                             f"{runs}, {fmt_size(size)}"
                             f" x {BITMAPS}, {density}: {mode.name}")
                        s = modes.run(layout, mode, size, BITMAPS, density,
                                      PARAMS, Path(tmp))
                        samples.append(s)
                        if not s.converged and r == 0:
                            stuck.add(key)
    return samples


@dataclass
class Dist:
    n: int
    median: float
    low: float
    high: float

    def __str__(self) -> str:
        if self.n == 1:
            return _num(self.median)
        return (f"{_num(self.median)} ({_num(self.low)}-"
                f"{_num(self.high)})")


def _num(v: float) -> str:
    return f"{v:.0f}" if v >= 10 else f"{v:.1f}"


def dist(values: Sequence[float | int | None]) -> Dist | None:
    vals = [float(v) for v in values if v is not None]
    if not vals:
        return None
    return Dist(len(vals), statistics.median(vals), min(vals), max(vals))


@dataclass
class Summary:
    mode: str
    size: int
    density: str
    runs: int
    converged: int
    visible: Dist | None        # guest-visible downtime, ms
    downtime: Dist | None       # QEMU's downtime, ms
    total: Dist | None
    usable: Dist | None
    at_risk: int | None          # the worst run
    risk: Dist | None            # ms the guest ran before bitmaps were in
    save_share: Dist | None      # the bitmap section's part of it, ms,
    load_share: Dist | None      # on the source and on the destination
    wire_ratio: float | None     # median wire / serialized
    resent: int | None           # median resent chunks
    equal: str
    postcopy: str


def _cases(items: Sequence[Sample | Summary]) -> list[tuple[int, str]]:
    """(size, density) of every case with bitmaps, small to large."""
    return sorted({(s.size, s.density) for s in items
                   if s.mode != "no bitmaps"},
                  key=lambda c: (c[0], fill.DENSITIES.index(c[1])))


def _select(samples: list[Sample], mode: str, size: int,
            density: str) -> list[Sample]:
    return [s for s in samples if s.mode == mode and s.size == size and
            (s.density == density or not s.bitmaps)]


def summarize(samples: list[Sample]) -> list[Summary]:
    out = []
    for size, density in _cases(samples):
        for mode in MODES:
            sel = _select(samples, mode.name, size, density)
            if not sel:
                continue
            ok = [s for s in sel if s.converged]
            ser = serialized(size)
            ratios = dist([s.wire / ser for s in ok if s.wire and s.bitmaps])
            resents = dist([s.resent_chunks for s in ok])
            ratio = ratios.median if ratios else None
            resent = resents.median if resents else None
            risks = [s.at_risk for s in ok if s.at_risk is not None]
            equal = [s.equal for s in ok if s.equal is not None]
            out.append(Summary(
                mode.name, size, density, len(sel), len(ok),
                dist([s.visible_downtime_ms for s in ok]),
                dist([s.downtime_ms for s in ok]),
                dist([s.total_ms for s in ok]),
                dist([s.usable_ms for s in ok]),
                max(risks) if risks else None,
                dist([s.risk_ms for s in ok]),
                dist([s.bitmap_save_us / 1000 for s in ok
                      if s.bitmap_save_us is not None]),
                dist([s.bitmap_load_us / 1000 for s in ok
                      if s.bitmap_load_us is not None]), ratio,
                None if resent is None else int(resent),
                f"{sum(equal)}/{len(equal)}" if equal else "-",
                ", ".join(sorted({s.postcopy for s in sel if s.postcopy}))))
    return out


def _ms(d: Dist | None) -> str:
    return "-" if d is None else str(d)


def table(summaries: list[Summary]) -> str:
    rows = []
    for s in summaries:
        rows.append((
            fmt_size(s.size), s.density, s.mode,
            f"{s.converged}/{s.runs}", _ms(s.visible),
            f"{_ms(s.save_share)} / {_ms(s.load_share)}", _ms(s.downtime),
            _ms(s.total), _ms(s.usable),
            "-" if s.at_risk is None else fmt_bytes(s.at_risk),
            _ms(s.risk),
            "-" if s.wire_ratio is None else f"{s.wire_ratio:.3f}",
            "-" if s.resent is None else s.resent, s.equal,
            s.postcopy or "-"))
    return markdown_table(
        ("disk", "density", "mode", "converged",
         "downtime seen by guest, ms", "bitmap section in it: src / dst, ms",
         "QEMU's downtime, ms", "total, ms", "bitmaps usable, ms",
         "at risk (worst)", "at risk for, ms", "wire / serialized",
         "resent chunks", "bitmaps equal", "postcopy request"), rows)


@dataclass
class Target:
    case: str
    what: str
    target: str
    measured: str
    met: bool


def targets(summaries: list[Summary]) -> list[Target]:
    """The issue's targets for live mode, per case."""
    by = {(s.mode, s.size, s.density): s for s in summaries}
    out = []
    for (mode, size, density), s in by.items():
        if mode != "live":
            continue
        case = f"{fmt_size(size)} x {BITMAPS}, {density}"
        floor = by.get(("no bitmaps", size, density))
        if s.visible and floor and floor.visible:
            delta = s.visible.median - floor.visible.median
            out.append(Target(case, "downtime over the no-bitmap median",
                              f"<= {DOWNTIME_MARGIN_MS:g} ms",
                              f"{delta:+.1f} ms", delta <= DOWNTIME_MARGIN_MS))
        else:
            out.append(Target(case, "converged", "yes",
                              f"{s.converged}/{s.runs}", False))
        pc = by.get(("stock postcopy, early", size, density))
        if s.usable and pc and pc.usable:
            out.append(Target(case, "bitmaps usable vs early postcopy",
                              "no later", f"{s.usable.median:.0f} vs "
                              f"{pc.usable.median:.0f} ms",
                              s.usable.median <= pc.usable.median))
        if s.save_share and s.load_share:
            worst = max(s.save_share.median, s.load_share.median)
            out.append(Target(case, "bitmap section in the downtime, "
                              "src / dst", f"<= {BITMAP_SECTION_MS:g} ms",
                              f"{s.save_share.median:.1f} / "
                              f"{s.load_share.median:.1f} ms",
                              worst <= BITMAP_SECTION_MS))
        out.append(Target(case, "bytes at risk after the switchover", "0",
                          fmt_bytes(s.at_risk), s.at_risk == 0))
        if s.wire_ratio is not None:
            ser = serialized(size)
            bound = WIRE_FACTOR * (ser + (s.resent or 0) * KiB) / ser
            out.append(Target(case, "wire / serialized",
                              f"<= {bound:.3f}", f"{s.wire_ratio:.3f}",
                              s.wire_ratio <= bound))
    return out


def targets_table(ts: list[Target]) -> str:
    return markdown_table(("case", "what", "target", "measured", "met"),
                          [(t.case, t.what, t.target, t.measured,
                            "yes" if t.met else "**no**") for t in ts])


def fixes_table(summaries: list[Summary]) -> str:
    """When is the feature needed: per case, the fixes alone with
    avail-switchover-bandwidth at the link's speed against live mode and
    stock, and which of them stay within the downtime limit.

    The fixes' estimate is the bitmaps' serialized size plus framing (an
    upper bound: a clear chunk goes as its header only), and the
    threshold is the link's speed times the limit, so the serialized
    size is shown next to that threshold."""
    by = {(s.mode, s.size, s.density): s for s in summaries}
    limit = PARAMS["downtime-limit"]
    threshold = PARAMS["max-bandwidth"] * limit // 1000

    def cell(mode: str, size: int, density: str) -> tuple[str, bool]:
        s = by.get((mode, size, density))
        if s is None:
            return "-", False
        if not s.visible or s.converged < s.runs:
            return (f"converged {s.converged}/{s.runs}" if s.converged
                    else "never converges"), False
        return str(s.visible), s.visible.high <= limit

    rows = []
    for size, density in _cases(summaries):
        if (modes.FIXES, size, density) not in by:
            continue
        stock, stock_ok = cell("stock precopy", size, density)
        early, early_ok = cell("stock postcopy, early", size, density)
        pc = by.get(("stock postcopy, early", size, density))
        if pc is not None and pc.at_risk:
            early += f", {fmt_bytes(pc.at_risk)} after the switchover"
        fixes, fixes_ok = cell(modes.FIXES, size, density)
        live, live_ok = cell("live", size, density)
        within = ", ".join(n for n, ok in (
            ("stock precopy", stock_ok), ("stock postcopy", early_ok),
            ("fixes", fixes_ok), ("live", live_ok)) if ok)
        rows.append((fmt_size(size), density,
                     f"{serialized(size) / MiB:.0f} MiB", stock, early,
                     fixes, live, within or "neither"))
    return (f"When is the feature needed: the series' fixes alone (the "
            f"fixes build) with avail-switchover-bandwidth at the link's "
            f"{PARAMS['max-bandwidth'] // MiB} MiB/s, as a careful operator "
            f"sets it: they switch over once their estimate (the bitmaps' "
            f"serialized size and framing) and the RAM left fit in "
            f"{fmt_bytes(threshold)} (link x {limit} ms).  Downtime seen "
            f"by the guest, ms, median (min-max); \"within\" means every "
            f"run within the {limit} ms limit.\n\n" + markdown_table(
                ("disk", "bitmaps", f"{BITMAPS} bitmaps serialized",
                 "stock precopy", "stock postcopy (early)",
                 "fixes + avail-switchover-bandwidth", "live",
                 f"within {limit} ms"), rows))


#: What the ratios table compares: each column against the ones before
#: it, so a reader sees what the fixes alone give over stock and what
#: live mode adds over the fixes, from the same run
RATIO_MODES = ("stock precopy", modes.FIXES, "live")
#: stock's column where stock precopy never converges: what it costs
#: when allowed
STOCK_ALLOWED = "stock precopy, 20 s allowed"
#: (label, Summary field) of the medians the ratios are taken of
RATIO_METRICS = (("downtime seen by the guest", "visible"),
                 ("total", "total"), ("bitmaps usable", "usable"))


def _median(s: Summary | None, attr: str) -> float | None:
    """The median of *attr* of *s*, if every run of it converged: a mode
    that converged only sometimes has no median to compare."""
    if s is None or s.converged < s.runs:
        return None
    d: Dist | None = getattr(s, attr)
    return None if d is None else d.median


def _ratio(num: float | None, den: float | None) -> str:
    if num is None or den is None or den <= 0:
        return "-"
    return f"{num / den:.2f}x" if num / den >= 0.01 else \
        f"{num / den:.1e}x"


def ratios_table(summaries: list[Summary]) -> str:
    """Stock precopy, the fixes alone and live mode side by side, with
    the ratios of their medians against stock *and* against the fixes:
    "live / fixes" is what the live mode adds to what a distribution
    could carry without it.  A mode that did not converge in every run
    has no median: its cells say so, and its ratios are "-"."""
    by = {(s.mode, s.size, s.density): s for s in summaries}
    rows = []
    for size, density in _cases(summaries):
        got = [by.get((m, size, density)) for m in RATIO_MODES]
        if not any(got):
            continue
        allowed = by.get((STOCK_ALLOWED, size, density))
        for label, attr in RATIO_METRICS:
            meds = [_median(s, attr) for s in got]
            cells = []
            for s, m in zip(got, meds, strict=True):
                if s is None:
                    cells.append("-")
                elif s.converged < s.runs:
                    cells.append(f"converged {s.converged}/{s.runs}"
                                 if s.converged else "never converges")
                else:
                    cells.append("-" if m is None else _num(m))
            if meds[0] is None and (m := _median(allowed, attr)) is not None:
                # stock's own ratios, taken where it does converge
                meds[0] = m
                cells[0] += f"; {_num(m)} with 20 s allowed"
            stock, fixes, live = meds
            rows.append((fmt_size(size), density, label, *cells,
                         _ratio(fixes, stock), _ratio(live, stock),
                         _ratio(live, fixes)))
    return ("Stock, the fixes alone and live mode in the same run, medians "
            "in ms, and their ratios (below 1: faster than the base).  "
            "Where stock precopy never converges, its ratios are taken "
            f"against \"{STOCK_ALLOWED}\" (downtime-limit 20 s, "
            "avail-switchover-bandwidth at the link's speed).\n\n"
            + markdown_table(("disk", "bitmaps", "median of",
                              "stock precopy", "fixes", "live",
                              "fixes / stock", "live / stock",
                              "live / fixes"), rows))


STYLE = {
    "no bitmaps": ("black", "."),
    "stock precopy": ("tab:red", "x"),
    "stock precopy, 20 s allowed": ("tab:red", "o"),
    "stock postcopy, early": ("tab:orange", "s"),
    f"stock postcopy after {modes.POSTCOPY_AFTER:g} s": ("tab:brown", "D"),
    modes.FIXES: ("tab:green", "v"),
    "live": ("tab:blue", "o"),
    "live + postcopy at half": ("tab:cyan", "^"),
}


def plot(summaries: list[Summary], path: Path) -> None:
    """Guest-visible downtime (median, min-max bars) against the bitmaps'
    serialized size, one panel per density."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    densities = [d for d in fill.DENSITIES
                 if any(s.density == d for s in summaries)]
    fig, axes = plt.subplots(1, len(densities), sharey=True,
                             figsize=(4.6 * len(densities), 4.4),
                             squeeze=False)
    for ax, density in zip(axes[0], densities, strict=True):
        for mode in MODES:
            pts = sorted((s for s in summaries if s.mode == mode.name and
                          s.density == density and s.visible),
                         key=lambda s: s.size)
            if not pts:
                continue
            colour, marker = STYLE.get(mode.name, ("grey", "."))
            xs = [serialized(s.size) / MiB for s in pts]
            ys = [max(s.visible.median, 0.1) for s in pts if s.visible]
            lo = [y - max(s.visible.low, 0.1) for s, y in zip(pts, ys,
                  strict=True) if s.visible]
            hi = [s.visible.high - y for s, y in zip(pts, ys, strict=True)
                  if s.visible]
            ax.errorbar(xs, ys, yerr=[lo, hi], color=colour, marker=marker,
                        capsize=3, label=mode.name, lw=1)
        ax.axhline(PARAMS["downtime-limit"], color="grey", ls="--", lw=0.8)
        ax.set(xscale="log", yscale="log", title=f"{density} bitmaps",
               xlabel=f"{BITMAPS} bitmaps, serialized (MiB)")
        ticks = sorted({serialized(s.size) / MiB for s in summaries})
        ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
        ax.minorticks_off()
    axes[0][0].set_ylabel("downtime seen by the guest (ms)")
    axes[0][-1].legend(fontsize=7, loc="upper left")
    fig.suptitle(f"max-bandwidth {PARAMS['max-bandwidth'] // MiB} MiB/s, "
                 f"downtime-limit {PARAMS['downtime-limit']} ms (dashed); "
                 "median, bars min-max", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def describe(runs: int) -> str:
    """The section's header: the set-up, and the accelerator the VMs ran
    on (:func:`pyqemu.machine.accel.label`: KVM and TCG numbers do not
    compare)."""
    return (f"Each mode migrates the same `-machine pc` VM on "
            f"{accel.label()} (64 MiB RAM, "
            f"running vCPU, no guest writes) with a `null-co` disk and "
            f"{BITMAPS} bitmaps at 64 KiB granularity, over a unix socket,"
            f" max-bandwidth {PARAMS['max-bandwidth'] // MiB} MiB/s (also "
            f"as max-postcopy-bandwidth), downtime-limit "
            f"{PARAMS['downtime-limit']} ms.  Densities: sparse (one granule"
            f" in each of up to {fill.SPARSE_CHUNKS} chunks), half (every "
            f"other 1/{fill.HALF_STRETCHES} of the disk), full (every bit)."
            f"  {runs} interleaved rounds; a mode that did not converge in "
            "the first round is not repeated.  Downtime seen by the guest "
            "is the destination's RESUME event minus the source's STOP "
            "event; bitmap section: the time QEMU's vmstate_downtime "
            "trace events account to the dirty-bitmap section inside the "
            "downtime, on the source (saving) and on the destination "
            "(loading), which overlap; QEMU's own downtime stops when the "
            "source has sent its last byte.  Bitmaps usable: from the "
            "migration's setup until the destination runs with complete "
            "bitmaps.  At risk: bitmap bytes sent after a postcopy "
            "switchover.  Distributions are median (min-max) in ms.")


def letter_table(summaries: list[Summary]) -> str:
    """The cover letter's table: per case, the floor, stock precopy, early
    stock postcopy and live mode, as downtime / bitmaps usable / at risk.
    """
    by = {(s.mode, s.size, s.density): s for s in summaries}

    def cell(mode: str, size: int, density: str) -> str:
        s = by.get((mode, size, density))
        if s is None:
            return "-"
        if not s.visible or s.converged < s.runs:
            return f"converged {s.converged}/{s.runs}" if s.converged \
                else "never converges"
        out = f"{s.visible.median:.0f}"
        if s.visible.high > 2 * max(s.visible.median, 1):
            out += f" (max {s.visible.high:.0f})"
        if s.usable:
            out += f" / {s.usable.median:.0f}"
        if s.at_risk:
            out += f" / {fmt_bytes(s.at_risk)}"
        return out

    def precopy(size: int, density: str) -> str:
        out = cell("stock precopy", size, density)
        allowed = by.get(("stock precopy, 20 s allowed", size, density))
        if out == "never converges" and allowed and allowed.visible:
            out = f"never; {allowed.visible.median:.0f} if 20 s allowed"
        return out

    rows = []
    for size, density in _cases(summaries):
        rows.append((f"{fmt_size(size)}", density,
                     cell("no bitmaps", size, density),
                     precopy(size, density),
                     cell("stock postcopy, early", size, density),
                     cell("live", size, density)))
    return markdown_table(("disk", "bitmaps", "no bitmaps",
                           "stock precopy", "stock postcopy (early)",
                           "live (this series)"), rows)


def load_summaries(rows: list[dict]) -> list[Summary]:
    """Summaries back from results.json (the cover letter reuses them)."""
    fields = ("visible", "downtime", "total", "usable", "risk",
              "save_share", "load_share")
    out = []
    for r in rows:
        args: dict[str, Any] = {k: (Dist(**v) if k in fields and v else v)
                                for k, v in r.items()}
        out.append(Summary(**args))
    return out
