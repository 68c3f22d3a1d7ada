"""The write-load benchmark's boots: the Linux guest writing one pattern
at one rate per boot, migrated again and again (:class:`Hops`), with
the write rate, the resends and the model's prediction recorded for each
migration, the guest's cost measured in one QEMU, and the convergence
threshold searched for (see the package's docstring)."""

from __future__ import annotations

import re
import tempfile
import time
from pathlib import Path
from typing import Any

from ...log import info
from ...machine import linuxguest, migration
from ...machine.hops import Hops
from ...machine.linuxguest import WriterConfig
from ...machine.vm import VM, MachineError
from ...paths import Layout
from ...util.units import MiB, fmt_bytes
from .model import (
    BITMAPS,
    CHUNK_WIRE,
    DISK,
    PATTERNS,
    Pattern,
    Replay,
    dirty_bytes_per_s,
    writer,
)
from .results import (
    CostResult,
    FixesResult,
    Hop,
    LoadResult,
    Result,
    Step,
    ThresholdResult,
)

BANDWIDTH = 64 * MiB
PARAMS = {"max-bandwidth": BANDWIDTH, "downtime-limit": 300}
LIVE = {"dirty-bitmaps": True, "dirty-bitmaps-live": True}
#: set explicitly: a QEMU that was a destination keeps the capabilities
#: it was given then
PLAIN = {"dirty-bitmaps": False, "dirty-bitmaps-live": False}
HOPS = 3
#: The downtime-limit of the matched migrations without bitmaps.  Live
#: mode cannot switch over before its bitmaps' bulk is sent, and its
#: estimate (the unsent part of their 34 MiB serialized size) keeps the
#: total above the threshold until RAM's first pass is over (RAM goes
#: first in each iteration): QEMU asks for the exact figure, which syncs
#: RAM's dirty log, only then, and stops the guest with what it dirtied
#: since the setup's sync (some 0.6 MiB here).  A migration without
#: bitmaps at the same 300 ms limit asks as soon as the RAM not sent yet
#: is below the threshold (bandwidth x 300 ms, some 19 MiB) and switches
#: over at once: the rest of its first pass goes into the downtime.  At
#: 1 ms its threshold is some 64 KiB, so QEMU sends the whole first pass
#: and syncs until that little is dirty: the two downtimes can then be
#: compared for (nearly) the same RAM left.
MATCHED_LIMIT = 1
MATCHED = 2
#: The fixes-only migrations (the ``fixes`` build: no live mode, so the
#: bitmaps all go in the downtime), with avail-switchover-bandwidth at
#: the link's speed, as a careful operator sets it
FIXES_CAPS = {"dirty-bitmaps": True}
FIXES_PARAMS = dict(PARAMS, **{"avail-switchover-bandwidth": BANDWIDTH})
#: The guest's bitmaps serialize to 34 MiB; within the live hops' 300 ms
#: the link carries 19.2 MiB, so the fixes cannot switch over there.  One
#: migration at that limit is given this long to show it (their pending
#: estimate is fixed once RAM is sent: a few seconds decide), then
#: :data:`HOPS` at :data:`FIXES_LIMIT`, where 64 MiB fit and they do
FIXES_SHARED_TIMEOUT = 8.0
FIXES_LIMIT = 1000
#: QEMU's trace events behind the switchover decision: the pending it
#: switched over with, and the threshold (every 100 ms)
TRACE_EVENTS = ("migration_thread_low_pending", "migrate_transferred")
TIMEOUT = 60.0
#: seconds the rate is measured without a migration
RATE_WINDOW = 2.5
IDLE_RATE = 1

