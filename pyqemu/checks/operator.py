"""The operator's path: ``virsh migrate --live`` over shared storage of a
domain with checkpoints, as ``./run check operator`` reports it.

Operators migrate through libvirt, most often with shared storage, and
their domains carry checkpoints (one persistent bitmap per checkpoint and
disk).  libvirt 9.0 leaves ``dirty-bitmaps`` off with shared storage, so
every bitmap goes through the qcow2: the source stores it when it
inactivates the image, the destination loads it when it activates it,
both inside the guest's downtime.  patches/libvirt turns on
``dirty-bitmaps`` and ``dirty-bitmaps-live`` there when the source QEMU
has the live mode.  This module measures what that changes, and checks
that nothing is lost on the way:

* **the domain**: a Linux guest (:mod:`pyqemu.machine.linuxguest`) with
  2 GiB of RAM, writing through virtio-blk on an iothread to a sparse
  16 TiB qcow2 with 8 checkpoints whose bitmaps (64 KiB granularity, so
  32 MiB each) are fully dirty: the worst case a checkpoint can be.  The
  image is made offline (:func:`template`: the patched QEMU adds the 8
  persistent bitmaps, fills them with :func:`pyqemu.bench.fill.fill` and
  stores them at ``quit``), each domain gets a copy, and the 8 libvirt
  checkpoints are redefined over the bitmaps
  (``virsh checkpoint-create --redefine``).
* **the measurement** (:func:`measure`): one domain per configuration
  -- stock libvirt + stock QEMU, stock libvirt + our QEMU, our libvirt +
  our QEMU, and a domain without checkpoints (our libvirt + our QEMU) --
  migrated back and forth between two hosts, round after round, the
  configurations taking turns (the machine is shared: a load that comes
  and goes touches all of them alike).  The domains not being migrated
  are paused, so that only one guest runs at a time.
* **guest-visible downtime**: the source QEMU's ``STOP`` to the
  destination QEMU's ``RESUME``, by QEMU's own event timestamps, read
  from the two libvirtds' logs (:meth:`MonitorLog.events
  <pyqemu.machine.libvirt.MonitorLog.events>`).  QEMU's own ``downtime``
  (``virsh domjobinfo``) ends at the source's last byte and does not see
  the destination load the bitmaps.
* **nothing lost**: a virtnbdbackup full backup before the first
  migration, and after every migration an incremental one on the
  destination, with the guest paused; virtnbdrestore of the chain must
  equal the disk (``qemu-img compare``), and two controls must not: the
  full backup alone, and the chain with one written block copied over
  another.  The 8 checkpoints are redefined on the destination with
  ``--redefine-validate``: libvirt refuses a bitmap that is missing,
  inconsistent, disabled or not persistent, and the bitmaps must still be
  fully dirty.
* **concurrency** (:func:`concurrent`): 4 such domains migrated at once.
* **mixed hosts** (:func:`mixed`): our libvirt and QEMU on one host and
  Debian's libvirt with stock QEMU on the other; the domain goes there
  and back (``virsh migrate --xml`` names the other host's QEMU).

Two things the scenario has to work around, both of virtnbdbackup 1.9.15:
it refuses to run while the domain has a checkpoint it did not create
("foreign checkpoint"), and its full backup deletes every checkpoint
whose name contains its own.  So the full backup runs before the 8
checkpoints are redefined, and on a destination the incremental backup
runs before they are redefined there.  libvirt does not migrate
checkpoint metadata (the series does not change that: see its last
patch), so a destination has none until it is redefined.

How a bitmap travelled is read back, not assumed: the capabilities and
``block-bitmap-mapping`` libvirt sent the source QEMU, and the patched
QEMU's ``dirty-bitmaps`` statistics in the last ``query-migrate`` reply
libvirt received (:mod:`pyqemu.machine.libvirt.monitorlog`).

Every migration is bounded: past its deadline the job is aborted
(``virsh domjobabort``) and reported as such.  Every domain is destroyed
and undefined on both hosts, and every image and host removed, whatever
happens (:class:`Lab`).
"""

from __future__ import annotations

import contextlib
import functools
import json
import shutil
import statistics
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from xml.etree import ElementTree as ET

from ..bench.fill import fill
from ..build.driver import build
from ..build.libvirt import build as build_libvirt
from ..errors import PyqemuError
from ..log import info
from ..machine import accel, images, linuxguest
from ..machine.libvirt import (
    Boot,
    DiskSpec,
    DomainSpec,
    Host,
    Hosts,
    LibvirtError,
    tail,
)
from ..machine.linuxguest import WriterConfig
from ..machine.vm import CRASH, VM, Bitmap, Disk
from ..paths import Layout
from ..tree.libvirt import LibvirtTree
from ..util.proc import run
from ..util.results import save
from ..util.table import markdown_table
from ..util.units import GiB, KiB, TiB, fmt_bytes, fmt_size

#: The guest's disk as the domain sees it
TARGET = "vda"
#: Names of the operator's checkpoints (and of their bitmaps: libvirt
#: names a checkpoint's bitmap after the checkpoint).  They must not
#: contain "virtnbdbackup", or virtnbdbackup's full backup deletes them.
CHECKPOINT = "ops.{}"
#: virtnbdbackup's own first checkpoint
FULL = "virtnbdbackup.0"
#: Writes the guest makes between steps (it reports every 16)
WRITES_BETWEEN = 64
#: Migrations per configuration in :func:`measure`
RUNS = 5
#: Domains migrated at once in :func:`concurrent`
CONCURRENT = 4
#: The issue's target: our median downtime at most this far above the
#: checkpoint-less domain's
TARGET_MS = 2.0


