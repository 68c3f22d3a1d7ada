"""Launching QEMU for tests, the demo and benchmarks.

Processes are QEMU's own ``qemu.machine.QEMUMachine`` (from the built
tree's ``python/``), which talks QMP through PyPI's ``qemu.qmp``.  This
module only decides *what* to launch: an x86 ``-machine pc`` guest, on
the accelerator :mod:`pyqemu.machine.accel` chooses for this host (KVM
where it really works, else TCG), with named block nodes that carry
dirty bitmaps.

The disks are ``null-co`` nodes by default: they accept writes and cost no
storage, so a "16 TiB disk" is a 16 TiB bitmap and nothing else.
"""

from __future__ import annotations

import functools
import logging
import os
import re
import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import PyqemuError
from ..paths import Layout
from ..util.proc import deathsig_wrapper
from ..util.units import GiB
from . import accel as accelerators

#: What QEMU prints when it dies of a bug rather than of our kill.
CRASH = re.compile(r"Assertion .* failed|assertion failed|AddressSanitizer|"
                   r"runtime error:|UndefinedBehaviorSanitizer|"
                   r"LeakSanitizer")


# How QEMU ended is judged here (Exit.problem); qemu.machine's own
# warnings about it (a signal, a QMP socket reset by a QEMU that exited)
# would only repeat that on stderr, thousands of times in a fuzz campaign.
logging.getLogger("qemu.machine").setLevel(logging.ERROR)


class MachineError(PyqemuError):
    """A QEMU process ended badly: a signal nobody sent, or a crash
    report (assertion, sanitizer) in its output."""


def _import_machine(layout: Layout) -> Any:
    """QEMUMachine from the built tree; PyPI's qemu.qmp stays first on the
    path so that ``qemu.qmp`` is the pinned client, not the tree's copy."""
    tree_python = str(layout.qemu_python())
    if tree_python not in sys.path:
        sys.path.append(tree_python)
    return _tolerant_machine()


@functools.cache
def _tolerant_machine() -> Any:
    """QEMUMachine reading QEMU's log with undecodable bytes replaced.

    QEMUMachine decodes the log in the locale's encoding while it shuts
    down, and QEMU copies bytes of an incoming migration stream (a
    bitmap's name, say) into its error messages verbatim: one such byte
    would make every shutdown raise UnicodeDecodeError, mid-way through
    its clean-up.  The log file itself keeps the raw bytes."""
    from qemu.machine import QEMUMachine  # type: ignore[import-not-found]

    class Machine(QEMUMachine):  # type: ignore[misc, valid-type]
        def _load_io_log(self) -> None:
            if self._qemu_log_path is not None:
                with open(self._qemu_log_path, "rb") as log:
                    self._iolog = log.read().decode(errors="replace")

    return Machine


@dataclass(frozen=True)
class Bitmap:
    """A dirty bitmap to create on a disk before migrating."""

    name: str
    granularity: int = 65536
    persistent: bool = False
    disabled: bool = False


@dataclass(frozen=True)
class Disk:
    """A block node: ``null-co`` of *size* bytes unless *file* is given."""

    node: str
    size: int
    file: Path | None = None
    bitmaps: tuple[Bitmap, ...] = field(default_factory=tuple)
    #: a guest device for the node, e.g. "ide-hd,bus=ide.0,unit=1"
    device: str | None = None

    def blockdev(self) -> str:
        if self.file is None:
            return (f"driver=null-co,node-name={self.node},size={self.size},"
                    "read-zeroes=on")
        return (f"driver=qcow2,node-name={self.node},"
                f"file.driver=file,file.filename={self.file}")


