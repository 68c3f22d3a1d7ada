"""The write-load benchmark's report: tables, the targets met or missed,
a description of the set-up, and the plot."""

from __future__ import annotations

from pathlib import Path

from ...util.table import markdown_table
from ...util.units import MiB, fmt_bytes
from ..compare import Dist, dist
from .experiment import (
    BANDWIDTH,
    COST_BANDWIDTH,
    COST_ROUNDS,
    COST_WINDOW,
    HOPS,
    IDLE_RATE,
    PARAMS,
    rate_name,
)
from .model import (
    CHUNK_WIRE,
    HOT_CHUNKS,
    PATTERNS,
    SPAN_4K,
    Pattern,
    dirty_bytes_per_s,
)
from .results import CostResult, LoadResult, Result, ThresholdResult


def _ms(v: int | None) -> str:
    return "-" if v is None else str(v)


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}" if b > 0 else "-"


def _loads(results: list[Result]) -> list[LoadResult]:
    return [r for r in results if isinstance(r, LoadResult)]


def _thresholds(results: list[Result]) -> list[ThresholdResult]:
    return [r for r in results if isinstance(r, ThresholdResult)]


def _costs(results: list[Result]) -> list[CostResult]:
    return [r for r in results if isinstance(r, CostResult)]


def cost_table(costs: list[CostResult]) -> str:
    rows = [[c.pattern, "/".join(f"{x:.0f}" for x in c.live),
             "/".join(f"{x:.0f}" for x in c.plain), f"{c.ratio:.3f}"]
            for c in costs]
    return (f"Guest cost, as fast as the guest goes: in one QEMU, "
            f"{COST_ROUNDS} migrations with live bitmaps and {COST_ROUNDS} "
            f"without bitmaps, alternating, each held active at "
            f"{COST_BANDWIDTH // MiB} MiB/s for a {COST_WINDOW:.0f} s count "
            f"of the guest's writes, then cancelled.\n\n" + markdown_table(
                ["pattern", "writes/s, live bitmaps",
                 "writes/s, no bitmaps", "ratio (means)"], rows))


def table(results: list[Result]) -> str:
    rows = []
    for r in _loads(results):
        hops = r.hops
        rows.append([
            r.pattern, rate_name(r.rate_setting),
            f"{sum(h.converged for h in hops)}/{len(hops)}",
            "/".join(_ms(h.total_ms) for h in hops),
            "/".join(_ms(h.downtime_ms) for h in hops),
            _ms(r.plain.downtime_ms),
            "/".join(_ms(h.resent_chunks) for h in hops),
            "/".join(f"{h.predicted_chunks:.0f}" for h in hops),
            fmt_bytes(sum(h.resent_bytes or 0 for h in hops)),
            fmt_bytes(sum(h.predicted_bytes for h in hops)),
            f"{r.rate_before:.0f}/{r.rate_after:.0f}",
            "/".join(f"{h.rate:.0f}" for h in hops),
            _ratio(r.rate_live, r.rate_idle),
            f"{r.plain.rate:.0f}",
            _ratio(r.rate_live, r.plain.rate),
            str(r.stalls)])
    out = markdown_table(
        ["pattern", "writes/s set", "converged", "total ms", "downtime ms",
         "downtime ms w/o bitmaps", "resent chunks", "predicted",
         "resent bytes", "predicted bytes",
         "writes/s before/after", "writes/s live", "live/idle",
         "writes/s no-bitmap mig.", "live/no-bitmap", "stalls"], rows)
    for t in _thresholds(results):
        out += "\n\n" + threshold_table(t)
    if _costs(results):
        out += "\n\n" + cost_table(_costs(results))
    return out


def target_values(results: list[Result]) -> dict[str, Dist | None]:
    """The numbers the issue's write-load targets are about, over every
    boot: downtime of the live hops and of the no-bitmap migrations
    (ms), and the guest's write rate during a live migration divided by
    that during the migration without bitmaps: per boot from the hops at
    paced rates, and from the held migrations of one QEMU (CostResult) as
    fast as it goes, where the hops' different processes differ more than
    the effect measured."""
    loads = _loads(results)
    return {
        "live_downtime": dist([
            float(h.downtime_ms) for r in loads for h in r.hops
            if h.converged and h.downtime_ms is not None]),
        "plain_downtime": dist([
            float(r.plain.downtime_ms) for r in loads
            if r.plain.converged and r.plain.downtime_ms is not None]),
        "ratio_paced": dist([
            r.rate_live / r.plain.rate for r in loads
            if r.rate_setting > IDLE_RATE and r.plain.rate > 0]),
        "ratio_max": dist([c.ratio for c in _costs(results) if c.ratio]),
    }


def targets(results: list[Result]) -> str:
    """The two targets under write load, met or not: live downtime within
    5 ms of the no-bitmap migration's (medians), and the guest's write
    rate during a live migration at least 0.98 x during one without
    bitmaps (median of the per-boot ratios)."""
    v = target_values(results)
    lines = []
    live, plain = v["live_downtime"], v["plain_downtime"]
    if live and plain:
        delta = live.median - plain.median
        lines.append(f"- downtime with a writer: live median "
                     f"{live.median:.1f} ms ({live.n} migrations, "
                     f"{live.low:.0f}-{live.high:.0f}), without bitmaps "
                     f"{plain.median:.1f} ms ({plain.n}, {plain.low:.0f}-"
                     f"{plain.high:.0f}): {delta:+.1f} ms (target: at most "
                     f"+5 ms, {'met' if delta <= 5 else 'MISSED'})")
    for key, label in (("ratio_paced", "paced"),
                       ("ratio_max", "as fast as it goes")):
        r = v[key]
        if r:
            lines.append(f"- guest writes/s, live / no-bitmap migration, "
                         f"{label}: median {r.median:.2f} over {r.n} boots "
                         f"({r.low:.2f}-{r.high:.2f}; target >= 0.98, "
                         f"{'met' if r.median >= 0.98 else 'MISSED'})")
    return "\n".join(lines)


