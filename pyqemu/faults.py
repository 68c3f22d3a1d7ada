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

The pytest suite runs the same functions and asserts on the results.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from . import guest, migration
from .netns import Link
from .vm import VM, Disk

KiB, MiB, GiB, TiB = 1 << 10, 1 << 20, 1 << 30, 1 << 40
GRANULARITIES = {"4k": 4 * KiB, "64k": 64 * KiB, "1m": MiB}
DISK = 1 * TiB
PORT = 4444
SCENARIOS = ("cancel", "kill-destination", "cut-link")


@dataclass
class FaultResult:
    scenario: str
    outcome: str              # how the broken migration ended
    source_running: bool      # source VM running, guest still writing
    bitmaps_intact: bool      # every bm-* equals its ref-* twin
    destination: str          # what is left on the destination
    retry: str                # how the retry went
    ok: bool


def _disks() -> list[Disk]:
    return [Disk("disk0", DISK, device="ide-hd,bus=ide.0,unit=1")]


def _mapping() -> list[dict]:
    """Migrate the bm-* bitmaps only: the ref-* twins stay behind."""
    return [{"node-name": "disk0", "alias": "disk0",
             "bitmaps": [{"name": f"bm-{g}", "alias": f"bm-{g}"}
                         for g in GRANULARITIES]}]


def _caps(live: bool = True) -> dict[str, bool]:
    caps = {"dirty-bitmaps": True, "events": True}
    if live:
        caps["dirty-bitmaps-live"] = True
    return caps


def _add_twin_bitmaps(src: VM) -> None:
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


def _destination(link: Link, workdir: Path, name: str) -> VM:
    dst = VM(name, _disks(), "patched", workdir, incoming=True,
             boot=guest.boot_disk(workdir, name), wrapper=link.wrapper("b"),
             extra_args=("-S",))
    dst.launch()
    migration.set_capabilities(dst, _caps(live=False))
    migration.set_parameters(dst, {"block-bitmap-mapping": _mapping()})
    dst.cmd("migrate-incoming", uri=f"tcp:{link.addr['b']}:{PORT}",
            **{"exit-on-error": False})
    return dst


def _start(src: VM, link: Link, bandwidth: int) -> None:
    migration.set_capabilities(src, dict(_caps(),
                                         **{"pause-before-switchover": True}))
    migration.set_parameters(src, {"block-bitmap-mapping": _mapping(),
                                   "max-bandwidth": bandwidth,
                                   "downtime-limit": 300})
    src.cmd("migrate", uri=f"tcp:{link.addr['b']}:{PORT}")


