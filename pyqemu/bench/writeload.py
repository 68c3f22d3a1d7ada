"""``pyqemu bench migrate``, write-load part: live bitmap migration under
guest writes of several patterns and rates.

What ``dirty-bitmaps-live`` costs depends on the guest's writes: a chunk
(1 KiB of bitmap: 8192 granules, 32 MiB of disk at 4 KiB granularity,
512 MiB at 64 KiB) whose bits change after it was sent is sent again.  So
the Linux guest of :mod:`pyqemu.machine.linuxguest` (patched build, q35 under
TCG, O_DIRECT writes to a 1 TiB virtio-blk disk on an iothread, bitmaps
at 4 KiB and 64 KiB granularity) writes with one pattern and rate per
boot, and is migrated several times in that boot (A -> B -> A' ...,
:class:`~pyqemu.machine.hops.Hops`; the guest keeps writing across the
hops and the bitmaps move with it):

* patterns: random over the whole disk; sequential (stride 4 KiB); a hot
  set of :data:`HOT_CHUNKS` 4 KiB-bitmap chunks (random writes in
  128 MiB); one write per chunk: stride 32 MiB + 4 KiB, so that every
  write lands in the next chunk *and* on a granule not written before (a
  stride of exactly 32 MiB rewrites the same 32768 granules after one
  lap of the disk, sets no new bit, and so changes no chunk at all);
* rates: idle (1 write/s), paced rates, and as fast as the guest goes.

Per boot: the write rate with no migration (bitmaps present), then
:data:`HOPS` live migrations, the rate again, then one migration without
bitmaps at the same bandwidth (last: it leaves the bitmaps behind).  The
rate during each migration against the rate without one says what
migrating costs the guest; against the rate during the migration without
bitmaps it separates "the migration competes for the host's CPUs" from
"the meta bitmap costs the write path" (ratio live / no-bitmap).  As fast
as the guest goes, that ratio compares different QEMU processes, whose
rates differ by more than the effect; there a boot first measures the
guest's cost in one QEMU (:class:`CostResult`), and the target uses that.

The model of the resent chunks
------------------------------

A chunk is resent if a bit of it is set after the chunk was sent: a
write to a granule that was clean (rewriting a dirty granule changes
nothing).  The bulk phase sends every chunk once, bitmap by bitmap (in
the node's order, newest bitmap first, which flips with every hop) and
in disk order, mostly after RAM's first pass (RAM comes first in each
iteration and uses the rate limit up); a zero chunk costs 13 bytes, a
non-zero one 1045 (:mod:`pyqemu.bench.chunks`).  So the prediction
replays the writer's exact offsets
(:func:`~pyqemu.machine.linuxguest.write_offsets`) from the bitmaps'
creation, and with query-migrate and the guest's write count polled every
50 ms, places the bulk's cursor at each poll: the part f of the bulk's
bytes sent (all bitmap bytes of the migration less the resent chunks),
mapped to a chunk through the replayed non-zero chunks.  A write of the
migration is predicted to cause a resend if it sets a clean granule in a
chunk before the cursor (after the bulk: any chunk), counted once per
chunk and bitmap.  Bytes: chunks times 1045 (1 KiB of data and 21 of
framing: flags, start sector, sector count, data size).

What it leaves out: query-migrate adds the bitmaps' bytes only when an
iteration ends, so the cursor is known only roughly (each poll interval
takes the later poll's f; the first resent chunk means the bulk is
over); a chunk counts once per migration, while the dirty laps after the
bulk send a chunk that keeps changing once per lap.

Convergence threshold: live mode converges while the bitmaps' dirty
bytes per second (chunks getting a new bit, per second, times 1045) stay
below the bandwidth left after RAM; then the backlog stays below the
switchover threshold (bandwidth x downtime-limit).  One write per chunk
on clean granules at r writes/s dirties r chunks/s of the 4 KiB bitmap
and r/16 of the 64 KiB one, so it stops converging at

    bandwidth* = r * 1045 * 17/16 + RAM's dirty rate

(the RAM part is QEMU's dirty-pages-rate in the live hops of that boot;
without it, at a given bandwidth, r* = bw / 1110).  Other patterns
dirty fewer chunks per write (:func:`threshold_rate`, per pattern, with
the chunks dirtied per :data:`LAP`).  Observed in the
"one per chunk, max" boot by lowering max-bandwidth in steps around
bandwidth* (from the rate measured before migrating) until a migration
does not converge within a timeout sized from the bytes to send.
"""

from __future__ import annotations