def domain_type() -> str:
    """libvirt's domain type for the guests: "kvm" where this host really
    runs KVM guests (:func:`pyqemu.machine.accel.detect`, which every
    other guest of the project follows too), else "qemu" (TCG)."""
    return "kvm" if accel.detect().accel == accel.KVM else "qemu"


# -- what runs on each host -------------------------------------------------

@dataclass(frozen=True)
class Side:
    """One host's software: whose libvirtd, which QEMU build."""

    libvirt: str                # "debian" (the package) or "ours"
    qemu: str                   # QEMU flavour: "stock" or "patched"

    @property
    def label(self) -> str:
        lv = "stock" if self.libvirt == "debian" else "our"
        qemu = "stock" if self.qemu == "stock" else "our"
        return f"{lv} libvirt + {qemu} QEMU"


@dataclass(frozen=True)
class Config:
    """What one domain runs on: host a's and host b's software, and
    whether the domain has the checkpoints (and backups)."""

    key: str
    a: Side
    b: Side
    checkpoints: bool = True

    @property
    def label(self) -> str:
        if self.a == self.b:
            text = self.a.label
        else:
            text = f"a: {self.a.label}, b: {self.b.label}"
        return text if self.checkpoints else f"no checkpoints, {text}"

    @property
    def libvirts(self) -> tuple[str, str]:
        return self.a.libvirt, self.b.libvirt


DEBIAN_STOCK = Side("debian", "stock")
DEBIAN_PATCHED = Side("debian", "patched")
OURS = Side("ours", "patched")
CONFIGS = {c.key: c for c in (
    Config("stock", DEBIAN_STOCK, DEBIAN_STOCK),
    Config("patched", DEBIAN_PATCHED, DEBIAN_PATCHED),
    Config("ours", OURS, OURS),
    Config("none", OURS, OURS, checkpoints=False),
    Config("mixed", OURS, DEBIAN_STOCK),
)}
#: The configurations :func:`measure` compares, in turn
MEASURED = ("stock", "patched", "ours", "none")


@dataclass(frozen=True)
class Workload:
    """The domain and its disk: the check's defaults are the issue's."""

    size: int = 16 * TiB
    checkpoints: int = 8
    granularity: int = 64 * KiB
    memory_mib: int = 2048
    writer: WriterConfig = WriterConfig(rate=500, length=GiB,
                                        kick_ms=linuxguest.KICK_MS)
    #: seconds a migration may take before it is aborted
    deadline: float = 120
    #: ``virsh migrate-setmaxdowntime`` before each migration (None:
    #: QEMU's default, 300 ms, which libvirt leaves alone).  With the
    #: default, QEMU stops the guest while up to 300 ms worth of RAM is
    #: left to send: the domain without checkpoints measured 15 to 165 ms
    #: here, which hides a difference of a few ms.  With 10 ms about
    #: 600 KiB of RAM is left at the stop, in every configuration.
    max_downtime_ms: int | None = 10

    @property
    def bitmap_bytes(self) -> int:
        """The data of one bitmap: one bit per granule."""
        return self.size // self.granularity // 8


# -- the hosts ----------------------------------------------------------------

def daemons(layout: Layout, a: Side, b: Side) -> dict[str, Path]:
    """``Hosts(libvirtd=...)`` for the two sides: our build where a side
    runs ours, Debian's daemon elsewhere."""
    ours = LibvirtTree.of(layout).libvirtd
    out = {name: ours for name, side in (("a", a), ("b", b))
           if side.libvirt == "ours"}
    if out and not ours.exists():
        raise LibvirtError(f"{ours} is missing: run './run build --libvirt'")
    return out


class Lab:
    """The host pairs of a run, started on demand, one per combination of
    libvirtds, and the template image; all removed on exit.

    Use as ``with Lab(layout, workload) as lab``; :meth:`pair` gives the
    running hosts of a config."""

    def __init__(self, layout: Layout, workload: Workload) -> None:
        self.layout = layout
        self.workload = workload
        self.stack = contextlib.ExitStack()
        self.pairs: dict[tuple[str, str], tuple[Hosts, Host, Host]] = {}
        self._template: Path | None = None

    def __enter__(self) -> "Lab":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stack.__exit__(*exc)   # type: ignore[arg-type]

    def pair(self, config: Config) -> tuple[Hosts, Host, Host]:
        key = config.libvirts
        if key not in self.pairs:
            hosts = Hosts(libvirtd=daemons(self.layout, config.a, config.b))
            a, b = self.stack.enter_context(hosts)
            # virtnbdbackup and virtnbdrestore run qemu-img and qemu-nbd by
            # name: the project's build, not Debian's 7.2 (the image format
            # is the same for both flavours)
            hosts.use_tools({t: self.layout.binary(t, "patched")
                             for t in ("qemu-img", "qemu-nbd")})
            self.pairs[key] = (hosts, a, b)
        return self.pairs[key]

    def template(self) -> Path:
        """The 16 TiB qcow2 with fully dirty persistent bitmaps, made once
        in the first pair's shared directory."""
        if self._template is None:
            if not self.pairs:
                raise LibvirtError("start a host pair before the template")
            hosts = next(iter(self.pairs.values()))[0]
            self._template = template(self.layout, self.workload,
                                      hosts.shared / "template")
        return self._template


def template(layout: Layout, w: Workload, directory: Path) -> Path:
    """A sparse qcow2 of *w.size* holding *w.checkpoints* persistent
    bitmaps, every bit set: made by the patched QEMU, which stores the
    bitmaps into the image when it quits.  qemu-img check must find it
    clean."""
    directory.mkdir(parents=True, exist_ok=True)
    image = directory / "disk.qcow2"
    qemu_img = layout.binary("qemu-img", "patched")
    run([qemu_img, "create", "-q", "-f", "qcow2", image, str(w.size)],
        what="qemu-img create the template")
    if w.checkpoints:
        disk = Disk("disk0", w.size, file=image, bitmaps=tuple(
            Bitmap(CHECKPOINT.format(i), w.granularity, persistent=True)
            for i in range(w.checkpoints)))
        with VM(layout, "template", [disk], "patched",
                workdir=directory) as vm:
            vm.add_bitmaps()
            fill(vm, disk, "full")
            vm.quit()
    run([qemu_img, "check", "-q", image], what="qemu-img check the template")
    return image


