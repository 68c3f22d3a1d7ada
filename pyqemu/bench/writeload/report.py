"""The write-load benchmark's report: tables, the targets met or missed,
a description of the set-up, and the plot."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from ...util.table import markdown_table
from ...util.units import MiB, fmt_bytes
from ..compare import Dist, dist
from .experiment import (
    BANDWIDTH,
    COST_BANDWIDTH,
    COST_ROUNDS,
    COST_WINDOW,
    FIXES_LIMIT,
    FIXES_SHARED_TIMEOUT,
    HOPS,
    IDLE_RATE,
    MATCHED,
    MATCHED_LIMIT,
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
from .results import (
    CostResult,
    FixesResult,
    Hop,
    LoadResult,
    Result,
    ThresholdResult,
)


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


def _fixes(results: list[Result]) -> list[FixesResult]:
    return [r for r in results if isinstance(r, FixesResult)]


def _dist_ms(d: Dist | None) -> str:
    if d is None:
        return "-"
    return f"{d.median:.1f} ({d.low:.1f}-{d.high:.1f}, n={d.n})"


def fixes_vs_live(results: list[Result]) -> list[tuple[FixesResult,
                                                       Dist | None,
                                                       Dist | None]]:
    """Per fixes-only boot: the guest's downtimes of its migrations at
    FIXES_LIMIT, and of the live hops under the same pattern and rate."""
    out = []
    for f in _fixes(results):
        live = [_downtime(h) for r in _loads(results)
                if (r.pattern, r.rate_setting) == (f.pattern, f.rate_setting)
                for h in r.hops if h.converged]
        out.append((f, dist([_downtime(h) for h in f.hops if h.converged]),
                    dist(live)))
    return out


def fixes_table(results: list[Result]) -> str:
    """The guest's downtime (source STOP to destination RESUME) of the
    fixes alone against live mode's, under the same writes: what the
    live mode adds over what a distribution could carry without it."""
    limit = PARAMS["downtime-limit"]
    rows = []
    for f, fixes, live in fixes_vs_live(results):
        sh = f.shared
        d = _downtime(sh)
        shared = (f"converged, {'-' if d is None else f'{d:.0f}'} ms"
                  if sh.converged else
                  f"not in {FIXES_SHARED_TIMEOUT:g} s")
        ratio = (f"{fixes.median / live.median:.0f}x"
                 if fixes and live and live.median > 0 else "-")
        # what the link itself would need for what QEMU switched over with
        wire = dist([h.switch_pending / BANDWIDTH * 1000 for h in f.hops
                     if h.converged and h.switch_pending is not None])
        rows.append([f.pattern, rate_name(f.rate_setting), _dist_ms(live),
                     shared, _dist_ms(fixes),
                     "-" if wire is None else f"{wire.median:.0f}",
                     "-" if fixes is None else
                     ("yes" if fixes.high <= FIXES_LIMIT else "no"),
                     ratio])
    return (f"The fixes alone under the same writes: the fixes build, "
            f"dirty-bitmaps with avail-switchover-bandwidth at the link's "
            f"{BANDWIDTH // MiB} MiB/s, in a boot of its own.  Without live "
            f"mode every bitmap goes in the downtime; at the live hops' "
            f"{limit} ms limit that does not fit, so the migration is given "
            f"up after {FIXES_SHARED_TIMEOUT:g} s, and {HOPS} more run at "
            f"{FIXES_LIMIT} ms.  Guest's downtime (destination RESUME - "
            f"source STOP), ms, median (min-max, n).  The link here is a "
            f"unix socket held to max-bandwidth, which QEMU no longer "
            f"applies once the guest is stopped: what goes in the downtime "
            f"goes at memory speed.  A real {BANDWIDTH // MiB} MiB/s link "
            f"needs at least the pending QEMU switched over with (the "
            f"bitmaps' serialized size and the RAM left) divided by its "
            f"speed, shown beside it.\n\n" + markdown_table(
                ["pattern", "writes/s set",
                 f"live, {limit} ms limit",
                 f"fixes, {limit} ms limit",
                 f"fixes, {FIXES_LIMIT} ms limit",
                 f"pending at switchover / {BANDWIDTH // MiB} MiB/s, ms",
                 f"fixes within {FIXES_LIMIT} ms",
                 "fixes / live"], rows))


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
    out += "\n\n" + downtime_table(results)
    if _fixes(results):
        out += "\n\n" + fixes_table(results)
    return out


def kinds(results: list[Result]) -> dict[str, list[Hop]]:
    """The completed migrations of every boot by kind: live, without
    bitmaps at the shared limits, and without bitmaps at MATCHED_LIMIT."""
    loads = _loads(results)
    return {
        "live": [h for r in loads for h in r.hops if h.converged],
        "no bitmaps": [r.plain for r in loads if r.plain.converged],
        f"no bitmaps, {MATCHED_LIMIT} ms limit": [
            h for r in loads for h in r.matched if h.converged],
    }


def _downtime(h: Hop) -> float | None:
    """The guest's downtime, or QEMU's where the run did not record it."""
    if h.visible_downtime_ms is not None:
        return h.visible_downtime_ms
    return None if h.downtime_ms is None else float(h.downtime_ms)


def fit(hops: list[Hop]) -> tuple[float, float] | None:
    """Least squares downtime = a + b x (RAM MiB sent in the downtime)
    over *hops*: (a ms, b ms/MiB), or None with fewer than 3 points or no
    spread in RAM."""
    pts = [(h.ram_downtime_bytes / MiB, d) for h in hops
           if h.ram_downtime_bytes is not None and
           (d := _downtime(h)) is not None]
    if len(pts) < 3:
        return None
    n = len(pts)
    mx = sum(x for x, _ in pts) / n
    my = sum(y for _, y in pts) / n
    sxx = sum((x - mx) ** 2 for x, _ in pts)
    if sxx == 0:
        return None
    b = sum((x - mx) * (y - my) for x, y in pts) / sxx
    return my - b * mx, b


def extra_at_equal_ram(results: list[Result]) -> Dist | None:
    """Live mode's downtime less what a migration without bitmaps takes
    for the same RAM left (:func:`fit` over every migration without
    bitmaps): what the bitmaps add to the downtime, at equal RAM."""
    k = kinds(results)
    base = fit([h for name, hops in k.items() if name != "live"
                for h in hops])
    if base is None:
        return None
    a, b = base
    return dist([d - (a + b * h.ram_downtime_bytes / MiB)
                 for h in k["live"] if h.ram_downtime_bytes is not None
                 and (d := _downtime(h)) is not None])


def downtime_table(results: list[Result]) -> str:
    """Why the downtimes differ: per kind of migration, the downtime next
    to the RAM sent in it and how QEMU came to switch over."""
    def d(values: Sequence[float | int | None], scale: float = 1.0,
          fmt: str = ".1f") -> str:
        x = dist([None if v is None else v / scale for v in values])
        return "-" if x is None else (f"{x.median:{fmt}} ({x.low:{fmt}}-"
                                      f"{x.high:{fmt}})")

    rows = []
    for name, hops in kinds(results).items():
        per_mib = [dt / (h.ram_downtime_bytes / MiB) for h in hops
                   if h.ram_downtime_bytes and (dt := _downtime(h))
                   is not None]
        rows.append([
            name, str(len(hops)), d([_downtime(h) for h in hops]),
            d([h.downtime_ms for h in hops], fmt=".0f"),
            d([h.ram_downtime_bytes for h in hops], MiB, ".2f"),
            d([h.dirty_syncs for h in hops], fmt=".0f"),
            d([h.switch_pending for h in hops], MiB, ".2f"),
            d([h.switch_threshold for h in hops], MiB, ".1f"),
            d(per_mib)])
    base = fit([h for name, hops in kinds(results).items()
                if name != "live" for h in hops])
    extra = extra_at_equal_ram(results)
    note = ""
    if base is not None:
        note = (f"\n\nWithout bitmaps, downtime = {base[0]:.1f} ms + "
                f"{base[1]:.2f} ms per MiB of RAM sent in it (least "
                f"squares over both kinds without bitmaps)")
        if extra is not None:
            note += (f"; live mode's downtime less that for its own RAM: "
                     f"median {extra.median:+.1f} ms ({extra.low:+.1f} to "
                     f"{extra.high:+.1f}, n={extra.n}).")
    return (f"Downtime under write load, and why: the guest's downtime "
            f"(destination RESUME - source STOP) and QEMU's, the RAM sent "
            f"while the guest was stopped (query-migrate's "
            f"ram.downtime-bytes), the RAM dirty-log syncs (each one an "
            f"exact pending QEMU asked for before deciding), and the "
            f"pending QEMU switched over with against its threshold "
            f"(trace).  The migrations without bitmaps at "
            f"{MATCHED_LIMIT} ms ({MATCHED} per boot, after the one at "
            f"{PARAMS['downtime-limit']} ms) send all of RAM's first pass "
            f"before they switch over, as live mode does (its bitmaps' "
            f"bulk comes after that pass); at {PARAMS['downtime-limit']} "
            f"ms QEMU switches over as soon as the RAM not sent yet is "
            f"below the threshold.  Median (min-max).\n\n" + markdown_table(
                ["migration", "n", "guest's downtime, ms",
                 "QEMU's downtime, ms", "RAM in the downtime, MiB",
                 "RAM syncs", "pending at switchover, MiB",
                 "threshold, MiB", "downtime per RAM MiB, ms"], rows)
            + note)


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
        "matched_downtime": dist([
            _downtime(h) for h in kinds(results)[
                f"no bitmaps, {MATCHED_LIMIT} ms limit"]]),
        "live_extra_at_equal_ram": extra_at_equal_ram(results),
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
    matched, extra = v["matched_downtime"], v["live_extra_at_equal_ram"]
    if matched:
        lines.append(f"- the same comparison made fair: without bitmaps "
                     f"at {MATCHED_LIMIT} ms, which leaves as little RAM "
                     f"for the downtime as live mode does, the guest's "
                     f"downtime median {matched.median:.1f} ms "
                     f"({matched.n}, {matched.low:.1f}-{matched.high:.1f})")
    if extra:
        lines.append(f"- live mode's downtime less a no-bitmap "
                     f"migration's for the same RAM left (fit): median "
                     f"{extra.median:+.1f} ms over {extra.n} migrations "
                     f"({extra.low:+.1f} to {extra.high:+.1f})")
    for f, fixes, live_d in fixes_vs_live(results):
        lines.append(
            f"- the fixes alone, {f.pattern}, {rate_name(f.rate_setting)}: "
            + ("converged" if f.shared.converged else "did not converge")
            + f" at {PARAMS['downtime-limit']} ms; at {FIXES_LIMIT} ms the "
            f"guest's downtime median "
            + ("-" if fixes is None else f"{fixes.median:.0f} ms")
            + " (over a unix socket: see the table for a real link)"
            + ", live mode's under the same writes "
            + ("-" if live_d is None else f"{live_d.median:.1f} ms"))
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