import bisect
import math
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..log import info
from ..machine import linuxguest, migration
from ..machine.hops import Hops
from ..machine.linuxguest import WriterConfig
from ..machine.vm import VM, Bitmap, MachineError
from ..paths import Layout
from ..util.table import markdown_table
from ..util.units import KiB, MiB, TiB, fmt_bytes
from . import chunks
from .compare import Dist, dist

DISK = TiB
BITMAPS = (Bitmap("bm-4k", 4 * KiB), Bitmap("bm-64k", 64 * KiB))
#: granules per 1 KiB chunk, and a chunk with data on the wire
CHUNK_GRANULES = chunks.BITS
CHUNK_WIRE = chunks.WIRE
#: what data adds to a chunk of zeroes on the wire
CHUNK_EXTRA = chunks.WIRE - chunks.ZERO_WIRE
BS = 4 * KiB
#: disk bytes one chunk of the 4 KiB bitmap covers: 32 MiB
SPAN_4K = CHUNK_GRANULES * 4 * KiB
HOT_CHUNKS = 4
#: the bulk phase's order of BITMAPS (indices) on the first source: a
#: node lists its bitmaps newest first, and bm-64k is created after bm-4k;
#: a destination creates them in the order it receives them, so the
#: order flips with every hop
BULK_ORDER = (1, 0)
#: seconds between dirty laps in the threshold model: QEMU's rate-limit
#: window (BUFFER_DELAY), one iteration of the migration per window
LAP = 0.1

BANDWIDTH = 64 * MiB
PARAMS = {"max-bandwidth": BANDWIDTH, "downtime-limit": 300}
LIVE = {"dirty-bitmaps": True, "dirty-bitmaps-live": True}
#: set explicitly: a QEMU that was a destination keeps the capabilities
#: it was given then
PLAIN = {"dirty-bitmaps": False, "dirty-bitmaps-live": False}
HOPS = 3
TIMEOUT = 60.0
#: seconds the rate is measured without a migration
RATE_WINDOW = 2.5
IDLE_RATE = 1


@dataclass(frozen=True)
class Pattern:
    name: str
    stride: int         # 0 = random
    length: int         # written region, from offset 0


PATTERNS = (
    Pattern("random", 0, DISK),
    Pattern("sequential", BS, DISK),
    Pattern("hot set", 0, HOT_CHUNKS * SPAN_4K),
    Pattern("one per chunk", SPAN_4K + BS, DISK),
)
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


