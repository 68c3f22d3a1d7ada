"""Faults during live bitmap migration: ``pyqemu check faults``.

Every scenario migrates a running writer guest (tests/guest/writer.S)
between two network namespaces over a rate-limited veth link, and breaks
the migration during the bitmap bulk phase: ``migrate_cancel``, the
destination killed, the link cut.  Then it checks what a user relies on:

* the source VM still runs, and its guest still writes;
* every migrated bitmap is bit-identical to what it would be without the
  migration attempt.  "What it would be" is observed, not guessed: each
  migrated bitmap ``bm-*`` has a twin ``ref-*`` created in the same
  transaction and left out of the migration (``block-bitmap-mapping``),
  which saw exactly the same guest writes;
* the destination, if it survived, has no half-made bitmaps;
* a retry to a fresh destination completes, with destination bitmaps
  equal to the source's at the switchover.

The cut link is detected by the kernel, not by the harness: the
namespaces retransmit only a few times (:mod:`pyqemu.machine.netns`) and
both migration sockets have TCP keep-alive, so QEMU sees the error and
fails the migration on its own.

The pytest suite runs the same functions and asserts on the results;
``pyqemu check faults`` prints them (:func:`main`).
"""

from __future__ import annotations

import signal
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from ..build.driver import build
from ..log import info
from ..machine import accel, guest, migration
from ..machine.netns import Link
from ..machine.vm import VM, Disk
from ..paths import Layout
from ..util.poll import PollTimeout, until
from ..util.results import save
from ..util.table import markdown_table
from ..util.units import GiB, KiB, MiB, TiB

GRANULARITIES = {"4k": 4 * KiB, "64k": 64 * KiB, "1m": MiB}
DISK = 1 * TiB
#: A range set in every bitmap before the migration: 2.1 MiB of bitmap
#: data, about a second of bulk phase at the scenarios' 2 MiB/s.  Live
#: mode sends a run of clear chunks as one chunk, so the writer guest's
#: scattered writes alone leave a bulk phase of a few KiB, over before
#: any fault could land in it.
DENSE = (512 * GiB, 64 * GiB)
SCENARIOS = ("cancel", "kill-destination", "cut-link")
#: How a stock QEMU ends when the destination dies during bitmap
#: postcopy: migration_detect_error() pauses a postcopy whose stream
#: breaks (waiting for a recovery), and the source VM, stopped at the
#: switch to postcopy, stays stopped.  The series must not change it.
POSTCOPY_FAILURE = ("postcopy-paused", "finish-migrate")


@dataclass
class FaultResult:
    scenario: str
    outcome: str              # how the broken migration ended
    source_running: bool      # source VM running, guest still writing
    bitmaps_intact: bool      # every bm-* equals its ref-* twin
    destination: str          # what is left on the destination
    retry: str                # how the retry went
    ok: bool


def disks() -> list[Disk]:
    return [Disk("disk0", DISK, device="ide-hd,bus=ide.0,unit=1")]


def mapping() -> list[dict]:
    """Migrate the bm-* bitmaps only: the ref-* twins stay behind."""
    return [{"node-name": "disk0", "alias": "disk0",
             "bitmaps": [{"name": f"bm-{g}", "alias": f"bm-{g}"}
                         for g in GRANULARITIES]}]


def caps(live: bool = True) -> dict[str, bool]:
    """The scenarios' capabilities.  With the return path the source waits
    for the destination to confirm: without it, a source whose last bytes
    fit in its socket buffers reports 'completed' over a link that is
    already cut."""
    caps = {"dirty-bitmaps": True, "events": True, "return-path": True}
    if live:
        caps["dirty-bitmaps-live"] = True
    return caps


def add_twin_bitmaps(src: VM) -> None:
    """bm-X and ref-X, created atomically so they see the same writes."""
    actions = []
    for g, gran in GRANULARITIES.items():
        for prefix in ("bm", "ref"):
            actions.append({"type": "block-dirty-bitmap-add", "data": {
                "node": "disk0", "name": f"{prefix}-{g}",
                "granularity": gran}})
    src.cmd("transaction", actions=actions)


def twins_equal(src: VM) -> bool:
    """Stop the guest, compare every bm-X with ref-X, let it go on."""
    src.cmd("stop")
    try:
        return all(src.sha256("disk0", f"bm-{g}") ==
                   src.sha256("disk0", f"ref-{g}") for g in GRANULARITIES)
    finally:
        src.cmd("cont")


