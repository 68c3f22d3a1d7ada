"""What a fault *after* the switchover costs: bitmap postcopy vs live mode.

A maintainer's question: "bitmap postcopy already copes with large
bitmaps; why a live mode?"  Upstream's answer is the worst case: with
postcopy the bitmaps are sent after the switchover, while the destination
already runs, so a fault in that window leaves no complete bitmap on
either side.  Live mode sends them during precopy; at the switchover the
destination already holds them.  This module measures both.

Modes (same disk, bitmaps and bandwidth):

* ``stock postcopy``: stock QEMU both ends, capability ``dirty-bitmaps``
  and ``migrate-start-postcopy`` as soon as the migration is active;
  ``max-postcopy-bandwidth`` limits the bitmap stream (postcopy ignores
  ``max-bandwidth``), which keeps the post-switchover window open for
  seconds;
* ``patched live``: the series both ends, ``dirty-bitmaps-live`` on the
  source, ``max-bandwidth`` the same value; a normal completion.

Faults, injected as soon as the destination VM runs: the destination
killed, the source killed, the link between them cut.  Every bitmap is
fully dirty, so every chunk is real data on the wire.  Per case the result
says how each side's migration and VM ended, which bitmaps are where and
whether they equal the source's at the switchover, and how many bitmap
bytes were still to cross the link at the switchover.
"""

from __future__ import annotations

import contextlib
import re
import signal
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from ..log import info, warn
from ..machine import migration
from ..machine.netns import Link
from ..machine.vm import VM, Bitmap, Disk, MachineError
from ..paths import Layout
from ..util.poll import PollTimeout, until
from ..util.table import markdown_table
from ..util.units import KiB, MiB, TiB, fmt_bytes, fmt_size
from . import chunks
from .fill import fill as fill_bitmaps

MODES = ("stock postcopy", "patched live")
#: "none" is the control: the same migration, not broken, must leave
#: every bitmap on the destination in both modes, or the losses below
#: would prove nothing.
FAULTS = ("none", "kill-destination", "kill-source", "cut-link")
#: The migration states in which a side is still migrating: a fault is
#: over for a side once it left them (or the deadline passed).
MIGRATING = ("setup", "active", "device", "pre-switchover",
             "postcopy-active", "postcopy-device", "postcopy-recover",
             "postcopy-recover-setup", "wait-unplug", "cancelling")
#: How long a survivor gets to notice the fault (TCP keep-alive gives up
#: after about 4 s, retransmissions after about 6 s: see netns).
SETTLE = 30.0
#: What the fill's qemu-io prints into the log: not QEMU speaking.
QEMU_IO = re.compile(r"^(wrote|read) \d+/\d+ bytes|.* ops/sec\)$")
#: How long a survivor gets to exit after ``quit``.
QUIT_TIMEOUT = 15


@dataclass(frozen=True)
class Setup:
    """Sizes of one comparison.  The default: 4 bitmaps of 16 TiB at
    64 KiB granularity, 32 MiB each serialized, at 32 MiB/s: about four
    seconds of bitmap stream, after the switchover for postcopy."""

    size: int = 16 * TiB
    bitmaps: int = 4
    granularity: int = 64 * KiB
    bandwidth: int = 32 * MiB

    def names(self) -> list[str]:
        return [f"bm{i}" for i in range(self.bitmaps)]

    def disks(self, with_bitmaps: bool) -> list[Disk]:
        bitmaps = tuple(Bitmap(n, self.granularity) for n in self.names()) \
            if with_bitmaps else ()
        return [Disk("disk0", self.size, bitmaps=bitmaps)]

    def serialized(self) -> int:
        """Bytes of bitmap data: one bit per granule, whole 64-bit words."""
        return chunks.serialized_size(self.disks(True)[0])


@dataclass
class Side:
    """How one end finished."""

    migration: str       # its last query-migrate status, or "-" if gone
    state: str           # its run state (query-status), or "-" if gone
    process: str         # "killed (fault)", "alive", "exited N", a problem
    #: bitmap name -> "equal", "DIFFERS", "busy+equal", "absent", ...
    bitmaps: dict[str, str] = field(default_factory=dict)
    #: what QEMU reported on stderr (error_report lines), in order
    said: list[str] = field(default_factory=list)
    #: the answer to migrate_cancel on a side left stuck migrating
    cancel: str | None = None
    #: a source whose destination died, told to ``cont``: what it says
    resume: str | None = None

    @property
    def runs(self) -> bool:
        return self.state == "running"