# -- results ------------------------------------------------------------------

@dataclass
class Migration:
    """One ``virsh migrate``, as observed."""

    domain: str
    src: str                    # "a" or "b"
    dst: str
    seconds: float = 0.0        # virsh migrate, wall clock
    elapsed_ms: int | None = None       # domjobinfo: Time elapsed
    qemu_downtime_ms: int | None = None  # domjobinfo: Total downtime
    downtime_ms: float | None = None    # source STOP to destination RESUME
    has_bitmaps: bool = True            # the domain has checkpoints
    caps_enabled: tuple[str, ...] = ()  # what libvirt turned on
    mapped: tuple[str, ...] = ()        # bitmaps in block-bitmap-mapping
    bitmap_stats: dict[str, Any] = field(default_factory=dict)
    ram_downtime_bytes: int | None = None   # RAM sent while stopped
    writes_during: int = 0
    #: (ms after the source's STOP, "src"/"dst", event, status): the
    #: MIGRATION, STOP and RESUME events of both QEMUs
    timeline: list[tuple[float, str, str, str]] = field(
        default_factory=list)
    aborted: bool = False       # past the deadline: domjobabort
    error: str = ""

    @property
    def live(self) -> bool:
        return {"dirty-bitmaps", "dirty-bitmaps-live"} <= set(
            self.caps_enabled)

    def travel(self) -> str:
        """How the bitmaps reached the destination, from what was seen."""
        if not self.has_bitmaps:
            return "no bitmaps"
        if "dirty-bitmaps" not in self.caps_enabled:
            return "image"
        if not self.live:
            return "stream, in the downtime"
        return "stream, live"


@dataclass
class Check:
    """The state of the domain and its chain after a migration."""

    checkpoints_valid: bool | None = None   # redefine --redefine-validate
    full_bitmaps: int = 0       # checkpoint bitmaps still fully dirty
    bitmaps: dict[str, int] = field(default_factory=dict)   # name: dirty
    restored_equal: bool | None = None
    full_alone_differs: bool | None = None  # control
    moved_block_differs: bool | None = None  # control
    inc_bytes: int = 0


@dataclass
class Life:
    """One domain from start to undefine: its migrations, and after each
    the check of its chain."""

    domain: str
    config: str
    migrations: list[Migration] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)
    steps: dict[str, float] = field(default_factory=dict)
    qemu_problems: list[str] = field(default_factory=list)
    error: str = ""

    @property
    def ok(self) -> bool:
        if self.error or self.qemu_problems:
            return False
        if any(m.error or m.aborted for m in self.migrations):
            return False
        cfg = CONFIGS[self.config]
        if not cfg.checkpoints:
            return bool(self.migrations)
        # a check after the last migration at least (one that goes there
        # and back is checked at the end: the chain covers both)
        return bool(self.checks) and all(
            c.restored_equal and c.checkpoints_valid for c in self.checks) \
            and self.checks[-1].full_alone_differs is True \
            and self.checks[-1].moved_block_differs is True


# -- one domain -----------------------------------------------------------------