def _wait_bulk_phase(src: VM) -> None:
    """Until some bitmap data is out and much is still to go."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        bm = migration.query(src).get("dirty-bitmaps", {})
        if bm.get("transferred", 0) > 64 * KiB and \
                bm.get("remaining", 0) > MiB:
            return
        time.sleep(0.02)
    raise TimeoutError("the bitmap bulk phase never got going")


def _destination_leftovers(dst: VM) -> str:
    """What a surviving destination holds once its migration failed."""
    try:
        migration.wait(dst, ("failed",), 60)
    except migration.MigrationTimeout as e:
        return f"migration not failed: {e}"
    names = [k[1] for k in dst.bitmaps()]
    return "no bitmaps" if not names else "half-made: " + ", ".join(names)


def _retry(src: VM, link: Link, workdir: Path) -> str:
    dst = _destination(link, workdir, "dst-retry")
    try:
        _start(src, link, 1 << 30)
        migration.wait(src, ("pre-switchover",), 120)
        at_switchover = {g: src.sha256("disk0", f"bm-{g}")
                         for g in GRANULARITIES}
        src.cmd("migrate-continue", state="pre-switchover")
        migration.wait(src, ("completed",), 60)
        migration.wait(dst, ("completed",), 60)
        got = {g: dst.sha256("disk0", f"bm-{g}") for g in GRANULARITIES}
        if got != at_switchover:
            return "completed, bitmaps DIFFER"
        dst.cmd("cont")
        guest.wait_progress(dst.serial_log, guest.progress(dst.serial_log))
        return "completed, bitmaps equal"
    except Exception as e:      # reported, not raised: it is a result
        return f"failed: {e}"
    finally:
        dst.shutdown()


def run(scenario: str, workdir: Path | None = None) -> FaultResult:
    """One fault scenario, end to end; never raises for the fault itself."""
    if scenario not in SCENARIOS:
        raise ValueError(f"unknown scenario {scenario!r}; known: {SCENARIOS}")
    own = workdir is None
    workdir = workdir or Path(tempfile.mkdtemp(prefix="pq-f-", dir="/tmp"))
    try:
        with Link(rate="100mbit") as link:
            src = VM("src", _disks(), "patched", workdir,
                     boot=guest.boot_disk(workdir, "src"),
                     wrapper=link.wrapper("a"))
            with src:
                _add_twin_bitmaps(src)
                guest.wait_progress(src.serial_log, 64)
                dst = _destination(link, workdir, "dst")
                try:
                    _start(src, link, 2 * MiB)
                    _wait_bulk_phase(src)
                    if scenario == "cancel":
                        src.cmd("migrate_cancel")
                    elif scenario == "kill-destination":
                        dst.machine.kill()
                    else:
                        link.cut()
                        time.sleep(2)       # the stream stalls
                        src.cmd("migrate_cancel")
                    try:
                        info = migration.wait(src, ("cancelled", "failed"),
                                              60)
                        outcome = info["status"]
                    except migration.MigrationTimeout as e:
                        outcome = f"stuck: {e}"
                    if scenario == "cut-link":
                        link.restore()
                    before = guest.progress(src.serial_log)
                    running = src.cmd("query-status")["status"] == "running"
                    try:
                        guest.wait_progress(src.serial_log, before, 10)
                    except TimeoutError:
                        running = False
                    intact = twins_equal(src)
                    leftovers = ("process gone"
                                 if scenario == "kill-destination"
                                 else _destination_leftovers(dst))
                finally:
                    dst.shutdown()
                retry = _retry(src, link, workdir)
        ok = (outcome in ("cancelled", "failed") and running and intact and
              leftovers in ("no bitmaps", "process gone") and
              retry == "completed, bitmaps equal")
        return FaultResult(scenario, outcome, running, intact, leftovers,
                           retry, ok)
    finally:
        if own:
            shutil.rmtree(workdir, ignore_errors=True)


def postcopy_failure(flavour: str, live: bool,
                     workdir: Path | None = None) -> tuple[str, str]:
    """The destination dies during bitmap postcopy: (migration status,
    source run state) once the source settles.  The series must not
    change this outcome, so tests compare stock and patched."""
    own = workdir is None
    workdir = workdir or Path(tempfile.mkdtemp(prefix="pq-p-", dir="/tmp"))
    disks = [Disk("disk0", 4 * TiB)]
    try:
        src = VM("src", disks, flavour, workdir)
        dst = VM("dst", disks, flavour, workdir, incoming=True)
        with src, dst:
            src.cmd("block-dirty-bitmap-add", node="disk0", name="bm",
                    granularity=4 * KiB)
            for i in range(64):
                src.write("disk0", i * 64 * GiB, 64 * KiB)
            migration.start(src, dst, f"unix:{workdir}/m.sock", _caps(live),
                            {"max-bandwidth": 4 * MiB},
                            dst_caps=_caps(live=False))
            migration.wait(src, ("active",), 30)
            src.cmd("migrate-start-postcopy")
            migration.wait(src, ("postcopy-active",), 30)
            dst.machine.kill()
            deadline = time.monotonic() + 30
            info = migration.query(src)
            while time.monotonic() < deadline and \
                    info.get("status") == "postcopy-active":
                time.sleep(0.05)
                info = migration.query(src)
            return info.get("status", "?"), src.cmd("query-status")["status"]
    finally:
        if own:
            shutil.rmtree(workdir, ignore_errors=True)