def destination(layout: Layout, link: Link, workdir: Path, name: str) -> VM:
    """A paused destination listening on the link; never leaked, even if
    its set-up fails half-way."""
    dst = VM(layout, name, disks(), "patched", workdir, incoming=True,
             boot=guest.boot_disk(layout, workdir, name),
             wrapper=link.wrapper("b"), extra_args=("-S",))
    dst.launch()
    try:
        migration.set_capabilities(dst, caps(live=False))
        migration.set_parameters(dst, {"block-bitmap-mapping": mapping()})
        dst.cmd("migrate-incoming", channels=link.channels(),
                **{"exit-on-error": False})
    except BaseException:
        dst.shutdown()
        raise
    return dst


def start(src: VM, link: Link, bandwidth: int, pause: bool = True) -> None:
    """Start migrating; with *pause*, the source stops at pre-switchover.

    The faulted migration does not pause: a stream that fails while the
    source waits at pre-switchover leaves it stopped (finish-migrate) until
    someone sends migrate-continue or migrate_cancel, which is QEMU's
    behaviour with or without the series and not what is tested here."""
    migration.set_capabilities(src, dict(caps(),
                                         **{"pause-before-switchover": pause}))
    migration.set_parameters(src, {"block-bitmap-mapping": mapping(),
                                   "max-bandwidth": bandwidth,
                                   "downtime-limit": 300})
    src.cmd("migrate", channels=link.channels())


def wait_bulk_phase(src: VM) -> None:
    """Until some bitmap data is out and much is still to go."""
    until(lambda: migration.query(src).get("dirty-bitmaps", {}),
          lambda bm: bm.get("transferred", 0) > 64 * KiB and
          bm.get("remaining", 0) > MiB, 60, "the bitmap bulk phase",
          interval=0.02)


def _killed(dst: VM) -> str:
    """What is left of a destination this scenario killed: checked, not
    assumed."""
    end = dst.kill()
    if not dst.is_running() and end.code == -signal.SIGKILL:
        return "process gone"
    return f"process still there or ended otherwise (exit {end.code})"


def _destination_leftovers(dst: VM) -> str:
    """What a surviving destination holds once its migration failed."""
    try:
        migration.wait(dst, ("failed",), 60)
    except migration.MigrationTimeout as e:
        return f"migration not failed: {e}"
    names = [k[1] for k in dst.bitmaps()]
    return "no bitmaps" if not names else "half-made: " + ", ".join(names)


def complete(src: VM, dst: VM, link: Link) -> str:
    """A fast migration to *dst*, checked at the switchover."""
    start(src, link, GiB)
    migration.wait(src, ("pre-switchover",), 120)
    at_switchover = {g: src.sha256("disk0", f"bm-{g}") for g in GRANULARITIES}
    migration.switch_over(src, dst)
    got = {g: dst.sha256("disk0", f"bm-{g}") for g in GRANULARITIES}
    if got != at_switchover:
        return "completed, bitmaps DIFFER"
    dst.cmd("cont")
    guest.wait_progress(dst.serial_log, guest.progress(dst.serial_log))
    return "completed, bitmaps equal"


def retry_to_fresh(layout: Layout, src: VM, link: Link, workdir: Path) -> str:
    """After the fault: a migration to a fresh destination."""
    dst = destination(layout, link, workdir, "dst-retry")
    try:
        result = complete(src, dst, link)
    except Exception as e:      # reported, not raised: it is a result
        result = f"failed: {e}"
    finally:
        problem = dst.shutdown().problem()
    return f"destination ended badly: {problem}" if problem else result


def _break(scenario: str, src: VM, dst: VM, link: Link) -> tuple[str, str]:
    """Inject the fault; (how the source's migration ended, what is left
    on the destination)."""
    if scenario == "cancel":
        src.cmd("migrate_cancel")
    elif scenario == "kill-destination":
        leftovers = _killed(dst)
    else:
        link.cut()      # nobody cancels: QEMU must notice by itself
    try:
        info = migration.wait(src, ("cancelled", "failed"), 60)
        outcome = info["status"]
    except migration.MigrationTimeout as e:
        outcome = f"stuck: {e}"
    if scenario == "cut-link":
        link.restore()
    if scenario != "kill-destination":
        leftovers = _destination_leftovers(dst)
    return outcome, leftovers