def threshold_table(t: ThresholdResult) -> str:
    rows = [[f"{s.bandwidth / MiB:.2f} MiB/s", f"{s.timeout:.0f} s",
             "yes" if s.hop.converged else "no", _ms(s.hop.total_ms),
             _ms(s.hop.downtime_ms), _ms(s.hop.resent_chunks),
             fmt_bytes(s.hop.remaining), f"{s.hop.rate:.0f}",
             f"{dirty_bytes_per_s(_pattern(t.pattern), s.hop.rate) / MiB:.2f}"
             " MiB/s", f"{s.hop.ram_dirty_rate / MiB:.2f} MiB/s"]
            for s in t.steps]
    ok, bad = t.observed()
    # QEMU reports a RAM dirty rate only once it has synced the dirty log
    # twice, which the short hops rarely do; the long steps do
    ram_seen = max((s.hop.ram_dirty_rate for s in t.steps), default=0.0)
    seen = ("not observed: every step converged" if bad is None else
            f"between {bad / MiB:.2f} MiB/s (did not converge) and " +
            ("-" if ok is None else f"{ok / MiB:.2f} MiB/s (converged)"))
    return (f"Convergence threshold, pattern '{t.pattern}' as fast as it "
            f"goes ({t.rate_before:.0f} writes/s before migrating): "
            f"predicted max-bandwidth {t.predicted_bandwidth / MiB:.2f} "
            f"MiB/s (bitmaps {t.bitmap_dirty_rate / MiB:.2f} MiB/s by the "
            f"model + RAM {t.ram_dirty_rate / MiB:.2f} MiB/s, QEMU's "
            f"dirty-pages-rate in the live hops); with the RAM dirty rate "
            f"QEMU reported in the steps ({ram_seen / MiB:.2f} MiB/s): "
            f"{(t.bitmap_dirty_rate + ram_seen) / MiB:.2f} MiB/s; observed "
            f"{seen}.\n\n" + markdown_table(
                ["max-bandwidth", "timeout", "converged", "total ms",
                 "downtime ms", "resent chunks", "bitmaps pending at end",
                 "writes/s", "bitmaps' dirty rate (model)",
                 "RAM dirty rate (QEMU)"],
                rows))


def _pattern(name: str) -> Pattern:
    return next(p for p in PATTERNS if p.name == name)


def describe(accel: str) -> str:
    """The workload, on the accelerator labelled *accel* ("KVM", "TCG")."""
    return (f"Linux guest (q35, {accel}, patched build) writing 4 KiB O_DIRECT "
            f"blocks to a 1 TiB virtio-blk disk on an iothread, bitmaps at "
            f"4 KiB and 64 KiB granularity, capabilities dirty-bitmaps and "
            f"dirty-bitmaps-live, max-bandwidth {BANDWIDTH // MiB} MiB/s, "
            f"downtime-limit {PARAMS['downtime-limit']} ms.  One boot per "
            f"pattern and rate, {HOPS} migrations in a row (values per "
            f"hop, a/b/c), then one without bitmaps.  Patterns: random "
            f"over 1 TiB; sequential; a hot set of {HOT_CHUNKS} chunks "
            f"(random in {HOT_CHUNKS * SPAN_4K // MiB} MiB); one write per "
            f"4 KiB-bitmap chunk on a new granule (stride 32 MiB + 4 KiB). "
            f"Predicted resends: the writer's offsets replayed over the "
            f"writes exposed behind the bulk cursor (pyqemu/bench/"
            f"writeload/model.py says how); bytes are chunks x {CHUNK_WIRE}.  "
            f"Rates are the guest's own count: before/after the hops "
            f"without migrating, during each live hop, during the "
            f"migration without bitmaps; live/idle is what migrating "
            f"costs, live/no-bitmap what the live bitmaps add to that.")


def plot(results: list[Result], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    loads = _loads(results)
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(12, 4.8))
    markers = dict(zip([p.name for p in PATTERNS], "osD^", strict=True))
    colours = dict(zip([p.name for p in PATTERNS],
                       ["C0", "C1", "C2", "C3"], strict=True))
    for name in markers:
        hops = [h for r in loads if r.pattern == name for h in r.hops]
        if not hops:
            continue
        rates = [h.rate for h in hops]
        a1.scatter(rates, [max(1, h.resent_bytes or 0) for h in hops],
                   marker=markers[name], color=colours[name],
                   label=f"{name}, measured")
        a1.scatter(rates, [max(1.0, h.predicted_bytes) for h in hops],
                   marker=markers[name], facecolors="none",
                   edgecolors=colours[name], label=f"{name}, model")
        a2.scatter(rates, [h.downtime_ms or 0 for h in hops],
                   marker=markers[name], color=colours[name], label=name)
    a1.set(xlabel="guest writes/s during the migration",
           ylabel="resent bitmap bytes (1 = none)", yscale="log",
           title="resent bytes per migration: measured vs model")
    a2.set(xlabel="guest writes/s during the migration",
           ylabel="downtime (ms)", title="downtime per migration")
    a1.legend(fontsize=7)
    a2.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)