#: The guest-cost measurement, at the "as fast as it goes" rate only: in
#: one QEMU, migrations with live bitmaps and without bitmaps alternate
#: (COST_ROUNDS of each, the order flipped every round), each held active
#: at COST_BANDWIDTH for a COST_WINDOW s count of the guest's writes and
#: then cancelled.  The hops' rates compare different QEMU processes,
#: whose rates differ by up to 20% at full speed (and 1.2 s windows); this
#: compares one process with itself over long windows.
COST_ROUNDS = 4
COST_WINDOW = 4.0
COST_BANDWIDTH = 2 * MiB
#: writes per second; 0 = as fast as the guest goes
RATES = (200, 1000, 0)
QUICK_RATES = (0,)
#: max-bandwidth steps of the threshold search, times the predicted one
STEPS = (3.0, 2.0, 1.4, 1.0, 0.7)
QUICK_STEPS = (2.0, 1.25)
MIN_BANDWIDTH = 2 * MiB
MAX_STEP_S = 90.0
THRESHOLD_PATTERN = "one per chunk"


def rate_name(rate: int) -> str:
    """How a boot's rate setting reads in logs and tables."""
    return "max" if rate == 0 else \
        ("idle (1/s)" if rate == IDLE_RATE else f"{rate}/s")


class _Count:
    """The writer's write count across hops, read incrementally: each
    QEMU has its own serial log, which starts empty; the count goes on."""

    def __init__(self) -> None:
        self.last = 0
        self._pos: dict[Path, int] = {}

    def __call__(self, vm: VM) -> int:
        path = vm.serial_log
        try:
            with path.open("rb") as f:
                f.seek(self._pos.get(path, 0))
                data = f.read()
        except OSError:
            return self.last
        end = data.rfind(b"\n") + 1     # whole lines only
        self._pos[path] = self._pos.get(path, 0) + end
        count = linuxguest.last_count(data[:end])
        if count is not None:
            self.last = max(self.last, count)
        return self.last


class _Phases:
    """query-migrate and the write count, polled during a hop."""

    def __init__(self, vm: VM, count: _Count) -> None:
        self.vm, self.count = vm, count
        #: (bitmap bytes sent, chunks resent, status, writes)
        self.polls: list[tuple[int, int, str, int]] = []
        self.times: list[float] = []
        self.remaining: int | None = None
        #: the highest RAM dirty rate QEMU reported, bytes/s
        self.ram_dirty = 0.0

    def __call__(self, qm: dict) -> None:
        bm = qm.get("dirty-bitmaps") or {}
        if bm:
            self.remaining = bm.get("remaining")
        ram = qm.get("ram") or {}
        self.ram_dirty = max(self.ram_dirty, ram.get("dirty-pages-rate", 0)
                             * ram.get("page-size", 4096))
        self.times.append(time.monotonic())
        self.polls.append((bm.get("transferred", 0),
                           bm.get("resent-chunks", 0),
                           str(qm.get("status")), self.count(self.vm)))

    def intervals(self, stop: int, sent: int | None, resent: int | None
                  ) -> tuple[float, list[tuple[int, int, float]]]:
        """(seconds of bulk phase, [(first write, end, part of the bulk
        sent)] from the first poll to the write count *stop* at the
        guest's stop), see the module.

        The bulk's size: all the bitmaps sent (*sent*) less the *resent*
        chunks.  query-migrate's bytes sent lag (they are added when an
        iteration ends, the resent chunks as they go), so an interval
        between two polls takes the later poll's part, and any resent
        chunk means the bulk is over.
        """
        live = [i for i, p in enumerate(self.polls)
                if p[2] in ("setup", "active")]
        if not live:
            return 0.0, []
        bulk = (sent or 0) - (resent or 0) * CHUNK_WIRE
        out = []
        start = end = None
        for i in live:
            writes = self.polls[i][3]
            nxt = self.polls[i + 1] if i + 1 < len(self.polls) else None
            upto = min(stop, nxt[3]) if nxt and i + 1 in live else stop
            if nxt is None or nxt[2] not in ("setup", "active") or \
                    nxt[1] > 0 or bulk <= 0:
                f = 1.0
            else:
                f = min(1.0, nxt[0] / bulk)
            if start is None and f > 0.01:
                start = self.times[i]
            if end is None and f >= 1.0:
                end = self.times[i + 1] if nxt else self.times[i]
            if upto > writes:
                out.append((writes, upto, f))
        t_bulk = ((end or self.times[live[-1]]) - start) if start else 0.0
        return max(0.0, t_bulk), out