@dataclass(frozen=True)
class Exit:
    """How a QEMU process ended."""

    code: int | None        # returncode; -N for signal N
    killed_by_us: bool      # still running when shut down, so we killed it
    log: str                # its stdout and stderr

    def problem(self) -> str | None:
        """Whether QEMU crashed: a crash report in its output, or a signal
        that was not our kill.  Whether its exit status is a failure is
        the owner's to judge (:meth:`status_problem`): a QEMU fed a broken
        stream on purpose exits with status 1 as it should."""
        m = CRASH.search(self.log)
        if m:
            line = next(ln for ln in self.log.splitlines() if m.group(0) in ln)
            return f"crash report in QEMU's output: {line.strip()}"
        if self.code is not None and self.code < 0 and not (
                self.killed_by_us and self.code == -signal.SIGKILL):
            return f"QEMU killed by signal {-self.code}"
        return None

    def status_problem(self, allowed: int | None = None) -> str | None:
        """Why this exit status is a failure when *allowed* is the only
        non-zero status expected (None: none is): a QEMU that exits by
        itself with an error (a failed migration, a refused command line,
        an ``exit(1)`` on a path nobody meant to take) while the test
        still thought it running."""
        if self.code is None or self.code <= 0 or self.code == allowed:
            return None
        said = self.log.strip().splitlines()
        return (f"QEMU exited by itself with status {self.code}"
                + (f": {said[-1].strip()}" if said else ""))