def source_runs(src: VM) -> bool:
    """The source VM is running and its guest still writes.

    The migration's status turns 'failed' before its cleanup restarts a
    VM that was stopped for the switchover (finish-migrate): wait for the
    run state to settle first."""
    try:
        state = until(lambda: migration.run_state(src),
                      lambda st: st != "finish-migrate", 30,
                      "the source to leave finish-migrate")
    except PollTimeout:
        return False
    before = guest.progress(src.serial_log)
    if state != "running":
        return False
    try:
        guest.wait_progress(src.serial_log, before, 10)
    except guest.GuestStuck:
        return False
    return True


def run(layout: Layout, scenario: str,
        workdir: Path | None = None) -> FaultResult:
    """One fault scenario, end to end; never raises for the fault itself."""
    if scenario not in SCENARIOS:
        raise ValueError(f"unknown scenario {scenario!r}; known: {SCENARIOS}")
    with tempfile.TemporaryDirectory(prefix="pq-f-", dir="/tmp") as tmp:
        workdir = workdir or Path(tmp)
        with Link(rate="100mbit") as link:
            src = VM(layout, "src", disks(), "patched", workdir,
                     boot=guest.boot_disk(layout, workdir, "src"),
                     wrapper=link.wrapper("a"))
            with src:
                add_twin_bitmaps(src)
                src.dirty("disk0", *DENSE)
                guest.wait_progress(src.serial_log, 64)
                dst = destination(layout, link, workdir, "dst")
                try:
                    start(src, link, 2 * MiB, pause=False)
                    wait_bulk_phase(src)
                    outcome, leftovers = _break(scenario, src, dst, link)
                    running = source_runs(src)
                    intact = twins_equal(src)
                finally:
                    dst_problem = dst.shutdown().problem()
                if dst_problem:
                    leftovers = f"destination ended badly: {dst_problem}"
                retry = retry_to_fresh(layout, src, link, workdir)
    ok = (outcome in ("cancelled", "failed") and running and intact and
          leftovers in ("no bitmaps", "process gone") and
          retry == "completed, bitmaps equal")
    return FaultResult(scenario, outcome, running, intact, leftovers,
                       retry, ok)


#: The postcopy-failure runs of ``check faults``: (flavour, live).
POSTCOPY_RUNS = (("stock", False), ("patched", False), ("patched", True))
#: disk bytes dirtied before the live postcopy-failure scenario
POSTCOPY_DENSE = 128 * GiB


def postcopy_failure(layout: Layout, flavour: str, live: bool,
                     workdir: Path | None = None) -> tuple[str, str]:
    """The destination dies during bitmap postcopy: (migration status,
    source run state) once the source settles.  Stock ends in
    POSTCOPY_FAILURE, and the series must not change that."""
    disks = [Disk("disk0", 4 * TiB)]
    with tempfile.TemporaryDirectory(prefix="pq-p-", dir="/tmp") as tmp:
        workdir = workdir or Path(tmp)
        src = VM(layout, "src", disks, flavour, workdir)
        dst = VM(layout, "dst", disks, flavour, workdir, incoming=True)
        with src, dst:
            src.cmd("block-dirty-bitmap-add", node="disk0", name="bm",
                    granularity=4 * KiB)
            for i in range(64):
                src.write("disk0", i * 64 * GiB, 64 * KiB)
            if live:
                # a sparse bitmap is sent live in a few coalesced chunks and
                # the migration can complete before migrate-start-postcopy
                # (seen under load): 4 MiB of set bits keep the bulk phase
                # going for about a second at 4 MiB/s
                src.dirty("disk0", 0, POSTCOPY_DENSE)
            # Bitmap postcopy ignores max-bandwidth: without its own
            # limit it may be over before the destination is killed
            migration.start(src, dst, f"unix:{workdir}/m.sock", caps(live),
                            {"max-bandwidth": 4 * MiB,
                             "max-postcopy-bandwidth": 256 * KiB},
                            dst_caps=caps(live=False))
            migration.wait(src, ("active",), 30)
            src.cmd("migrate-start-postcopy")
            migration.wait(src, ("postcopy-active",), 30)
            dst.kill()
            info = migration.wait_while(src, "postcopy-active", 30)
            return info.get("status", "?"), migration.run_state(src)