def _rate(vm: VM, count: _Count, seconds: float) -> float:
    n0, t0 = count(vm), time.monotonic()
    time.sleep(seconds)
    return (count(vm) - n0) / (time.monotonic() - t0)


_LOW_PENDING = re.compile(r"\bmigration_thread_low_pending (\d+)")
_THRESHOLD = re.compile(r"\bmigrate_transferred .*max_size (\d+)")


def trace_args(workdir: Path) -> tuple[str, ...]:
    """QEMU arguments tracing :data:`TRACE_EVENTS` into a file per process
    (QEMU puts its pid for the ``%d``): every hop's QEMU has the same
    arguments."""
    events = workdir / "wl-trace-events"
    events.write_text("".join(f"{e}\n" for e in TRACE_EVENTS))
    return ("-trace", f"events={events},file={workdir}/trace-%d.log")


def switchover(log: Path) -> tuple[int | None, int | None]:
    """(pending, threshold) of the last switchover in a source's trace
    log: the pending QEMU found low enough, and the last threshold it
    computed before that."""
    pending = threshold = last = None
    try:
        text = log.read_text(errors="replace")
    except OSError:
        return None, None
    for line in text.splitlines():
        m = _THRESHOLD.search(line)
        if m:
            last = int(m.group(1))
            continue
        m = _LOW_PENDING.search(line)
        if m:
            pending, threshold = int(m.group(1)), last
    return pending, threshold


def _hop(h: Hops, count: _Count, replay: Replay, caps: dict[str, bool],
         params: dict[str, Any], timeout: float) -> Hop:
    src = h.vm
    log = src.workdir / f"trace-{src.machine.get_pid()}.log"
    phases = _Phases(src, count)
    # the count starts at the first poll, once the migration runs: not
    # before the destination is launched, which takes the guest's
    # writes of that time but not its duration into the rate
    first: list[tuple[int, float]] = []

    def on_poll(info: dict) -> None:
        if not first:
            first.append((count(src), time.monotonic()))
        phases(info)

    t_launch = time.monotonic()
    res = h.migrate(caps, params, timeout, on_poll=on_poll)
    n0, t0 = first[0] if first else (count(src), t_launch)
    # the source's log has every write up to the stop (or the give-up)
    n1 = count(src)
    running = ((res.total_ms - (res.downtime_ms or 0)) / 1000
               if res.total_ms else time.monotonic() - t0)
    bm = res.bitmaps_info or {}
    t_bulk, intervals = phases.intervals(n1, bm.get("transferred"),
                                         bm.get("resent-chunks"))
    exposed = sum((e - b) * f for b, e, f in intervals)
    live = bool(caps.get("dirty-bitmaps-live"))
    predicted = float(replay.resent(intervals)) if live else 0.0
    replay.advance(n1)          # the bitmaps hold every write so far
    if res.converged:
        replay.order = replay.order[::-1]
    ram = res.info.get("ram", {})
    pending, threshold = switchover(log) if res.converged else (None, None)
    return Hop(res.converged, res.total_ms, res.downtime_ms,
               (n1 - n0) / running, bm.get("transferred"),
               bm.get("downtime-transferred"), bm.get("resent-chunks"),
               ram.get("transferred"),
               phases.ram_dirty,
               t_bulk, exposed,
               predicted, phases.remaining,
               visible_downtime_ms=res.visible_downtime_ms,
               ram_downtime_bytes=ram.get("downtime-bytes"),
               dirty_syncs=ram.get("dirty-sync-count"),
               switch_pending=pending, switch_threshold=threshold)