class VM:
    """One QEMU process: a thin owner around QEMUMachine.

    ``with VM(...) as vm`` guarantees the process is gone afterwards, even
    when a test fails half-way: no leaked QEMU, no leaked sockets.  Before
    killing it, the exit checks how it ended: a QEMU that died of a signal,
    printed an assertion failure or exited by itself with an error status
    (unless :meth:`allow_exit` said it may) fails the ``with`` block; when
    the block already fails, what is wrong with QEMU is added to that
    error as a note instead of being lost.

    *accel* is ``"kvm"`` or ``"tcg"``; None takes the host's choice
    (:func:`pyqemu.machine.accel.choose`), which :attr:`accel` records.
    QEMU gets that one accelerator and no fallback: a VM asked for KVM
    that cannot have it fails to start rather than run on TCG unnoticed.
    """

    def __init__(self, layout: Layout, name: str, disks: list[Disk],
                 flavour: str = "patched", workdir: Path | None = None,
                 incoming: bool = False, machine: str = "pc",
                 memory_mb: int = 64, extra_args: tuple[str, ...] = (),
                 binary: Path | None = None, boot: Path | None = None,
                 wrapper: tuple[str, ...] = (),
                 accel: str | None = None) -> None:
        self.name = name
        self.flavour = flavour
        self.disks = disks
        #: what the guest runs on: "kvm" or "tcg"
        self.accel = accelerators.check(accel) if accel is not None \
            else accelerators.choose()
        # what successor() needs to start the same machine again, on the
        # same accelerator: QEMU does not migrate between KVM and TCG
        self._again = functools.partial(
            VM, layout, disks=disks, flavour=flavour, workdir=workdir,
            machine=machine, memory_mb=memory_mb, extra_args=extra_args,
            binary=binary, wrapper=wrapper, accel=self.accel)
        self._boot = boot
        self.workdir = workdir or layout.work()
        self.workdir.mkdir(parents=True, exist_ok=True)
        #: what the guest prints on COM1
        self.serial_log = self.workdir / f"{name}-serial.log"
        self.serial_log.unlink(missing_ok=True)
        binary = binary or layout.binary("qemu-system-x86_64", flavour)
        args = ["-machine", f"{machine},accel={self.accel}",
                "-m", str(memory_mb),
                "-nodefaults", "-no-user-config",
                "-serial", f"file:{self.serial_log}"]
        if boot is not None:
            # A boot sector on the first IDE disk (see pyqemu.machine.guest)
            args += ["-blockdev", f"driver=file,filename={boot},node-name=boot",
                     "-device", "ide-hd,drive=boot,bus=ide.0,unit=0,"
                                "bootindex=0,id=bootdisk"]
        for i, d in enumerate(disks):
            args += ["-blockdev", d.blockdev()]
            if d.device:
                args += ["-device", f"{d.device},drive={d.node},id=dev{i}"]
        if incoming:
            args += ["-incoming", "defer"]
        args += list(extra_args)
        QEMUMachine = _import_machine(layout)
        # QEMU dies with this process (PR_SET_PDEATHSIG), even on SIGKILL
        self.machine = QEMUMachine(str(binary), args=args, name=name,
                                   wrapper=deathsig_wrapper() + tuple(wrapper),
                                   base_temp_dir=str(self.workdir),
                                   log_dir=str(self.workdir))
        self.exit: Exit | None = None
        #: a non-zero status this QEMU may exit with by itself (allow_exit)
        self.allowed_status: int | None = None

    def successor(self, name: str) -> "VM":
        """A ``-incoming defer`` VM with this one's arguments (not launched):
        where this guest migrates next, so that one boot serves a chain of
        migrations A -> B -> A' -> ...  Not for a VM booted from a boot
        sector image: two QEMUs cannot share its file."""
        if self._boot is not None:
            raise ValueError(f"{self.name} boots from {self._boot}: a "
                             "successor would need its own copy")
        return self._again(name=name, incoming=True)

    # -- lifetime ----------------------------------------------------------

    def launch(self) -> "VM":
        self.exit = None
        self.allowed_status = None
        self.machine.launch()
        return self

    def allow_exit(self, status: int = 1) -> None:
        """Expect this QEMU to end by itself with *status* from now on:
        the destination of a migration that failed or was cancelled does
        (QEMU's ``exit-on-error``).  A crash or a signal stays a failure,
        and so does any other status."""
        self.allowed_status = status

    def is_running(self) -> bool:
        return bool(self.machine.is_running())

    def kill(self) -> Exit:
        """Kill QEMU now (a fault a test injects) and wait for it."""
        return self.shutdown()

    def shutdown(self) -> Exit:
        """Stop the process (killing it if it still runs) and record how it
        ended; a second call returns the first record."""
        if self.exit is None:
            was_running = self.machine.is_running()
            self.machine.shutdown(hard=True)
            self.exit = Exit(self.machine.exitcode(), was_running,
                             self.machine.get_log() or "")
        return self.exit

    def quit(self, timeout: int = 60, sig: int | None = None) -> Exit:
        """End QEMU the way a user does, with QMP ``quit`` (or the signal
        *sig*, e.g. SIGTERM from an init system), and require exit status
        0 and no crash report: a QEMU that aborts while closing its images
        (after a migration, say) is a failure that a kill would hide.
        Also a failure: a QEMU already gone."""
        if self.exit is not None or not self.is_running():
            end = self.shutdown()
            raise MachineError(f"{self.name} ({self.flavour}) exited on its "
                               f"own (status {end.code}): "
                               f"{end.problem() or end.log[-2000:]}")
        if sig is None:
            # not hard: QEMUMachine sends quit and waits; it kills only if
            # QEMU is still there after the timeout
            self.machine.shutdown(timeout=timeout)
        else:
            os.kill(self.machine.get_pid(), sig)
            self.machine.wait(timeout=timeout)
        self.exit = Exit(self.machine.exitcode(), False,
                         self.machine.get_log() or "")
        problem = self.exit.problem()
        if self.exit.code != 0 or problem:
            raise MachineError(f"{self.name} ({self.flavour}) exited with "
                               f"status {self.exit.code} on quit: "
                               f"{problem or self.exit.log[-2000:]}")
        return self.exit

    def ended_badly(self) -> str | None:
        """Shut down, and say why the way QEMU ended is a failure (None if
        it is not): a crash report, a signal we did not send, or an exit
        with an error status that :meth:`allow_exit` did not expect."""
        end = self.shutdown()
        return end.problem() or end.status_problem(self.allowed_status)

    def check_exit(self) -> None:
        """Shut down, and raise MachineError if QEMU ended badly."""
        problem = self.ended_badly()
        if problem:
            raise MachineError(f"{self.name} ({self.flavour}): {problem}")

    def __enter__(self) -> "VM":
        return self.launch()

    def __exit__(self, exc_type: object, exc: BaseException | None,
                 tb: object) -> None:
        if exc is None:
            self.check_exit()
            return
        # the exception in flight says what the test saw; what QEMU did
        # goes with it
        problem = self.ended_badly()
        if problem:
            exc.add_note(f"{self.name} ({self.flavour}): {problem}")

    # -- QMP ---------------------------------------------------------------

    def cmd(self, command: str, **args: Any) -> Any:
        """Run a QMP command; qemu.qmp's ExecuteError on failure."""
        return self.machine.cmd(command, args_dict=args) if args else \
            self.machine.cmd(command)

    def hmp(self, command_line: str) -> str:
        return self.cmd("human-monitor-command", **{"command-line": command_line})

    def drain_events(self) -> list[dict]:
        """Every QMP event received since the last call, oldest first.

        Events carry QEMU's own timestamp, so two processes on one host
        can be set against each other (a source's STOP and a
        destination's RESUME) without the harness's polling in between."""
        return list(self.machine.get_qmp_events(wait=False))

    # -- bitmaps -----------------------------------------------------------

    def add_bitmaps(self) -> None:
        """Create every Bitmap declared on the disks."""
        for d in self.disks:
            for b in d.bitmaps:
                self.cmd("block-dirty-bitmap-add", node=d.node, name=b.name,
                         granularity=b.granularity, persistent=b.persistent,
                         disabled=b.disabled)

    def qemu_io_write(self, node: str, command: str) -> None:
        """One HMP qemu-io write, checked.

        A node that a guest device uses is written through the device
        (``-d``): the device does not share write permission with a second
        user.  Set-up errors come back as the HMP reply, but qemu-io prints
        its result, "wrote ..." or "write failed: ...", on QEMU's stdout,
        which qemu.machine sends to its log file: that is where the write
        is confirmed."""
        dev = next((f"-d dev{i}" for i, d in enumerate(self.disks)
                    if d.node == node and d.device), node)
        log = Path(self.machine._qemu_log_path or "/dev/null")
        start = log.stat().st_size
        reply = self.hmp(f'qemu-io {dev} "{command}"').strip()
        with log.open("rb") as f:
            f.seek(start)
            said = f.read().decode(errors="replace").strip()
        if reply or not said.startswith("wrote ") or "failed" in said:
            raise RuntimeError(f"qemu-io {command} on {node}: "
                               f"{reply or said or 'no output'}")

    def write(self, node: str, offset: int, length: int) -> None:
        """A write through the block layer (HMP qemu-io): dirties bitmaps."""
        self.qemu_io_write(node, f"write {offset} {length}")

    def dirty(self, node: str, offset: int, length: int) -> None:
        """Set every bitmap bit of a range at little cost: zero writes of
        at most 1 GiB each (qemu-io's limit), which dirty bitmaps like any
        write but move no data on null-co."""
        end = offset + length
        while offset < end:
            n = min(end - offset, GiB)
            self.qemu_io_write(node, f"write -z {offset} {n}")
            offset += n

    def bitmaps(self) -> dict[tuple[str, str], dict]:
        """(node, bitmap) -> query-named-block-nodes' description."""
        out = {}
        for n in self.cmd("query-named-block-nodes", flat=True):
            for b in n.get("dirty-bitmaps", []):
                out[(n["node-name"], b["name"])] = b
        return out

    def sha256(self, node: str, name: str) -> str:
        return self.cmd("x-debug-block-dirty-bitmap-sha256", node=node,
                        name=name)["sha256"]

    def all_sha256(self) -> dict[tuple[str, str], str]:
        return {key: self.sha256(*key) for key in self.bitmaps()}

    def regions(self, node: str, name: str, offset: int = 0,
                length: int | None = None,
                max_regions: int = 1024) -> list[tuple[int, int]]:
        """Every dirty (offset, length) of a bitmap in a window.

        Uses the series' x-debug-block-dirty-bitmap-regions, following its
        next-offset until the window is exhausted, so the result is whole
        however many regions there are.
        """
        args: dict[str, Any] = {"node": node, "name": name,
                                "max-regions": max_regions}
        if length is not None:
            args["length"] = length
        end = None if length is None else offset + length
        out: list[tuple[int, int]] = []
        while True:
            args["offset"] = offset
            if end is not None:
                args["length"] = end - offset
            r = self.cmd("x-debug-block-dirty-bitmap-regions", **args)
            out += [(x["offset"], x["length"]) for x in r["regions"]]
            if "next-offset" not in r:
                return out
            if r["next-offset"] <= offset:
                raise MachineError(f"x-debug-block-dirty-bitmap-regions on "
                                   f"{node}/{name}: next-offset "
                                   f"{r['next-offset']} does not advance "
                                   f"past {offset}")
            offset = r["next-offset"]

    def all_regions(self) -> dict[tuple[str, str], list[tuple[int, int]]]:
        return {key: self.regions(*key) for key in self.bitmaps()}