def writer(pattern: Pattern, rate: int) -> WriterConfig:
    # a progress line every ~1/250 s at most: each is a UART write under TCG
    return WriterConfig(bs=BS, length=pattern.length, stride=pattern.stride,
                        rate=rate, seed=11, kick_ms=linuxguest.KICK_MS,
                        report=16 if rate == 0 else max(1, rate // 250))


# -- the model --------------------------------------------------------------

def distinct_chunks(pattern: Pattern, writes: float, granularity: int
                    ) -> float:
    """Chunks of a bitmap at *granularity* that *writes* writes on clean
    granules dirty (the steady-state model of the threshold)."""
    span = CHUNK_GRANULES * granularity
    chunks = max(1, math.ceil(pattern.length / span))
    if writes <= 0:
        return 0.0
    if pattern.stride == 0:
        return chunks * (1 - math.exp(-writes / chunks))
    if pattern.stride >= span:
        return min(chunks, writes)
    return min(chunks, writes * pattern.stride / span + 1)


def dirty_bytes_per_s(pattern: Pattern, rate: float) -> float:
    """Bitmap bytes per second the pattern makes to resend: the chunks it
    dirties in one lap of LAP seconds, per second."""
    return sum(distinct_chunks(pattern, rate * LAP, b.granularity)
               for b in BITMAPS) / LAP * CHUNK_WIRE


def threshold_rate(pattern: Pattern, bandwidth: float) -> float:
    """Writes per second beyond which the pattern's dirty chunks outrun
    *bandwidth* (inf: the pattern never dirties chunks that fast)."""
    lo, hi = 0.0, 1e9
    if dirty_bytes_per_s(pattern, hi) < bandwidth:
        return math.inf
    for _ in range(60):
        mid = (lo + hi) / 2
        if dirty_bytes_per_s(pattern, mid) < bandwidth:
            lo = mid
        else:
            hi = mid
    return lo


class Replay:
    """The bitmaps as the writer's exact offsets have set them, write by
    write since the bitmaps were created, and which writes of a migration
    set a clean granule in a chunk the bulk phase had already sent."""

    def __init__(self, config: WriterConfig, created: int) -> None:
        self.config = config
        self.done = created
        self.dirty: list[set[int]] = [set() for _ in BITMAPS]
        self.nonzero: list[set[int]] = [set() for _ in BITMAPS]
        #: the current source's bulk order (see BULK_ORDER)
        self.order = BULK_ORDER

    def advance(self, stop: int) -> None:
        """Apply the writes up to *stop* without counting anything."""
        self._apply(stop, None)

    def _apply(self, stop: int, cursor: tuple[int, int] | None,
               chunks: list[set[int]] | None = None) -> None:
        """Writes [done, stop); with *cursor* (bitmap, chunk: where the
        bulk is; everything before it was sent), note in *chunks* the
        sent chunks they set a clean granule in."""
        if stop <= self.done:
            return
        for off in linuxguest.write_offsets(self.config, self.done, stop):
            for i, b in enumerate(BITMAPS):
                g = off // b.granularity
                if g in self.dirty[i]:
                    continue
                self.dirty[i].add(g)
                c = g // CHUNK_GRANULES
                self.nonzero[i].add(c)
                if chunks is not None and cursor is not None and (
                        self.order.index(i) < cursor[0] or
                        (self.order.index(i) == cursor[0] and
                         c < cursor[1])):
                    chunks[i].add(c)
        self.done = stop

    def layout(self) -> list[tuple[int, list[int]]]:
        """Per bitmap in bulk order: its chunk count and sorted non-zero
        chunks, which cost 1045 bytes in the bulk; zero ones cost 13."""
        out = []
        for i in self.order:
            span = CHUNK_GRANULES * BITMAPS[i].granularity
            out.append((-(-DISK // span), sorted(self.nonzero[i])))
        return out

    @staticmethod
    def cursor(layout: list[tuple[int, list[int]]], f: float
               ) -> tuple[int, int]:
        """(position in bulk order, chunk) the bulk has reached when the
        part *f* of its bytes is sent."""
        sizes = [n * chunks.ZERO_WIRE + len(nz) * CHUNK_EXTRA
                 for n, nz in layout]
        target = f * sum(sizes)
        for pos, ((n, nz), size) in enumerate(zip(layout, sizes,
                                                  strict=True)):
            if target >= size:
                target -= size
                continue
            lo, hi = 0, n           # chunks [0, k) cost <= target
            while lo < hi:
                k = (lo + hi + 1) // 2
                if k * chunks.ZERO_WIRE + bisect.bisect_left(nz, k) * \
                        CHUNK_EXTRA <= target:
                    lo = k
                else:
                    hi = k - 1
            return pos, lo
        return len(layout), 0

    def resent(self, intervals: list[tuple[int, int, float]]) -> int:
        """Distinct chunks (all bitmaps) that the writes of *intervals*
        ((first write, end, part of the bulk sent)) set a clean granule
        in behind the bulk's cursor."""
        layout = self.layout()
        chunks: list[set[int]] = [set() for _ in BITMAPS]
        for first, end, f in intervals:
            self._apply(first, None)
            self._apply(end, self.cursor(layout, f), chunks)
        return sum(len(c) for c in chunks)


# -- results ----------------------------------------------------------------

@dataclass
class Hop:
    converged: bool
    total_ms: int | None
    downtime_ms: int | None
    rate: float                 # guest writes/s while migrating
    bitmap_bytes: int | None    # all bitmap bytes sent
    downtime_bytes: int | None  # of which in the downtime
    resent_chunks: int | None
    ram_bytes: int | None
    ram_dirty_rate: float       # bytes/s, QEMU's highest dirty-pages-rate
    t_bulk: float               # s, the bulk phase
    exposed: float              # writes exposed (see the module)
    predicted_chunks: float
    remaining: int | None       # bitmap bytes pending at the last poll

    @property
    def resent_bytes(self) -> int | None:
        return None if self.resent_chunks is None else \
            self.resent_chunks * CHUNK_WIRE

    @property
    def predicted_bytes(self) -> float:
        return self.predicted_chunks * CHUNK_WIRE


@dataclass
class LoadResult:
    pattern: str
    rate_setting: int           # 0 = as fast as it goes
    rate_before: float          # writes/s, no migration
    rate_after: float           # writes/s, no migration, after the hops
    hops: list[Hop]
    plain: Hop                  # the migration without bitmaps
    stalls: int                 # the writer's "stall" lines (> 0.5 s)
    boot_s: float

    @property
    def rate_idle(self) -> float:
        """The rate without a migration: before and after the hops."""
        return (self.rate_before + self.rate_after) / 2

    @property
    def rate_live(self) -> float:
        return sum(h.rate for h in self.hops) / len(self.hops)


@dataclass
class Step:
    bandwidth: int
    timeout: float
    hop: Hop


@dataclass
class ThresholdResult:
    pattern: str
    rate_before: float
    predicted_bandwidth: float  # the two below
    bitmap_dirty_rate: float    # bytes/s, the model
    ram_dirty_rate: float       # bytes/s, QEMU's dirty-pages-rate
    steps: list[Step] = field(default_factory=list)

    def observed(self) -> tuple[int | None, int | None]:
        """(lowest bandwidth that converged, highest that did not)."""
        ok = [s.bandwidth for s in self.steps if s.hop.converged]
        bad = [s.bandwidth for s in self.steps if not s.hop.converged]
        return (min(ok) if ok else None, max(bad) if bad else None)


@dataclass
class CostResult:
    """Guest writes/s during live and no-bitmap migrations in one QEMU
    (see COST_ROUNDS)."""
    pattern: str
    live: list[float] = field(default_factory=list)
    plain: list[float] = field(default_factory=list)

    @property
    def ratio(self) -> float:
        return (sum(self.live) / len(self.live)) / \
            (sum(self.plain) / len(self.plain)) \
            if self.live and self.plain and sum(self.plain) else 0.0


Result = LoadResult | ThresholdResult | CostResult


# -- measuring --------------------------------------------------------------

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


def _hop(h: Hops, count: _Count, replay: Replay, caps: dict[str, bool],
         params: dict[str, Any], timeout: float) -> Hop:
    src = h.vm
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
    return Hop(res.converged, res.total_ms, res.downtime_ms,
               (n1 - n0) / running, bm.get("transferred"),
               bm.get("downtime-transferred"), bm.get("resent-chunks"),
               ram.get("transferred"),
               phases.ram_dirty,
               t_bulk, exposed,
               predicted, phases.remaining)


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


def run_boot(layout: Layout, pattern: Pattern, rate: int, workdir: Path,
             threshold_steps: tuple[float, ...] = ()) -> list[Result]:
    """One boot: the rate, HOPS live hops, the rate again, the threshold
    search if asked, then the migration without bitmaps."""
    config = writer(pattern, rate)
    first = VM(layout, "hop0", [linuxguest.disk("disk0", DISK,
                                                bitmaps=BITMAPS)],
               "patched", workdir, machine=linuxguest.MACHINE,
               memory_mb=linuxguest.MEMORY_MB,
               extra_args=linuxguest.qemu_args(layout, config))
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
        stalls = sum(len(linuxguest.stalls(p))
                     for p in workdir.glob("*-serial.log"))
    out.insert(0, LoadResult(pattern.name, rate, before, after, hops, plain,
                             stalls, boot))
    if cost is not None:
        out.append(cost)
    return out


def run(layout: Layout, quick: bool = False) -> list[Result]:
    rates = QUICK_RATES if quick else RATES
    boots: list[tuple[Pattern, int]] = [(PATTERNS[0], IDLE_RATE)]
    boots += [(p, r) for p in PATTERNS for r in rates]
    results: list[Result] = []
    for pattern, rate in boots:
        steps = (QUICK_STEPS if quick else STEPS) \
            if (pattern.name, rate) == (THRESHOLD_PATTERN, 0) else ()
        info(f"bench: writeload {pattern.name}, {_rate_name(rate)}")
        with tempfile.TemporaryDirectory(prefix="pq-wl-", dir="/tmp") as tmp:
            results += run_boot(layout, pattern, rate, Path(tmp), steps)
    return results


# -- reporting --------------------------------------------------------------

def _rate_name(rate: int) -> str:
    return "max" if rate == 0 else \
        ("idle (1/s)" if rate == IDLE_RATE else f"{rate}/s")


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
            r.pattern, _rate_name(r.rate_setting),
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


def load_results(rows: list[dict]) -> list[Result]:
    """The write-load results back from results.json (:func:`data`), for
    the cover letter; the threshold steps are left out."""
    out: list[Result] = []
    for row in rows:
        r = {k: v for k, v in row.items() if k != "kind"}
        if row.get("kind") == "CostResult":
            out.append(CostResult(**r))
            continue
        if row.get("kind") != "LoadResult":
            continue
        r["hops"] = [Hop(**h) for h in r["hops"]]
        r["plain"] = Hop(**r["plain"])
        out.append(LoadResult(**r))
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


def describe() -> str:
    return (f"Linux guest (q35, TCG, patched build) writing 4 KiB O_DIRECT "
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
            f"writeload.py says how); bytes are chunks x {CHUNK_WIRE}.  "
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


def data(results: list[Result]) -> list[dict]:
    out = []
    for r in results:
        d = asdict(r)
        d["kind"] = type(r).__name__
        out.append(d)
    return out
