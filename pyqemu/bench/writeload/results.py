"""What the write-load benchmark measured, boot by boot, and the JSON it
is kept as (``results.json``, which the cover letter reads back)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from .model import CHUNK_WIRE


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
    # why one migration's downtime differs from another's (None in the
    # results of older runs):
    #: the destination's RESUME minus the source's STOP, ms
    visible_downtime_ms: float | None = None
    #: RAM bytes sent while the guest was stopped (query-migrate's
    #: ram.downtime-bytes): what the downtime mostly consists of
    ram_downtime_bytes: int | None = None
    #: RAM dirty-log syncs (ram.dirty-sync-count): each is an exact
    #: pending figure QEMU asked for before deciding on the switchover
    dirty_syncs: int | None = None
    #: the pending bytes QEMU switched over with, and the threshold it
    #: held them to (bandwidth x downtime-limit), from its trace
    switch_pending: int | None = None
    switch_threshold: int | None = None

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
    #: migrations without bitmaps that switch over with as little RAM
    #: left as live mode does (see experiment.MATCHED_LIMIT)
    matched: list[Hop] = field(default_factory=list)

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


@dataclass
class FixesResult:
    """A boot on the ``fixes`` build (the series' fixes without live
    mode): the same guest and writes, its bitmaps migrated the only way
    that build can, all of them in the downtime, with
    avail-switchover-bandwidth at the link's speed (see
    experiment.FIXES_PARAMS)."""
    pattern: str
    rate_setting: int
    rate_before: float
    #: one migration at the live hops' own downtime-limit, given up after
    #: experiment.FIXES_SHARED_TIMEOUT: whether the fixes converge there
    shared: Hop
    #: HOPS migrations at experiment.FIXES_LIMIT, where they can
    hops: list[Hop]
    boot_s: float


Result = LoadResult | ThresholdResult | CostResult | FixesResult


def load_results(rows: list[dict]) -> list[Result]:
    """The write-load results back from results.json (:func:`data`), for
    the cover letter; the threshold steps are left out."""
    out: list[Result] = []
    for row in rows:
        r = {k: v for k, v in row.items() if k != "kind"}
        if row.get("kind") == "CostResult":
            out.append(CostResult(**r))
            continue
        if row.get("kind") == "FixesResult":
            r["shared"] = Hop(**r["shared"])
            r["hops"] = [Hop(**h) for h in r["hops"]]
            out.append(FixesResult(**r))
            continue
        if row.get("kind") != "LoadResult":
            continue
        r["hops"] = [Hop(**h) for h in r["hops"]]
        r["plain"] = Hop(**r["plain"])
        r["matched"] = [Hop(**h) for h in r.get("matched", [])]
        out.append(LoadResult(**r))
    return out


def data(results: list[Result]) -> list[dict]:
    """The results as JSON rows, each with its kind (:func:`load_results`
    reads them back)."""
    out = []
    for r in results:
        d = asdict(r)
        d["kind"] = type(r).__name__
        out.append(d)
    return out
