"""The ways to migrate bitmaps that a reviewer will set side by side, and
one measured migration in each.

Upstream already answers "large bitmaps blow the downtime": with only
``dirty-bitmaps`` set, ``migrate-start-postcopy`` moves every bitmap to
after the switchover, while the destination already runs the guest.  So
live mode is compared with that, not only with stock precopy:

* **no bitmaps**: the floor every mode's downtime is held to;
* **stock precopy**: today's default, which sends everything in the
  downtime (and with the shared limits mostly never converges); also with
  a 20 s downtime limit, to show what it costs when allowed;
* **stock postcopy**, requested right after ``migrate`` ("as early as
  possible") and after :data:`POSTCOPY_AFTER` seconds;
* **fixes + avail-switchover-bandwidth**: the series' fixes only (the
  ``fixes`` build: pending in bytes, not bits) with
  ``avail-switchover-bandwidth`` set to the link's speed, as a careful
  operator would.  The fair baseline for "is the feature needed": the
  fixes alone let precopy converge wherever the bitmaps' serialized size
  fits in what the link carries within the downtime limit (their
  estimate cannot tell a clear chunk, which goes as its header only,
  from a full one), and only the rest needs live mode;
* **live** (the series), and **live + postcopy** after the same delay,
  for deployments that enter postcopy anyway.

What is measured per migration, and how:

* the *guest-visible downtime*: the destination's ``RESUME`` event minus
  the source's ``STOP`` event, both stamped by QEMU on the same host
  clock.  QEMU's own ``downtime`` field ends when the source has sent its
  last byte, so it misses whatever the destination still does before it
  resumes the guest; both are kept;
* *time until the bitmaps are usable* on the destination: from the
  source's ``setup`` event to the later of the destination's ``RESUME``
  and its migration ``completed`` event.  In precopy and live mode the
  bitmaps are complete before the guest resumes; in postcopy they are
  complete when the destination's incoming migration completes;
* *bitmap bytes at risk*: bitmap data the source sends after the
  postcopy switchover, when the guest already runs on the destination
  and a lost stream loses that data.  Counted from the source's
  ``send_bitmap_bits`` trace events after its ``postcopy_start`` event;
  zero by definition without a postcopy phase;
* *bitmap bytes on the wire*: the series' ``dirty-bitmaps`` statistics
  on the patched build, the trace's chunk sizes plus their framing on
  the stock and fixes builds (which have no counter);
* whether every destination bitmap ends up equal (sha256) to the
  source's.

* the bitmaps' own share of the downtime, as QEMU accounts it per
  section in its ``vmstate_downtime_save``/``_load`` trace events on
  both ends (traced everywhere: a dozen lines per migration).

The per-chunk trace is enabled only where it is needed (modes without a
counter, and postcopy modes); it writes one log line per 1 KiB chunk.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qemu.qmp import ExecuteError

from ..machine import migration
from ..machine.vm import VM, Bitmap, Disk
from ..paths import Layout
from ..util.units import KiB, MiB
from . import chunks, fill

GRANULARITY = 64 * KiB
#: When the stock "after N s" mode requests postcopy
POSTCOPY_AFTER = 1.0
#: Stock precopy that does not converge is given up after this long
STOCK_TIMEOUT = 10.0
TIMEOUT = 60.0
#: The link's speed: every mode's max-bandwidth (pyqemu.bench.compare's
#: PARAMS use it), and what a careful operator sets as
#: avail-switchover-bandwidth
LINK = 400 * MiB
#: The fixes-only mode's name (the cover letter finds it by its prefix)
FIXES = "fixes + avail-switchover-bandwidth"


@dataclass(frozen=True)
class Mode:
    name: str
    flavour: str
    bitmaps: bool = True
    live: bool = False
    #: None: never; 0: right after ``migrate``; else seconds after it
    postcopy_after: float | None = None
    #: request postcopy once live mode has sent as much as it has left to
    #: send (its own counters): a switch in the middle of the bulk phase
    postcopy_at_half: bool = False
    #: give up a migration that has not converged after this long
    timeout: float = 60.0
    #: overrides of the shared migration parameters
    params: tuple[tuple[str, Any], ...] = ()

    @property
    def postcopy(self) -> bool:
        return self.postcopy_after is not None or self.postcopy_at_half

    @property
    def counted(self) -> bool:
        """Whether query-migrate counts the bitmap bytes: only the patched
        build has that counter (the fixes stop before it)."""
        return self.flavour == "patched"

    @property
    def traced(self) -> bool:
        """Only builds without a byte counter need the per-chunk trace,
        and only a postcopy mode has bytes after the switchover to
        count."""
        return self.bitmaps and (not self.counted or self.postcopy)

    def caps(self) -> dict[str, bool]:
        if not self.bitmaps:
            return {"events": True}
        caps = {"dirty-bitmaps": True, "events": True}
        if self.live:
            caps["dirty-bitmaps-live"] = True
        return caps


MODES = (
    Mode("no bitmaps", "patched", bitmaps=False),
    Mode("stock precopy", "stock", timeout=STOCK_TIMEOUT),
    # avail-switchover-bandwidth: else the threshold follows the bandwidth
    # measured while only RAM moved, and stock never switches over
    Mode("stock precopy, 20 s allowed", "stock",
         params=(("downtime-limit", 20_000),
                 ("avail-switchover-bandwidth", LINK))),
    Mode("stock postcopy, early", "stock", postcopy_after=0),
    Mode(f"stock postcopy after {POSTCOPY_AFTER:g} s", "stock",
         postcopy_after=POSTCOPY_AFTER),
    # the link's speed: what an operator who read the documentation sets
    # (without it the threshold follows the bandwidth RAM alone reached)
    Mode(FIXES, "fixes", timeout=STOCK_TIMEOUT,
         params=(("avail-switchover-bandwidth", LINK),)),
    Mode("live", "patched", live=True),
    Mode("live + postcopy at half", "patched", live=True,
         postcopy_at_half=True),
)
BY_NAME = {m.name: m for m in MODES}


@dataclass
class Sample:
    """One migration in one mode."""

    mode: str
    size: int
    bitmaps: int
    density: str
    converged: bool
    status: str
    total_ms: int | None = None
    downtime_ms: int | None = None          # QEMU's own figure
    visible_downtime_ms: float | None = None  # dst RESUME - src STOP
    usable_ms: float | None = None          # bitmaps complete on dst
    wire: int | None = None                 # bitmap bytes on the wire
    traced_wire: int | None = None          # the same, from the trace
    at_risk: int | None = None              # bitmap bytes after switchover
    at_risk_chunks: int | None = None
    #: how long the guest ran on the destination before every bitmap was
    #: there: a fault in this window loses bitmap data
    risk_ms: float | None = None
    #: the bitmap section's own time inside the downtime, on the source
    #: (saving) and on the destination (loading), from QEMU's
    #: vmstate_downtime_* trace events
    bitmap_save_us: int | None = None
    bitmap_load_us: int | None = None
    resent_chunks: int | None = None
    postcopy: str = ""                      # what the postcopy request did
    equal: bool | None = None
    notes: list[str] = field(default_factory=list)


_TRACE_LINE = re.compile(r"\b(postcopy_start|send_bitmap_bits)\b(?!_)"
                         r"(?:.*flags: 0x([0-9a-f]+).*data_size: (\d+))?")
#: A chunk of zeroes goes out as its header only
FLAG_ZEROES = 0x02


def trace_bytes(log: Path) -> tuple[int, int, int]:
    """(all bitmap bytes, bytes after postcopy_start, chunks after it)
    from a source's trace log.  The trace gives each chunk's buffer size
    even for a chunk of zeroes, which is sent without it."""
    total = after = count = 0
    in_postcopy = False
    for line in log.read_text(errors="replace").splitlines():
        m = _TRACE_LINE.search(line)
        if not m:
            continue
        if m.group(1) == "postcopy_start":
            in_postcopy = True
            continue
        zeroes = int(m.group(2) or "0", 16) & FLAG_ZEROES
        n = chunks.ZERO_WIRE if zeroes else \
            chunks.WIRE - chunks.DATA + int(m.group(3))
        total += n
        if in_postcopy:
            after += n
            count += 1
    return total, after, count


#: The dirty bitmaps' section name in the migration stream
BITMAP_SECTION = "dirty-bitmap"
_SECTION_DOWNTIME = re.compile(
    r"vmstate_downtime_(?:save|load) .*idstr=(\S+) .*downtime=(\d+)")


def section_downtime_us(log: Path, section: str) -> int:
    """Microseconds QEMU accounts to *section* inside the downtime (its
    vmstate_downtime_save/load trace events: one per section and end)."""
    total = 0
    for line in log.read_text(errors="replace").splitlines():
        m = _SECTION_DOWNTIME.search(line)
        if m and m.group(1) == section:
            total += int(m.group(2))
    return total


def run(layout: Layout, mode: Mode, size: int, count: int, density: str,
        params: dict[str, Any], workdir: Path) -> Sample:
    """Migrate a fresh ``-machine pc`` VM (on the host's accelerator, see
    :mod:`pyqemu.machine.accel`) with a ``null-co`` disk of *size* and
    *count* bitmaps filled to *density*, in *mode*."""
    bitmaps = tuple(Bitmap(f"bm{i}", GRANULARITY) for i in range(count)) \
        if mode.bitmaps else ()
    disk = Disk("disk0", size, bitmaps=bitmaps)
    d = workdir / f"{len(list(workdir.iterdir()))}"
    d.mkdir()
    trace_log, dst_log = d / "trace.log", d / "dst-trace.log"
    events = d / "events"
    # QEMU's own per-section downtime accounting, on both ends: what the
    # bitmaps cost inside the downtime, as opposed to everything else
    events.write_text("vmstate_downtime_save\nvmstate_downtime_load\n" +
                      ("postcopy_start\nsend_bitmap_bits\n"
                       if mode.traced else ""))
    extra = ("-trace", f"events={events},file={trace_log}")
    dst_extra = ("-trace", f"events={events},file={dst_log}")
    params = dict(params, **dict(mode.params))
    if mode.postcopy:
        # bitmap postcopy ignores max-bandwidth: same limit for fairness
        params["max-postcopy-bandwidth"] = params["max-bandwidth"]
    sample = Sample(mode.name, size, count if mode.bitmaps else 0, density,
                    False, "?")
    src = VM(layout, "src", [disk], mode.flavour, d, extra_args=extra)
    dst = VM(layout, "dst", [disk], mode.flavour, d, incoming=True,
             extra_args=dst_extra)
    with src, dst:
        src.add_bitmaps()
        if mode.bitmaps:
            fill.fill(src, disk, density)
        before = src.all_sha256()
        src.drain_events()
        dst.drain_events()
        caps = mode.caps()
        migration.start(src, dst, f"unix:{d}/m.sock", caps, params,
                        dst_caps={k: v for k, v in caps.items()
                                  if k != "dirty-bitmaps-live"})
        _drive(src, dst, mode, sample)
        if sample.converged:
            _finish(src, dst, before, sample)
    if mode.traced and trace_log.exists():
        total, after, chunks = trace_bytes(trace_log)
        sample.traced_wire = total
        if not mode.counted:
            sample.wire = total
        if mode.postcopy:
            sample.at_risk, sample.at_risk_chunks = after, chunks
    if sample.converged and mode.bitmaps and sample.postcopy != "entered":
        # the two overlap in time (the destination loads what the source
        # sends), so they are kept apart rather than added
        sample.bitmap_save_us, sample.bitmap_load_us = (
            section_downtime_us(log, BITMAP_SECTION) if log.exists()
            else None for log in (trace_log, dst_log))
    if sample.at_risk is None and sample.converged:
        sample.at_risk, sample.at_risk_chunks = 0, 0
    return sample


def _drive(src: VM, dst: VM, mode: Mode, sample: Sample) -> None:
    """Poll the source until the migration ends; request postcopy on
    time.  A migration that does not converge in time is cancelled."""
    t0 = time.monotonic()
    timeout = mode.timeout
    asked = not mode.postcopy
    info: dict = {}
    while True:
        if mode.postcopy_at_half:
            bm = info.get("dirty-bitmaps") or {}
            due = bm.get("transferred", 0) >= bm.get("remaining", 1) > 0
        else:
            due = time.monotonic() - t0 >= (mode.postcopy_after or 0)
        if not asked and due:
            asked = True
            try:
                src.cmd("migrate-start-postcopy")
                sample.postcopy = "requested"
            except ExecuteError as e:
                sample.postcopy = f"refused: {e}"
        info = migration.query(src)
        status = info.get("status", "?")
        if status in migration.TERMINAL:
            break
        if time.monotonic() - t0 > timeout:
            # a migration that completes in the race with the cancel is
            # measured like any other
            info = migration.cancel(src, dst)
            status = str(info.get("status"))
            if status != "completed":
                sample.status = f"not converged in {timeout:g} s"
                return
            break
        time.sleep(0.01 if not asked else 0.05)
    sample.status = status
    sample.converged = status == "completed"
    sample.total_ms = info.get("total-time")
    sample.downtime_ms = info.get("downtime")
    bm = info.get("dirty-bitmaps") or {}
    if bm:
        sample.wire = bm.get("transferred")
        sample.resent_chunks = bm.get("resent-chunks")


def _finish(src: VM, dst: VM, before: dict, sample: Sample) -> None:
    """Wait for the destination, then read the events and the bitmaps."""
    migration.wait(dst, ("completed",), TIMEOUT)
    migration.wait_destination_running(dst)
    src_events = src.drain_events()
    dst_events = dst.drain_events()
    if sample.postcopy == "requested":
        # the source's own event says whether it switched to postcopy;
        # polling can miss a postcopy phase shorter than its interval
        entered = migration.first_event(src_events, "MIGRATION",
                                        "postcopy-active")
        sample.postcopy = ("entered" if entered is not None else
                           "lost the race: completed in precopy")
    resume = migration.first_event(dst_events, "RESUME")
    setup = migration.first_event(src_events, "MIGRATION", "setup")
    done = migration.first_event(dst_events, "MIGRATION", "completed")
    sample.visible_downtime_ms = migration.visible_downtime_ms(src_events,
                                                               dst_events)
    if sample.bitmaps and setup is not None and resume is not None \
            and done is not None:
        sample.usable_ms = (max(resume, done) - setup) * 1000
        sample.risk_ms = max(done - resume, 0.0) * 1000 \
            if sample.postcopy == "entered" else 0.0
    after = dst.all_sha256()
    sample.equal = after == before if sample.bitmaps else None
    if sample.bitmaps and len(after) != sample.bitmaps:
        sample.notes.append(f"{len(after)} of {sample.bitmaps} bitmaps "
                            "on the destination")