@dataclass
class SafetyResult:
    mode: str
    fault: str
    run: int
    #: bitmap bytes that had to cross the link after the switchover
    after_switchover: int | None
    #: of those, still not sent when the fault hit (None: not measurable)
    unsent_at_fault: int | None
    source: Side
    destination: Side
    #: the case itself broke before its fault (a set-up deadline passed)
    error: str | None = None

    @property
    def vm_runs_on(self) -> str:
        where = [n for n, s in (("source", self.source),
                                ("destination", self.destination)) if s.runs]
        return " and ".join(where) or "NOWHERE"


def fill_all(vm: VM) -> None:
    """Every bitmap on *vm*'s disks fully dirty (:mod:`.fill`): every
    chunk is real data on the wire, the worst case for postcopy."""
    for disk in vm.disks:
        if disk.bitmaps:
            fill_bitmaps(vm, disk, "full")


@contextlib.contextmanager
def _owned(vm: VM) -> Iterator[VM]:
    """A launched VM that is gone after the block, whatever happened; how
    it ended stays in ``vm.exit`` for the report (VM's own ``with`` would
    raise on a crash, and the report must show it instead)."""
    vm.launch()
    try:
        yield vm
    finally:
        vm.shutdown()


def _caps(mode: str, source: bool) -> dict[str, bool]:
    """Same capabilities in both modes but live mode's own; the return path
    lets each side learn of the other's failure."""
    caps = {"dirty-bitmaps": True, "events": True, "return-path": True}
    if mode == "patched live" and source:
        caps["dirty-bitmaps-live"] = True
    return caps


def _start(mode: str, setup: Setup, src: VM, dst: VM, link: Link) -> None:
    """Both ends configured, the migration started; for postcopy, switched
    to postcopy as soon as it is active (the source stops and the
    destination starts once RAM is through)."""
    migration.set_capabilities(dst, _caps(mode, source=False))
    migration.set_capabilities(src, _caps(mode, source=True))
    migration.set_parameters(src, {
        "max-bandwidth": setup.bandwidth,
        "max-postcopy-bandwidth": setup.bandwidth,
        "downtime-limit": 300})
    # exit-on-error off: a destination whose migration fails stays, so
    # that what it holds can be looked at
    dst.cmd("migrate-incoming", channels=link.channels(),
            **{"exit-on-error": False})
    src.cmd("migrate", channels=link.channels())
    if mode == "stock postcopy":
        migration.wait(src, ("active",), 30, interval=0.01)
        src.cmd("migrate-start-postcopy")


def _transferred(vm: VM) -> int:
    """Bytes of the migration stream sent so far (all of it, not only RAM:
    QEMU counts the whole stream in ram.transferred)."""
    return int(migration.query(vm).get("ram", {}).get("transferred", 0))


def _settle(vm: VM) -> str:
    """The migration status of a survivor once it stopped migrating (or
    what it still is after SETTLE seconds, marked as such)."""
    try:
        info_ = until(lambda: migration.query(vm),
                      lambda i: i.get("status") not in MIGRATING, SETTLE,
                      f"{vm.name}'s migration to end", interval=0.1)
    except PollTimeout:
        return f"{migration.query(vm).get('status')} after {SETTLE:g} s"
    return str(info_.get("status"))


def _bitmaps(vm: VM, expected: dict[str, str]) -> dict[str, str]:
    """Each expected bitmap on *vm*: absent, or equal/DIFFERS to the
    source's at the switchover, prefixed with its flags if any."""
    present = {name: b for (node, name), b in vm.bitmaps().items()
               if node == "disk0"}
    out = {}
    for name, sha in expected.items():
        b = present.get(name)
        if b is None:
            out[name] = "absent"
            continue
        flags = [f for f in ("busy", "inconsistent") if b.get(f)]
        same = "equal" if vm.sha256("disk0", name) == sha else "DIFFERS"
        out[name] = "+".join(flags + [same])
    return out


def _process(vm: VM, faulted: bool) -> str:
    """How the process ended.  A survivor is ended the way a user ends it,
    with ``quit``, and must exit 0: a QEMU that aborts or hangs on its way
    out (busy bitmaps, a paused postcopy) shows up here, where a kill would
    hide it."""
    if faulted or vm.exit is not None or not vm.is_running():
        end = vm.shutdown()
        problem = end.problem()
        if problem:
            return problem
        if faulted:
            return "killed (fault)" if end.code == -signal.SIGKILL \
                else f"fault kill, exited {end.code}"
        return f"exited {end.code} on its own"
    try:
        vm.quit(timeout=QUIT_TIMEOUT)
        return "quit: exit 0"
    except MachineError as e:
        return f"quit: {e}"
    except Exception as e:      # qemu.machine gave up waiting and killed it
        vm.shutdown()
        return f"quit: no exit within {QUIT_TIMEOUT} s, killed " \
               f"({type(e).__name__})"