def _threshold(h: Hops, count: _Count, replay: Replay, pattern: Pattern,
               rate_before: float, steps: tuple[float, ...],
               ram_bytes: int, ram_dirty: float) -> ThresholdResult:
    """Lower max-bandwidth around the predicted threshold until a
    migration does not converge."""
    bitmaps = dirty_bytes_per_s(pattern, rate_before)
    predicted = bitmaps + ram_dirty
    out = ThresholdResult(pattern.name, rate_before, predicted, bitmaps,
                          ram_dirty)
    bulk = sum(DISK // b.granularity // 8 for b in BITMAPS)
    for factor in steps:
        bw = int(predicted * factor)
        if bw < MIN_BANDWIDTH:
            break       # RAM alone would take minutes: not affordable
        # twice what a converging migration needs, and some
        timeout = min(MAX_STEP_S, 1.5 * (ram_bytes + bulk) / bw + 5)
        info(f"bench: writeload threshold step {fmt_bytes(bw)}/s, "
             f"timeout {timeout:.0f} s")
        hop = _hop(h, count, replay, LIVE,
                   dict(PARAMS, **{"max-bandwidth": bw}), timeout)
        out.steps.append(Step(bw, timeout, hop))
        if not hop.converged:
            break
    return out


def _held_rate(h: Hops, count: _Count, caps: dict[str, bool],
               n: int) -> float:
    """The guest's writes/s over COST_WINDOW s of a migration held at
    COST_BANDWIDTH, then cancelled: the guest stays where it is."""
    src = h.vm
    dst = src.successor(f"cost{n}")
    sock = h.sockdir / f"cost{n}.sock"
    sock.unlink(missing_ok=True)
    dst.launch()
    try:
        migration.start(src, dst, f"unix:{sock}", caps,
                        dict(PARAMS, **{"max-bandwidth": COST_BANDWIDTH}))
        migration.wait(src, ("active",), 30)
        n0, t0 = count(src), time.monotonic()
        time.sleep(COST_WINDOW)
        n1, t1 = count(src), time.monotonic()
        status = migration.query(src).get("status")
        if status != "active":
            raise MachineError(f"cost{n}: the migration was {status} before "
                               f"the end of its window: not held")
        end = migration.cancel(src, dst)["status"]
        if end != "cancelled":
            raise MachineError(f"cost{n}: the migration ended {end} when "
                               "it was cancelled: not held")
    finally:
        # a cancelled destination fails its load and exits with status 1
        # (allowed by the cancel); a crash or another status is not
        problem = dst.ended_badly()
        sock.unlink(missing_ok=True)
    if problem:
        raise MachineError(f"cost{n} destination: {problem}")
    return (n1 - n0) / (t1 - t0)


def _cost(h: Hops, count: _Count, pattern: Pattern) -> CostResult:
    out = CostResult(pattern.name)
    for i in range(COST_ROUNDS):
        order = (("live", LIVE), ("plain", PLAIN))
        for name, caps in order if i % 2 == 0 else order[::-1]:
            n = len(out.live) + len(out.plain)
            getattr(out, name).append(_held_rate(h, count, caps, n))
    return out


def _first_vm(layout: Layout, name: str, flavour: str,
              config: WriterConfig, workdir: Path) -> VM:
    """The VM a boot starts with: the Linux guest running *config*'s
    writer on a DISK with the BITMAPS, traced.  The patched and the
    fixes boots build it here alike, so that the report sets their hops
    side by side under the same guest, disk and writes; only the build
    (*flavour*) and the name differ."""
    return VM(layout, name, [linuxguest.disk("disk0", DISK,
                                             bitmaps=BITMAPS)],
              flavour, workdir, machine=linuxguest.MACHINE,
              memory_mb=linuxguest.MEMORY_MB,
              extra_args=linuxguest.qemu_args(layout, config)
              + trace_args(workdir))


def run_boot(layout: Layout, pattern: Pattern, rate: int, workdir: Path,
             threshold_steps: tuple[float, ...] = ()) -> list[Result]:
    """One boot: the rate, HOPS live hops, the rate again, the threshold
    search if asked, then the migration without bitmaps, and MATCHED
    more without bitmaps at MATCHED_LIMIT."""
    config = writer(pattern, rate)
    first = _first_vm(layout, "hop0", "patched", config, workdir)
    count = _Count()
    out: list[Result] = []
    with Hops(first, workdir) as h:
        boot = linuxguest.wait_started(h.vm.serial_log)
        # every write before this count is in the bitmaps: a report line
        # may lag its writes by a few lines, which the replay then misses
        replay = Replay(config, count(h.vm))
        h.vm.add_bitmaps()
        before = _rate(h.vm, count, RATE_WINDOW)
        cost = _cost(h, count, pattern) if rate == 0 else None
        hops = [_hop(h, count, replay, LIVE, PARAMS, TIMEOUT)
                for _ in range(HOPS)]
        after = _rate(h.vm, count, RATE_WINDOW)
        if threshold_steps:
            ram = max(hop.ram_bytes or 0 for hop in hops)
            ram_dirty = sum(hop.ram_dirty_rate for hop in hops) / len(hops)
            out.append(_threshold(h, count, replay, pattern, before,
                                  threshold_steps, ram, ram_dirty))
        plain = _hop(h, count, replay, PLAIN, PARAMS, TIMEOUT)
        matched = [_hop(h, count, replay, PLAIN,
                        dict(PARAMS, **{"downtime-limit": MATCHED_LIMIT}),
                        TIMEOUT) for _ in range(MATCHED)]
        stalls = sum(len(linuxguest.stalls(p))
                     for p in workdir.glob("*-serial.log"))
    out.insert(0, LoadResult(pattern.name, rate, before, after, hops, plain,
                             stalls, boot, matched))
    if cost is not None:
        out.append(cost)
    return out


def run_fixes_boot(layout: Layout, pattern: Pattern, rate: int,
                   workdir: Path) -> FixesResult:
    """One boot on the ``fixes`` build: the rate, one migration at the
    live hops' limits (given up after :data:`FIXES_SHARED_TIMEOUT`), then
    :data:`HOPS` at :data:`FIXES_LIMIT`; the guest's downtime of each is
    set against live mode's under the same writes in the report."""
    config = writer(pattern, rate)
    first = _first_vm(layout, "fix0", "fixes", config, workdir)
    count = _Count()
    with Hops(first, workdir, prefix="fix") as h:
        boot = linuxguest.wait_started(h.vm.serial_log)
        replay = Replay(config, count(h.vm))
        h.vm.add_bitmaps()
        before = _rate(h.vm, count, RATE_WINDOW)
        shared = _hop(h, count, replay, FIXES_CAPS, FIXES_PARAMS,
                      FIXES_SHARED_TIMEOUT)
        hops = [_hop(h, count, replay, FIXES_CAPS,
                     dict(FIXES_PARAMS, **{"downtime-limit": FIXES_LIMIT}),
                     TIMEOUT) for _ in range(HOPS)]
    return FixesResult(pattern.name, rate, before, shared, hops, boot)


def run(layout: Layout, quick: bool = False) -> list[Result]:
    rates = QUICK_RATES if quick else RATES
    boots: list[tuple[Pattern, int]] = [(PATTERNS[0], IDLE_RATE)]
    boots += [(p, r) for p in PATTERNS for r in rates]
    results: list[Result] = []
    for pattern, rate in boots:
        steps = (QUICK_STEPS if quick else STEPS) \
            if (pattern.name, rate) == (THRESHOLD_PATTERN, 0) else ()
        info(f"bench: writeload {pattern.name}, {rate_name(rate)}")
        with tempfile.TemporaryDirectory(prefix="pq-wl-", dir="/tmp") as tmp:
            results += run_boot(layout, pattern, rate, Path(tmp), steps)
    # the fixes alone, for the first pattern at every rate: without live
    # mode the pattern does not change what goes in the downtime (every
    # bitmap, whole), the rate changes the RAM dirtied
    for rate in rates:
        info(f"bench: writeload {PATTERNS[0].name}, {rate_name(rate)}, "
             f"fixes only")
        with tempfile.TemporaryDirectory(prefix="pq-wl-", dir="/tmp") as tmp:
            results.append(run_fixes_boot(layout, PATTERNS[0], rate,
                                          Path(tmp)))
    return results

