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


def data(results: list[Result]) -> list[dict]:
    """The results as JSON rows, each with its kind (:func:`load_results`
    reads them back)."""
    out = []
    for r in results:
        d = asdict(r)
        d["kind"] = type(r).__name__
        out.append(d)
    return out