class Guest:
    """A domain of the check: its files in a directory both hosts see, the
    host it is on, and everything observed of it (:class:`Life`)."""

    def __init__(self, lab: Lab, config: Config, name: str) -> None:
        self.lab = lab
        self.layout = lab.layout
        self.w = lab.workload
        self.config = config
        self.name = name
        self.hosts, self.a, self.b = lab.pair(config)
        self.dir = self.hosts.shared / name
        self.disk = self.dir / "disk.qcow2"
        self.serial = self.dir / "serial.log"
        self.backup = self.dir / "backup"
        self.host: Host = self.a
        #: libvirtd log mark per host: where this domain's QEMU there
        #: began (its monitor is found in the log after it)
        self.since: dict[str, int] = {}
        self.life = Life(name, config.key)
        self.timeline: list[tuple[float, str, str, str]] = []
        self.qemu_img = self.layout.binary("qemu-img", "patched")

    def side(self, host: Host) -> Side:
        return self.config.a if host is self.a else self.config.b

    def peer(self, host: Host) -> Host:
        return self.b if host is self.a else self.a

    @contextlib.contextmanager
    def step(self, name: str) -> Iterator[None]:
        t = time.monotonic()
        try:
            yield
        finally:
            self.life.steps[name] = self.life.steps.get(name, 0.0) + \
                time.monotonic() - t

    def spec(self, flavour: str) -> DomainSpec:
        # the domain boots what a plain QEMU of the tests boots
        cfg = linuxguest.qemu_args(self.layout, self.w.writer)
        kernel, initrd, cmdline = (cfg[cfg.index(opt) + 1] for opt in
                                   ("-kernel", "-initrd", "-append"))
        return DomainSpec(
            self.name, self.layout.binary("qemu-system-x86_64", flavour),
            (DiskSpec(str(self.disk), TARGET, "qcow2", bus="virtio",
                      iothread=1),),
            self.serial, memory_mib=self.w.memory_mib, virt=domain_type(),
            boot=Boot(Path(kernel), Path(initrd), cmdline),
            iothreads=1)

    # -- start ------------------------------------------------------------

    def start(self, host: Host | None = None) -> None:
        """Image, define, start on *host* (default a), not waiting for the
        guest."""
        self.host = host or self.a
        self.dir.mkdir()
        with self.step("image"):
            if self.config.checkpoints:
                shutil.copyfile(self.lab.template(), self.disk)
            else:
                run([self.qemu_img, "create", "-q", "-f", "qcow2", self.disk,
                     str(self.w.size)], what="qemu-img create")
        xml = self.dir / "domain.xml"
        xml.write_text(self.spec(self.side(self.host).qemu).xml())
        self.since[self.host.name] = self.host.log_mark()
        self.host.virsh("define", "define", str(xml))
        self.host.virsh("start", "start", self.name)

    def prepare(self) -> None:
        """Wait for the writer; full backup, then the operator's
        checkpoints."""
        with self.step("boot"):
            linuxguest.wait_started(self.serial, 300)
            linuxguest.wait_progress(self.serial, WRITES_BETWEEN, 120)
        if self.config.checkpoints:
            with self.step("virtnbdbackup full"):
                self.host.run("virtnbdbackup -l full", "virtnbdbackup", "-n",
                              "-d", self.name, "-l", "full", "-o",
                              str(self.backup), "-f",
                              str(self.dir / "nbd.sock"), timeout=600)
            if not self.redefine(self.host, validate=True):
                raise LibvirtError(self.life.error)

    def redefine(self, host: Host, validate: bool) -> bool:
        """Redefine the operator's checkpoints on *host* (a chain, oldest
        first); with *validate*, libvirt checks each bitmap in QEMU.
        False if libvirt refused one (its message goes into the error)."""
        parent = None
        for i in range(self.w.checkpoints):
            name = CHECKPOINT.format(i)
            root = ET.Element("domaincheckpoint")
            ET.SubElement(root, "name").text = name
            ET.SubElement(root, "creationTime").text = str(1700000000 + i)
            if parent:
                ET.SubElement(ET.SubElement(root, "parent"),
                              "name").text = parent
            disks = ET.SubElement(root, "disks")
            ET.SubElement(disks, "disk", name=TARGET, checkpoint="bitmap",
                          bitmap=name)
            path = self.dir / f"checkpoint-{i}.xml"
            path.write_text(ET.tostring(root, encoding="unicode"))
            args = ["checkpoint-create", self.name, str(path), "--redefine"]
            if validate:
                args.append("--redefine-validate")
            res = host.run(f"redefine checkpoint {name}", "virsh", "-c",
                           "qemu:///system", *args, check=False)
            if res.returncode != 0:
                self.life.error = self.life.error or (
                    f"[host {host.name}] virsh {' '.join(args)}: "
                    f"{tail(res.stderr, 3)}")
                return False
            parent = name
        return True

    # -- migrate ----------------------------------------------------------

    def migrate_argv(self, dst: Host) -> list[str]:
        """``virsh migrate`` for this domain to *dst*, with ``--xml`` naming
        dst's QEMU where it differs from this host's."""
        argv = ["virsh", "-c", "qemu:///system", "migrate", "--live",
                "--persistent", "--undefinesource",
                # libvirt cannot know that both "hosts" see one file
                # system: it refuses shared storage without --unsafe
                "--unsafe"]
        want = self.side(dst).qemu
        if want != self.side(self.host).qemu:
            xml = self.host.virsh("dumpxml --migratable", "dumpxml",
                                  "--migratable", self.name)
            root = ET.fromstring(xml)
            emulator = root.find("devices/emulator")
            if emulator is None:
                raise LibvirtError(f"{self.name}: no <emulator> in dumpxml")
            emulator.text = str(self.layout.binary("qemu-system-x86_64",
                                                   want))
            path = self.dir / f"migrate-to-{dst.name}.xml"
            path.write_text(ET.tostring(root, encoding="unicode"))
            argv += ["--xml", str(path), "--persistent-xml", str(path)]
        return argv + [self.name, dst.uri]

    def begin_migration(self) -> "Running":
        """Let the guest write, and start ``virsh migrate`` to the other
        host; :meth:`Running.finish` waits for it."""
        src, dst = self.host, self.peer(self.host)
        start = linuxguest.wait_progress(
            self.serial, linuxguest.progress(self.serial) + WRITES_BETWEEN,
            120)
        m = Migration(self.name, src.name, dst.name,
                      has_bitmaps=self.config.checkpoints)
        if self.w.max_downtime_ms is not None:
            src.virsh("migrate-setmaxdowntime", "migrate-setmaxdowntime",
                      self.name, str(self.w.max_downtime_ms))
        marks = (src.log_mark(), dst.log_mark())
        argv = self.migrate_argv(dst)
        t = time.monotonic()
        return Running(self, m, src, dst, marks, src.popen(*argv), t, start)

    def arrived(self, run_: "Running") -> None:
        """Read back what the migration did, from both libvirtds' logs."""
        m, src, dst = run_.m, run_.src, run_.dst
        m.writes_during = linuxguest.progress(self.serial) - run_.writes
        qmp = src.monitor_log(run_.marks[0])
        sets = qmp.sent("migrate-set-capabilities")
        if sets:
            caps = sets[-1]["arguments"]["capabilities"]
            m.caps_enabled = tuple(c["capability"] for c in caps
                                   if c["state"])
        for s in qmp.sent("migrate-set-parameters"):
            for node in s["arguments"].get("block-bitmap-mapping", []):
                m.mapped += tuple(b["name"] for b in node["bitmaps"])
        ret = qmp.last_return_with("dirty-bitmaps")
        if ret is not None and isinstance(ret["dirty-bitmaps"], dict):
            m.bitmap_stats = dict(ret["dirty-bitmaps"],
                                  status=ret.get("status"))
        ret = qmp.last_return_with("ram")
        if ret is not None and isinstance(ret["ram"], dict):
            m.ram_downtime_bytes = ret["ram"].get("downtime-bytes")
        m.downtime_ms = self.downtime(src, dst, run_.marks)
        m.timeline = self.timeline
        info = dst.completed_job(self.name)
        m.elapsed_ms = _ms(info.get("Time elapsed"))
        m.qemu_downtime_ms = _ms(info.get("Total downtime"))
        self.since[dst.name] = run_.marks[1]
        self.host = dst

    def downtime(self, src: Host, dst: Host, marks: tuple[int, int]
                 ) -> float | None:
        """Milliseconds from the source QEMU's STOP to the destination
        QEMU's RESUME, by QEMU's timestamps; None if either is missing.
        The QEMUs are told apart from the host's others by the image
        path libvirt gave them."""
        src_mons = src.monitor_log(self.since[src.name]).monitors(
            str(self.disk))
        dst_mons = dst.monitor_log(marks[1]).monitors(str(self.disk))
        src_events = src.monitor_log(marks[0]).events(mons=src_mons)
        dst_events = dst.monitor_log(marks[1]).events(mons=dst_mons)
        stops = [e for e in src_events if e.name == "STOP"]
        resumes = [e for e in dst_events if e.name == "RESUME"]
        if not stops or not resumes:
            return None
        t0 = stops[0].timestamp
        self.timeline = [
            (round((e.timestamp - t0) * 1000, 1), side, e.name,
             str(e.data.get("status", "")))
            for side, evs in (("src", src_events), ("dst", dst_events))
            for e in evs if e.name in ("STOP", "RESUME", "MIGRATION")]
        self.timeline.sort()
        return (resumes[0].timestamp - t0) * 1000

    # -- after a migration ------------------------------------------------

    def verify(self) -> Check:
        """On the destination: writes, pause, incremental backup, the
        checkpoints redefined (validated), the chain restored and
        compared, and the controls.  A domain without checkpoints only
        has to go on writing.

        The guest is never resumed after the pause: under TCG, ``virsh
        suspend`` and ``resume`` of a guest whose virtio-blk disk is on
        an iothread now and then lose the completion interrupt of the
        requests in flight, stock QEMU 10.2.2 as well (the writer and its
        background reader both wait for good; QEMU's virtqueue has
        nothing in flight and says it signalled everything).  Migrations
        did not (30 of 30 back and forth)."""
        c = Check()
        host = self.host
        linuxguest.wait_progress(
            self.serial, linuxguest.progress(self.serial) + WRITES_BETWEEN,
            120)
        if not self.config.checkpoints:
            return c
        host.virsh("suspend", "suspend", self.name)
        n = len(list(self.backup.glob(f"{TARGET}.inc.*.data")))
        with self.step("virtnbdbackup inc"):
            host.run("virtnbdbackup -l inc", "virtnbdbackup", "-n", "-d",
                     self.name, "-l", "inc", "-o", str(self.backup), "-f",
                     str(self.dir / "nbd.sock"), timeout=600)
        incs = sorted(self.backup.glob(f"{TARGET}.inc.*.data"))
        if len(incs) != n + 1:
            raise LibvirtError(f"{self.name}: expected {n + 1} incremental "
                               f"backups in {self.backup}, found {len(incs)}")
        c.inc_bytes = _allocated(incs[-1])
        c.bitmaps = bitmaps(host, self.name)
        c.full_bitmaps = sum(
            1 for i in range(self.w.checkpoints)
            if c.bitmaps.get(CHECKPOINT.format(i)) == self.w.size)
        c.checkpoints_valid = self.redefine(host, validate=True)
        with self.step("virtnbdrestore + compare"):
            restored = self.restore("restore", None)
            c.restored_equal = images.compare(
                self.qemu_img, restored, self.disk, shared=True) == "identical"
            alone = self.restore("control", FULL)
            c.full_alone_differs = images.compare(
                self.qemu_img, alone, self.disk, shared=True) != "identical"
            c.moved_block_differs = self.moved_block_differs(restored)
            shutil.rmtree(self.dir / "restore", ignore_errors=True)
            shutil.rmtree(self.dir / "control", ignore_errors=True)
        return c

    def restore(self, out_name: str, until: str | None) -> Path:
        """virtnbdrestore of the chain (up to checkpoint *until*) into a
        fresh directory; the restored image.  It runs on the domain's
        host: virtnbdrestore always connects to libvirt."""
        out = self.dir / out_name
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir()
        argv = ["virtnbdrestore", "-n", "-d", TARGET, "-i", str(self.backup),
                "-o", str(out), "-L", str(out / "restore.log"), "-f",
                str(out / "nbd.sock")]
        if until:
            argv += ["--until", until]
        self.host.run(f"virtnbdrestore into {out_name}", *argv, timeout=600)
        got = [p for p in out.iterdir()
               if p.suffix not in (".log", ".xml", ".sock")]
        if len(got) != 1:
            raise LibvirtError(f"virtnbdrestore: expected one image in {out}"
                               f", found {sorted(p.name for p in got)}")
        images.wait_closed(got[0])
        return got[0]

    def moved_block_differs(self, restored: Path) -> bool:
        """The restored chain with write 1's block copied over write 0's
        (both written before the full backup, each with data of its own)
        must differ from the disk: a block at the wrong place."""
        first, second = linuxguest.write_offsets(self.w.writer, 0, 2)
        if first == second:
            raise ValueError("the writer's first two writes hit one block")
        bs = self.w.writer.bs
        moved = images.misplace(
            self.qemu_img, self.layout.binary("qemu-io", "patched"), restored,
            self.dir / "restore" / "moved", second // images.SECTOR,
            first // images.SECTOR, bs // images.SECTOR)
        return images.compare(self.qemu_img, moved, self.disk,
                              shared=True) != "identical"

    # -- the end ----------------------------------------------------------

    def remove(self) -> None:
        """Destroy and undefine on both hosts (whatever state it is in),
        note a QEMU that did not end by our hand, remove the files."""
        for h in (self.a, self.b):
            h.virsh("destroy", "destroy", self.name, check=False)
            h.virsh("undefine", "undefine", self.name,
                    "--checkpoints-metadata", check=False)
            log = h.private(f"/var/log/libvirt/qemu/{self.name}.log")
            text = log.read_text(errors="replace") if log.exists() else ""
            m = CRASH.search(text)
            if m:
                self.life.qemu_problems.append(
                    f"host {h.name}: {m.group(0)} in {log}")
        shutil.rmtree(self.dir, ignore_errors=True)


@dataclass
class Running:
    """A ``virsh migrate`` under way."""

    guest: Guest
    m: Migration
    src: Host
    dst: Host
    marks: tuple[int, int]
    proc: subprocess.Popen[str]
    t0: float
    writes: int

    def finish(self, deadline: float) -> Migration:
        """Wait for virsh until *deadline* (time.monotonic()), else abort
        the job; read back what happened."""
        m = self.m
        try:
            try:
                _, err = self.proc.communicate(
                    timeout=max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                m.aborted = True
                self.src.virsh("abort the migration past its deadline",
                               "domjobabort", self.guest.name, check=False)
                _, err = self.proc.communicate(timeout=120)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.communicate()
        m.seconds = time.monotonic() - self.t0
        if self.proc.returncode != 0:
            m.error = (f"[host {self.src.name}] virsh migrate: exit "
                       f"{self.proc.returncode}: {tail(err, 5)}")
            return m
        self.guest.arrived(self)
        return m


def _ms(v: str | None) -> int | None:
    if not v:
        return None
    try:
        return int(v.split()[0])
    except ValueError:
        return None


def bitmaps(host: Host, dom: str) -> dict[str, int]:
    """Bitmap name: dirty bytes, of the domain's qcow2 node (a QMP query
    through libvirt, which marks the domain tainted)."""
    out = host.virsh("query-named-block-nodes", "qemu-monitor-command", dom,
                     json.dumps({"execute": "query-named-block-nodes",
                                 "arguments": {"flat": True}}))
    got: dict[str, int] = {}
    for n in json.loads(out)["return"]:
        if n.get("drv") == "qcow2":
            for b in n.get("dirty-bitmaps", []):
                got[b["name"]] = b["count"]
    return got


def _allocated(path: Path) -> int:
    return path.stat().st_blocks * 512


# -- the scenarios ----------------------------------------------------------------

def _guard(life: Life, what: Callable[[], None]) -> None:
    """Run a step; a failure goes into the life's error, not up."""
    try:
        what()
    except (PyqemuError, TimeoutError, OSError) as e:
        life.error = life.error or str(e)


def _verify(g: Guest) -> None:
    g.life.checks.append(g.verify())


def _migrate_and_verify(guests: list[Guest], verify: bool = True) -> None:
    """Migrate every guest at once to its other host, then (with
    *verify*) verify each."""
    running: list[Running] = []
    for g in guests:
        if g.life.error:
            continue
        try:
            running.append(g.begin_migration())
        except (PyqemuError, TimeoutError) as e:
            g.life.error = g.life.error or str(e)
    deadline = time.monotonic() + max(
        (r.guest.w.deadline for r in running), default=0)
    for r in running:
        try:
            m = r.finish(deadline)
        except (PyqemuError, TimeoutError, subprocess.SubprocessError) as e:
            r.m.error = r.m.error or str(e)
            m = r.m
        r.guest.life.migrations.append(m)
        if m.error or m.aborted:
            r.guest.life.error = r.guest.life.error or (
                m.error or f"migration aborted after {m.seconds:.0f} s")
    for r in running:
        g = r.guest
        if g.life.error or not verify:
            continue
        _guard(g.life, functools.partial(_verify, g))


@contextlib.contextmanager
def guests(lab: Lab, configs: list[str], prefix: str,
           on: list[str] | None = None) -> Iterator[list[Guest]]:
    """Domains for *configs*, started together on host a (or the hosts
    named by *on*), their guests booting side by side, and prepared;
    removed on exit whatever happened."""
    made: list[Guest] = []
    try:
        for i, key in enumerate(configs):
            g = Guest(lab, CONFIGS[key], f"pq-op-{prefix}{i}-{key}")
            made.append(g)
            host = g.b if on and on[i] == "b" else g.a
            _guard(g.life, functools.partial(g.start, host))
        for g in made:
            if not g.life.error:
                _guard(g.life, g.prepare)
        yield made
    finally:
        for g in made:
            g.remove()


def measure(lab: Lab, runs: int = RUNS,
            configs: tuple[str, ...] = MEASURED) -> list[Life]:
    """*runs* domains per configuration, each migrated once from host a
    to host b, the configurations taking turns round by round.  One
    domain at a time: the others' guests would load the machine."""
    lives = []
    for r in range(runs):
        for key in configs:
            # one line per migration: each takes tens of seconds
            info(f"check operator ({accel.label()}): round {r + 1}/{runs}, "
                 f"{CONFIGS[key].label}")
            with guests(lab, [key], f"m{r}-") as made:
                _migrate_and_verify(made)
                lives.append(made[0].life)
    return lives


def at_once(lab: Lab, configs: list[str], prefix: str,
            on: list[str] | None = None) -> list[Life]:
    """Domains for *configs* (on host a, or the hosts named by *on*),
    booted side by side and migrated at once, each to its other host."""
    with guests(lab, configs, prefix, on) as made:
        _migrate_and_verify(made)
        return [g.life for g in made]


def concurrent(lab: Lab, n: int = CONCURRENT, config: str = "ours"
               ) -> list[Life]:
    """*n* domains with checkpoints and writers, migrated at once."""
    info(f"check operator: {n} domains ({CONFIGS[config].label}) at once")
    return at_once(lab, [config] * n, "c")


def mixed(lab: Lab) -> list[Life]:
    """Debian's libvirt and stock QEMU on host b, our libvirt and QEMU on
    host a: one domain from b to a and back.  It is checked at the end
    only (a check pauses the guest for good, see :meth:`Guest.verify`);
    its chain spans both migrations, and its bitmaps went through both."""
    info(f"check operator: mixed hosts ({CONFIGS['mixed'].label}), "
         "there and back")
    with guests(lab, ["mixed"], "x", on=["b"]) as made:
        _migrate_and_verify(made, verify=False)
        _migrate_and_verify(made)
        return [g.life for g in made]


# -- the report ---------------------------------------------------------------------

@dataclass
class Result:
    workload: Workload
    measured: list[Life]
    concurrent: list[Life]
    mixed: list[Life]
    seconds: float = 0.0

    def lives(self) -> list[Life]:
        return self.measured + self.concurrent + self.mixed

    @property
    def ok(self) -> bool:
        return bool(self.lives()) and all(lf.ok for lf in self.lives())

    def downtimes(self, key: str) -> list[float]:
        return [m.downtime_ms for lf in self.measured if lf.config == key
                for m in lf.migrations if m.downtime_ms is not None]

    def target(self) -> tuple[float, float] | None:
        """(ours, none) median downtimes, if both were measured."""
        ours, none = self.downtimes("ours"), self.downtimes("none")
        if not ours or not none:
            return None
        return statistics.median(ours), statistics.median(none)


def phases(m: Migration) -> dict[str, float]:
    """Where the downtime went, from the events: the source stopped and
    at pause-before-switchover (libvirt's cue to go on); the source
    sending the rest and inactivating its images ("device" to the
    destination's "completed", when it has loaded everything and
    activated its images); libvirt's finishing steps until the
    destination's RESUME."""
    t: dict[str, float] = {}
    for ms, side, name, status in m.timeline:
        key = f"{side} {status or name}"
        t.setdefault(key, ms)
    out = {}
    for label, a, b in (("stop to device", "src STOP", "src device"),
                        ("device to dst completed", "src device",
                         "dst completed"),
                        ("dst completed to RESUME", "dst completed",
                         "dst RESUME")):
        if a in t and b in t:
            out[label] = t[b] - t[a]
    return out


def _span(values: list[float], fmt: str = "{:.1f}") -> str:
    if not values:
        return "-"
    return (f"{fmt.format(statistics.median(values))} "
            f"({fmt.format(min(values))}-{fmt.format(max(values))})")


def _travel(ms: list[Migration]) -> str:
    return ", ".join(sorted({m.travel() for m in ms})) or "-"


def _live_sent(ms: list[Migration]) -> str:
    sent = [m.bitmap_stats["transferred"] for m in ms
            if "transferred" in m.bitmap_stats]
    down = [m.bitmap_stats["downtime-transferred"] for m in ms
            if "downtime-transferred" in m.bitmap_stats]
    if not sent:
        return "-"
    return (f"{fmt_bytes(statistics.median(sent))}, in the downtime at "
            f"most {fmt_bytes(max(down)) if down else '-'}")


def _chains(lives: list[Life]) -> str:
    checks = [c for lf in lives for c in lf.checks
              if c.restored_equal is not None]
    if not checks:
        return "-"
    return f"{sum(1 for c in checks if c.restored_equal)}/{len(checks)}"


def _yes(v: bool | None) -> str:
    return {True: "yes", False: "NO", None: "-"}[v]


def _done(ms: list[Migration]) -> list[Migration]:
    return [m for m in ms if not m.error and not m.aborted]


def _summary(res: Result) -> str:
    rows = []
    for key in dict.fromkeys(lf.config for lf in res.measured):
        lives = [lf for lf in res.measured if lf.config == key]
        ms = [m for lf in lives for m in lf.migrations]
        done = _done(ms)
        rows.append((
            CONFIGS[key].label, f"{len(done)}/{len(lives)}",
            _span(res.downtimes(key)),
            _span([float(m.qemu_downtime_ms) for m in done
                   if m.qemu_downtime_ms is not None], "{:.0f}"),
            _span([m.elapsed_ms / 1000 for m in done
                   if m.elapsed_ms is not None], "{:.2f}"),
            _span([m.seconds for m in done], "{:.2f}"),
            _travel(done), _live_sent(done), _chains(lives)))
    return markdown_table(
        ("configuration", "migrated", "downtime ms", "QEMU's downtime ms",
         "migration s", "virsh migrate s", "bitmaps went",
         "bitmap bytes sent (live)", "chains restored equal"), rows)


def _per_migration(lives: list[Life]) -> str:
    rows = []
    for lf in lives:
        for m in lf.migrations:
            ph = phases(m)
            # the check after the last migration (for the first of a
            # domain that goes there and back, none yet)
            c = lf.checks[-1] if lf.checks and m is lf.migrations[-1] \
                else None
            rows.append((
                lf.domain, f"{m.src} -> {m.dst}",
                f"{m.downtime_ms:.1f}" if m.downtime_ms is not None else "-",
                *(f"{ph[k]:.1f}" if k in ph else "-" for k in (
                    "stop to device", "device to dst completed",
                    "dst completed to RESUME")),
                fmt_bytes(m.ram_downtime_bytes),
                f"{m.seconds:.2f}", ",".join(
                    c for c in m.caps_enabled if c.startswith("dirty"))
                or "-", "FAILED" if m.error or m.aborted else m.travel(),
                _yes(c.restored_equal) if c else "-",
                _yes(c.checkpoints_valid) if c else "-"))
    return markdown_table(
        ("domain", "hosts", "downtime ms", "stop to device",
         "device to dst completed", "dst completed to RESUME",
         "RAM sent stopped", "virsh migrate s", "bitmap caps libvirt set",
         "bitmaps went",
         "chain equal", "checkpoints valid"), rows)


def _limit(w: Workload) -> str:
    if w.max_downtime_ms is None:
        return "no migrate-setmaxdowntime (QEMU's 300 ms)"
    return f"virsh migrate-setmaxdowntime {w.max_downtime_ms} ms"


def report(res: Result) -> str:
    """The tables, the findings, and as the last line the verdict."""
    w = res.workload
    out = [
        f"Domain: Linux guest, {w.memory_mib // 1024} GiB RAM, "
        f"{accel.label()}, writing "
        f"{w.writer.rate or 'as fast as it can'} x "
        f"{w.writer.bs // KiB} KiB per second through virtio-blk on an "
        f"iothread to a sparse {fmt_size(w.size)} qcow2 with "
        f"{w.checkpoints} checkpoints (bitmaps at "
        f"{w.granularity // KiB} KiB granularity, fully dirty: "
        f"{fmt_bytes(w.checkpoints * w.bitmap_bytes)}) and virtnbdbackup's "
        "own; shared storage; virsh migrate --live --unsafe, after "
        f"{_limit(w)}; libvirt's and QEMU's defaults otherwise.  "
        "Downtime: the source QEMU's STOP to the destination QEMU's "
        "RESUME (QEMU's timestamps, from the libvirtd logs); median "
        "(min-max).",
        "", _summary(res)]
    t = res.target()
    if t:
        ours, none = t
        verdict = "met" if ours - none <= TARGET_MS else "NOT met"
        out.append(f"\ntarget: with our libvirt and QEMU, the median "
                   f"downtime within {TARGET_MS:g} ms of the domain without "
                   f"checkpoints: {ours:.1f} against {none:.1f} ms, "
                   f"{ours - none:+.1f} ms: {verdict}")
    out += ["", "Each migration (phases in ms from the events):",
            _per_migration(res.measured)]
    if res.concurrent:
        out += ["", f"Concurrency: {len(res.concurrent)} domains "
                f"({CONFIGS[res.concurrent[0].config].label}) migrated at "
                "once:", _per_migration(res.concurrent)]
    if res.mixed:
        out += ["", f"Mixed hosts ({CONFIGS[res.mixed[0].config].label}):",
                _per_migration(res.mixed)]
    out.append("")
    for lf in res.lives():
        for c in lf.checks:
            if c.restored_equal is None:
                continue
            if not (c.full_alone_differs and c.moved_block_differs) or \
                    c.full_bitmaps != w.checkpoints:
                out.append(
                    f"{lf.domain}: full backup alone "
                    f"{'differs' if c.full_alone_differs else 'EQUALS'}, "
                    f"chain with a block moved "
                    f"{'differs' if c.moved_block_differs else 'EQUALS'}; "
                    f"{c.full_bitmaps} of {w.checkpoints} checkpoint "
                    "bitmaps fully dirty")
        if lf.error:
            out.append(f"{lf.domain}: FAILED: {lf.error}")
        for p in lf.qemu_problems:
            out.append(f"{lf.domain}: QEMU: {p}")
        for m in lf.migrations:
            if m.aborted:
                out.append(f"{lf.domain}: migration {m.src} -> {m.dst} "
                           f"aborted after {m.seconds:.0f} s (deadline "
                           f"{w.deadline:.0f} s)")
    checks = [c for lf in res.lives() for c in lf.checks
              if c.restored_equal is not None]
    out.append(f"operator check ({res.seconds:.0f} s): "
               + (f"every migration completed; {len(checks)} backup chains "
                  "restored equal to the disk, each control differed, every "
                  "checkpoint bitmap arrived fully dirty and validated"
                  if res.ok else "FAILED (see above)"))
    return "\n".join(out)


def run_all(layout: Layout, workload: Workload = Workload(),
            runs: int = RUNS, concurrency: int = CONCURRENT) -> Result:
    """Everything :func:`main` reports."""
    t = time.monotonic()
    with Lab(layout, workload) as lab:
        measured = measure(lab, runs)
        conc = concurrent(lab, concurrency) if concurrency else []
        mix = mixed(lab)
    return Result(workload, measured, conc, mix, time.monotonic() - t)


def to_json(res: Result) -> dict[str, Any]:
    return {"workload": dict(asdict(res.workload),
                             writer=asdict(res.workload.writer)),
            "domain_type": domain_type(), "seconds": res.seconds,
            "ok": res.ok, "lives": [asdict(lf) for lf in res.lives()]}


def main(layout: Layout, runs: int = RUNS,
         concurrency: int = CONCURRENT) -> int:
    """``pyqemu check operator``: build what is missing (both QEMU trees
    and the patched libvirt), run everything, print, and save under
    bench/operator; exit 1 unless every domain migrated, every chain
    restored equal and every checkpoint bitmap arrived whole.  The target
    is reported, not judged: it is a measurement."""
    build(layout)
    build_libvirt(layout)
    res = run_all(layout, runs=runs, concurrency=concurrency)
    text = report(res)
    out = save(layout, "operator", text, to_json(res))
    *body, verdict = text.splitlines()
    print("\n".join(body))
    print(f"wrote {out / 'results.md'}\nwrote {out / 'results.json'}")
    print(f"result: {verdict}")
    return 0 if res.ok else 1


__all__ = ["CONFIGS", "MEASURED", "Config", "Guest", "Lab", "Life",
           "Migration", "Result", "Side", "Workload", "at_once", "concurrent",
           "main", "measure", "mixed", "report", "run_all",
           "template"]