def _said(vm: VM) -> list[str]:
    """QEMU's own stderr lines from an ended process, each once, without
    the program name: a stock destination says there, and nowhere else,
    that it lost the bitmaps."""
    lines: list[str] = []
    for ln in (vm.exit.log if vm.exit else "").splitlines():
        ln = ln.strip()
        if ln.startswith("qemu-system"):
            ln = ln.split(": ", 1)[-1]
        if ln and not QEMU_IO.match(ln) and ln not in lines:
            lines.append(ln)
    return lines


def _resume(vm: VM, expected: dict[str, str]) -> str:
    """``cont`` on a source whose destination died: what an administrator
    tries to get the VM back, and whether its bitmaps come back with it."""
    try:
        vm.cmd("cont")
    except Exception as e:
        return f"refused: {e}"
    try:
        state = until(lambda: migration.run_state(vm),
                      lambda s: s == "running", 10, f"{vm.name} to run")
    except PollTimeout as e:
        return f"accepted, but {e}"
    now = Side("", state, "", _bitmaps(vm, expected))
    return f"{state}, bitmaps: {_summary(now)}"


def _survivor(vm: VM, expected: dict[str, str], killed: bool,
              resume: bool = False) -> Side:
    """What is left on one side after the fault: its migration once it
    stopped migrating, its VM, its bitmaps; then (with *resume*) whether
    ``cont`` brings the VM back, and how its process ends."""
    if killed or not vm.is_running():
        process = _process(vm, killed)
        return Side("-", "-", process, said=_said(vm))
    status = _settle(vm)
    # a failed migration restarts a source stopped for the switchover
    # only after its status turned: let the run state settle too
    try:
        state = until(lambda: migration.run_state(vm),
                      lambda s: s != "finish-migrate", 10,
                      f"{vm.name} to leave finish-migrate")
    except PollTimeout:
        state = "finish-migrate"
    bitmaps = _bitmaps(vm, expected)
    cancel = None
    if status == "postcopy-paused":
        # what a management application would try, to get its VM and
        # bitmaps back: stock refuses it (see the report)
        try:
            vm.cmd("migrate_cancel")
            cancel = "accepted"
        except Exception as e:
            cancel = f"refused: {e}"
    resumed = _resume(vm, expected) if resume else None
    return Side(status, state, _process(vm, False), bitmaps, _said(vm),
                cancel, resumed)


def run_case(layout: Layout, mode: str, fault: str, setup: Setup,
             workdir: Path, run: int = 0,
             fill: Callable[[VM], None] = fill_all) -> SafetyResult:
    """One (mode, fault) end to end; the fault is the result, never an
    exception.  Both QEMUs live in namespaces joined by a veth: the cut is
    a cut of that link, and nothing leaves it."""
    if mode not in MODES or fault not in FAULTS:
        raise ValueError(f"unknown mode/fault {mode!r}/{fault!r}")
    flavour = "stock" if mode == "stock postcopy" else "patched"
    with Link(rate=None) as link:
        src = VM(layout, "src", setup.disks(True), flavour, workdir,
                 wrapper=link.wrapper("a"))
        dst = VM(layout, "dst", setup.disks(False), flavour, workdir,
                 incoming=True, wrapper=link.wrapper("b"))
        with _owned(src), _owned(dst):
            src.add_bitmaps()
            fill(src)
            _start(mode, setup, src, dst, link)
            # the switchover is done once the destination runs; polled
            # closely, so that the fault comes right after it
            migration.wait_destination_running(dst, 120, interval=0.01)
            at_switchover = _transferred(src)
            bm_info = migration.query(src).get("dirty-bitmaps", {})
            # the source is stopped now: its bitmaps are what the
            # destination must end up with
            expected = {n: src.sha256("disk0", n) for n in setup.names()}
            before_fault = _transferred(src)
            if fault == "kill-destination":
                dst.kill()
            elif fault == "kill-source":
                src.kill()
            elif fault == "cut-link":
                link.cut()
            if mode == "stock postcopy":
                # every bitmap byte goes after the switchover; the control
                # measures it: the stream from now to the end
                after: int | None = setup.serialized()
                if fault == "none":
                    _settle(src)
                    after = _transferred(src) - at_switchover
                unsent = None if fault == "none" or after is None else \
                    max(0, after - (before_fault - at_switchover))
            else:
                after = bm_info.get("remaining")
                unsent = None if fault == "none" else after
            destination = _survivor(dst, expected,
                                    fault == "kill-destination")
            source = _survivor(src, expected, fault == "kill-source",
                               resume=fault == "kill-destination")
            if fault == "cut-link":
                link.restore()
    return SafetyResult(mode, fault, run, after, unsent, source, destination)