def main(layout: Layout) -> int:
    """``pyqemu check faults``: every scenario and the postcopy failure on
    each build, one line each as it ends, then a table, saved under
    ``<cache>/bench/faults/``; exit 1 if anything is not as it must be.
    The result line names the guests' accelerator (every VM here takes
    the host's, :mod:`pyqemu.machine.accel`)."""
    build(layout)
    host = accel.detect()
    info(f"faults: the guests run on {host}")
    rows, ok = [], True
    total = len(SCENARIOS) + len(POSTCOPY_RUNS)
    for n, scenario in enumerate(SCENARIOS, 1):
        start = time.monotonic()
        r = run(layout, scenario)
        ok &= r.ok
        info(f"fault {n}/{total}, {scenario}: "
             f"{'as it must be' if r.ok else 'NOT as it must be'} "
             f"({r.outcome}; {time.monotonic() - start:.0f} s)")
        rows.append((r.scenario, r.outcome,
                     "yes" if r.source_running else "NO",
                     "yes" if r.bitmaps_intact else "NO", r.destination,
                     r.retry))
    for n, (flavour, live) in enumerate(POSTCOPY_RUNS, len(SCENARIOS) + 1):
        start = time.monotonic()
        name = (f"postcopy, destination killed ({flavour}"
                f"{', live' if live else ''})")
        got = postcopy_failure(layout, flavour, live)
        same = got == POSTCOPY_FAILURE
        ok &= same
        info(f"fault {n}/{total}, {name}: "
             f"{'as stock must end' if same else 'DIFFERS from stock'} "
             f"({'/'.join(got)}; {time.monotonic() - start:.0f} s)")
        rows.append((name, "/".join(got), "-", "-",
                     "-", "as stock must end" if same else
                     f"DIFFERS from {'/'.join(POSTCOPY_FAILURE)}"))
    from . import links  # stalls and slow links (links imports us)
    for how in links.STALLS:
        for end in links.ENDS:
            st = links.stall(layout, how, end)
            good = (st.outcome in ("cancelled", "failed") and
                    st.slowest < 1 and st.source_running and
                    st.bitmaps_intact and st.retry.endswith("bitmaps equal"))
            ok &= good
            info(f"stall, {how}, then {end}: "
                 f"{'as it must be' if good else 'NOT as it must be'} "
                 f"(query-migrate median {st.query_median * 1000:.1f} ms, "
                 f"slowest answer {st.slowest * 1000:.0f} ms, ended "
                 f"{st.end_s * 1000:.0f} ms after the {end})")
            rows.append((f"destination stalls ({how}), then {end}",
                         f"{st.outcome} after {st.end_s * 1000:.0f} ms; "
                         f"monitor median {st.query_median * 1000:.1f} ms, "
                         f"max {st.slowest * 1000:.0f} ms",
                         "yes" if st.source_running else "NO",
                         "yes" if st.bitmaps_intact else "NO", "-", st.retry))
    for setting in links.SLOW:
        sr = links.slow(layout, setting)
        good = sr.bitmaps_equal and sr.query_max_s < 1
        ok &= good
        detail = (f"downtime {sr.downtime_ms:.1f} ms"
                  if sr.outcome == "completed" else sr.outcome)
        info(f"slow link, {links.SLOW[setting]}: {detail}; "
             f"{'as it must be' if good else 'NOT as it must be'}")
        rows.append((f"slow link: {links.SLOW[setting]}", detail,
                     "yes" if sr.source_running else "NO",
                     "yes" if sr.bitmaps_equal else "NO", "-", "-"))
    status, kept = links.postcopy_recovery(layout)
    ok &= status == "recovered" and not kept.startswith("DIFFER")
    info(f"live postcopy paused and recovered: {status}; bitmaps {kept}")
    rows.append(("live postcopy, migrate-pause, then recovery", status,
                 "-", kept, "-", "-"))
    header = ("scenario", "outcome", "source running", "bitmaps intact",
              "destination", "retry")
    text = markdown_table(header, rows)
    out = save(layout, "faults", text,
               {"ok": ok, "rows": [dict(zip(header, r, strict=True))
                                       for r in rows]})
    print(text)
    print(f"wrote {out / 'results.md'}\nwrote {out / 'results.json'}")
    print("result: " + ("every fault ended as it must" if ok else
                        "FAILED: a fault did not end as it must (see the "
                        "table)") +
          f" ({len(rows)} scenarios, guests on {host.label})")
    return 0 if ok else 1
