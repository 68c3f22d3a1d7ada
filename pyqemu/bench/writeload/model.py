"""The write-load benchmark's workload, and its model of what live mode
resends and where it stops converging.

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
the chunks dirtied per :data:`LAP`).  :mod:`.experiment` observes it in
the "one per chunk, max" boot by lowering max-bandwidth in steps around
bandwidth* (from the rate measured before migrating) until a migration
does not converge within a timeout sized from the bytes to send.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass

from ...machine import linuxguest
from ...machine.linuxguest import WriterConfig
from ...machine.vm import Bitmap
from ...util.units import KiB, TiB
from .. import chunks

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


def writer(pattern: Pattern, rate: int) -> WriterConfig:
    # a progress line every ~1/250 s at most: each byte of it is a UART
    # write, emulated by QEMU (a VM exit on KVM)
    return WriterConfig(bs=BS, length=pattern.length, stride=pattern.stride,
                        rate=rate, seed=11, kick_ms=linuxguest.KICK_MS,
                        report=16 if rate == 0 else max(1, rate // 250))



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