def run(layout: Layout, runs: int = 1, setup: Setup | None = None,
        fill: Callable[[VM], None] = fill_all) -> list[SafetyResult]:
    """Every (mode, fault), *runs* times; one QEMU pair at a time."""
    setup = setup or Setup()
    results = []
    with tempfile.TemporaryDirectory(prefix="pq-safe-", dir="/tmp") as tmp:
        for i in range(runs):
            for mode in MODES:
                for fault in FAULTS:
                    info(f"safety: {mode}, {fault}, run {i + 1}/{runs}")
                    d = Path(tmp) / f"{i}-{mode.split()[0]}-{fault}"
                    d.mkdir()
                    try:
                        results.append(run_case(layout, mode, fault, setup,
                                                d, i, fill))
                    except Exception as e:  # one broken case, not the table
                        warn(f"safety: {mode}, {fault}: {e}")
                        gone = Side("-", "-", "-")
                        results.append(SafetyResult(
                            mode, fault, i, None, None, gone, gone,
                            f"{type(e).__name__}: {e}"))
    return results


def _summary(side: Side) -> str:
    """"4 equal" / "4 absent" / "2 equal, 2 busy+DIFFERS"."""
    if side.migration == "-":
        return "- (process gone)"
    counts: dict[str, int] = {}
    for v in side.bitmaps.values():
        counts[v] = counts.get(v, 0) + 1
    return ", ".join(f"{n} {v}" for v, n in sorted(counts.items()))


def table(results: list[SafetyResult]) -> str:
    """One row per (mode, fault, run); then, as notes, what each QEMU
    said on stderr and how a stuck side answered migrate_cancel."""
    rows, notes = [], []
    for r in results:
        case = f"{r.mode}, {r.fault}" + (f" (run {r.run + 1})" if r.run
                                         else "")
        rows.append((
            r.mode, r.fault,
            f"{r.source.migration} / {r.source.state}",
            r.source.process,
            f"{r.destination.migration} / {r.destination.state}",
            r.destination.process,
            fmt_bytes(r.after_switchover), fmt_bytes(r.unsent_at_fault),
            _summary(r.destination), _summary(r.source), r.vm_runs_on))
        if r.error:
            notes.append(f"- {case}: NOT MEASURED, the case broke before "
                         f"its fault: {r.error}")
        for name, side in (("source", r.source),
                           ("destination", r.destination)):
            if side.said:
                notes.append(f"- {case}: {name} said: " +
                             "; ".join(f"'{s}'" for s in side.said))
            if side.cancel:
                notes.append(f"- {case}: migrate_cancel on the {name}: "
                             f"{side.cancel}")
            if side.resume:
                notes.append(f"- {case}: cont on the {name}: {side.resume}")
    out = markdown_table(
        ("mode", "fault", "source migration / VM", "source process",
         "destination migration / VM", "destination process",
         "bitmap bytes after switchover", "unsent at fault",
         "bitmaps on destination", "bitmaps on source", "VM runs on"),
        rows)
    return out + ("\n\n" + "\n".join(notes) if notes else "")


def describe(setup: Setup | None = None) -> str:
    s = setup or Setup()
    return (
        f"A {fmt_size(s.size)} null-co disk with {s.bitmaps} fully dirty "
        f"bitmaps at {s.granularity // KiB} KiB granularity "
        f"({fmt_bytes(s.serialized())} serialized) is migrated over a veth "
        f"link between two network namespaces (TCP with keep-alive, "
        f"destination with exit-on-error off) at "
        f"{s.bandwidth // MiB} MiB/s. 'stock postcopy': QEMU 10.2.2 both "
        "ends, dirty-bitmaps + events + return-path, migrate-start-postcopy "
        "as soon as the migration is active, the bitmap stream limited by "
        "max-postcopy-bandwidth. 'patched live': the series both ends, "
        "dirty-bitmaps-live on the source as well, max-bandwidth the same. "
        "As soon as the destination VM runs, the source's bitmaps are "
        "hashed (it is stopped) and the fault is injected: the destination "
        "or the source SIGKILLed, or the link taken down. Survivors get "
        f"{SETTLE:g} s to notice; then each expected bitmap on each living "
        "side is 'absent', or 'equal'/'DIFFERS' to the source's at the "
        "switchover, prefixed 'busy'/'inconsistent' when flagged. "
        "'bitmap bytes after switchover': what still had to cross the link "
        "once the destination ran (stock: all of it; patched: query-migrate's "
        "remaining; the stock control row measures the stream from then to "
        "the end), 'unsent at fault': of that, not yet sent when the fault "
        "hit (stock: estimated from the stream bytes sent meanwhile). Fault "
        "'none' is the control: the same migration, unbroken. Where the "
        "destination was killed, the source is then told to 'cont' (notes), "
        "and a side stuck in postcopy-paused to 'migrate_cancel'. "
        f"Survivors end with 'quit' and must exit 0 within {QUIT_TIMEOUT} s.")