class Pair:
    """A migration source and a ``-incoming defer`` destination.

    Both get the same disks (node names must match for bitmaps to find
    their node) and the same accelerator (*accel*, see :class:`VM`), each
    may be a different flavour, and both are stopped on exit whatever
    happened; a QEMU that ended badly fails the block.
    """

    def __init__(self, layout: Layout, disks: list[Disk], workdir: Path,
                 src_flavour: str = "patched", dst_flavour: str = "patched",
                 dst_disks: list[Disk] | None = None,
                 extra_args: tuple[str, ...] = (),
                 boot: tuple[Path, Path] | None = None,
                 wrappers: tuple[tuple[str, ...], tuple[str, ...]] = ((), ()),
                 uri: str | None = None, dst_paused: bool = False,
                 machine: str = "pc", memory_mb: int = 64,
                 accel: str | None = None) -> None:
        self.workdir = workdir
        self.src = VM(layout, "src", disks, src_flavour, workdir,
                      extra_args=extra_args, boot=boot[0] if boot else None,
                      wrapper=wrappers[0], machine=machine,
                      memory_mb=memory_mb, accel=accel)
        # -S: the destination stays paused after the migration, so that
        # its state can be compared with the source's before it changes
        self.dst = VM(layout, "dst", dst_disks if dst_disks is not None else disks,
                      dst_flavour, workdir, incoming=True,
                      extra_args=extra_args + (("-S",) if dst_paused else ()),
                      boot=boot[1] if boot else None,
                      wrapper=wrappers[1], machine=machine,
                      memory_mb=memory_mb, accel=self.src.accel)
        self.sock = workdir / "migrate.sock"
        self._uri = uri

    @property
    def uri(self) -> str:
        """Where the destination listens: a unix socket unless given."""
        return self._uri or f"unix:{self.sock}"

    def __enter__(self) -> "Pair":
        self.sock.unlink(missing_ok=True)
        self.src.launch()
        try:
            self.dst.launch()
        except BaseException:
            self.src.shutdown()
            raise
        return self

    def __exit__(self, exc_type: object, exc: BaseException | None,
                 tb: object) -> None:
        problems = shutdown_all((self.dst, self.src))
        self.sock.unlink(missing_ok=True)
        raise_or_note(problems, exc)


def shutdown_all(vms: "tuple[VM | None, ...]") -> list[str]:
    """Shut every VM down, whatever happens to one, and say which ended
    badly ("name (flavour): why", see :meth:`VM.ended_badly`); None
    entries are skipped."""
    problems = []
    for vm in vms:
        if vm is None:
            continue
        try:
            problem = vm.ended_badly()
        except Exception as e:
            problem = f"shutdown failed: {type(e).__name__}: {e}"
        if problem:
            problems.append(f"{vm.name} ({vm.flavour}): {problem}")
    return problems


def raise_or_note(problems: list[str], exc: BaseException | None) -> None:
    """At the end of a ``with`` block that owns QEMUs: raise MachineError
    for *problems*, or, when the block already raises *exc*, add them to
    it as notes (the test's own error stays the one reported, and a
    crash behind it is not lost)."""
    if not problems:
        return
    if exc is None:
        raise MachineError("; ".join(problems))
    for problem in problems:
        exc.add_note(problem)
