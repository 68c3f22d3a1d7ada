"""``pyqemu check libvirt``: libvirt 9.0 migrates a guest between two
hosts while it writes, and a real backup tool proves no bit was lost.

For each QEMU build (stock, patched) and each kind of storage:

* ``shared``: the images sit at one path both hosts see (a directory
  outside their private mount namespaces); QEMU inactivates the image on
  the source, which stores the persistent bitmaps into the qcow2, and the
  destination loads them at activation.  libvirt does not migrate bitmaps
  through the migration stream in this mode.
* ``copy``: ``--copy-storage-all``; each host has its own image at the
  same path (/var/lib/libvirt/images, private per host).  libvirt mirrors
  the disk over NBD and enables the ``dirty-bitmaps`` capability with a
  ``block-bitmap-mapping`` for the checkpoints' bitmaps.

the same steps run (each timed; a failure names the step, the command and
its stderr tail):

1. define and start a TCG domain whose boot sector writes to a 4 TiB
   sparse qcow2 IDE disk forever (tests/guest/writer.S; every sector
   carries its LBA and the number of the write);
2. ``virsh checkpoint-create-as``: what libvirt creates in QEMU is
   recorded, then the checkpoint is deleted again, because virtnbdbackup
   refuses a chain with checkpoints it did not create ("foreign");
3. ``virtnbdbackup -l full`` (creates checkpoint virtnbdbackup.0);
4. ``virsh migrate --live`` to the other host while the guest writes;
   the capabilities and bitmap mapping libvirt sent to QEMU are read back
   from libvirtd's QMP log; downtime from ``virsh domjobinfo --completed``;
5. more writes on the destination, then ``virsh suspend`` (so the disk
   stops changing) and ``virtnbdbackup -l inc`` there (virtnbdbackup
   redefines checkpoint virtnbdbackup.0 from its backup directory: libvirt
   does not migrate checkpoint metadata);
6. ``virsh destroy``, ``virtnbdrestore`` of the chain, ``qemu-img compare``
   with the disk.  Two controls prove that the comparison can fail: the
   full backup restored alone must differ from the disk (blocks missing),
   and so must the restored chain with one written block copied over
   another (a block at the wrong place, which a guest writing the same
   data everywhere could not show).

Two configurations: stock QEMU under Debian's libvirt 9.0, as operators
run it today, and the patched QEMU under the patched libvirt
(patches/libvirt, built by ``./run build --libvirt``), which turns
``dirty-bitmaps-live`` on with ``dirty-bitmaps`` whenever the source QEMU
has it: with ``--copy-storage-all``, where 9.0 already migrates the
checkpoint's bitmap, and with shared storage, where 9.0 leaves it to the
qcow2 (stored by the source and loaded by the destination inside the
downtime).  Nothing goes through ``<qemu:commandline>``.  How the bitmap
travelled is read back, not assumed: the capabilities libvirt sent (its
QMP log) and the patched QEMU's ``dirty-bitmaps`` statistics in the last
``query-migrate`` reply libvirt received.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..build.driver import build
from ..build.libvirt import build as build_libvirt
from ..errors import PyqemuError
from ..log import info
from ..machine import guest, images
from ..machine.libvirt import (
    DiskSpec,
    DomainSpec,
    Host,
    Hosts,
    LibvirtError,
    checkpoint_disks,
    default_machine,
    tail,
)
from ..paths import Layout
from ..tree.libvirt import LibvirtTree
from ..util.proc import run
from ..util.results import save
from ..util.table import markdown_table
from ..util.units import KiB, TiB, fmt_bytes

DISK_SIZE = 4 * TiB
#: Every sector the guest writes carries its LBA and the write's number:
#: a block lost from the backup chain cannot read back as equal zeros, and
#: one restored at the wrong place or from an older write differs too.
WRITER = guest.WriterConfig(stamp=True)
STORAGES = ("shared", "copy")
#: writes the guest makes between steps (one serial report per 16)
WRITES_BETWEEN = 64
#: Seconds a live migration may take before the downtime limit is raised
#: (``virsh migrate-setmaxdowntime``) to RAISED_DOWNTIME_MS, as an admin
#: would when stock QEMU cannot converge (it counts a bitmap's bits as
#: pending bytes and sends bitmaps only once the guest is stopped; a
#: ``virsh suspend`` does not help: the estimate stays).  After GIVE_UP
#: more seconds the migration is aborted and reported as not converged.
#: A patched migration takes 6-9 s here (copy storage included), and the
#: test asserts that it never needs the raise.
MIGRATE_TIMEOUT = 20
RAISED_DOWNTIME_MS = 30_000
GIVE_UP = 180
#: (QEMU flavour, libvirt) pairs the check runs: today's, and the series'
CONFIGS = (("stock", "debian"), ("patched", "ours"))


# -- what the QEMU binary offers ------------------------------------------

@dataclass(frozen=True)
class Probe:
    """What a built QEMU offers for bitmap migration, asked over QMP."""

    flavour: str
    binary: Path
    capabilities: tuple[str, ...]       # migration capabilities

    @property
    def live_capability(self) -> bool:
        return "dirty-bitmaps-live" in self.capabilities


def probe(layout: Layout, flavour: str) -> Probe:
    """Ask the binary itself (``-M none -qmp stdio``): which migration
    capabilities it has."""
    qemu = layout.binary("qemu-system-x86_64", flavour)
    cmds = [{"execute": "qmp_capabilities"},
            {"execute": "query-migrate-capabilities"},
            {"execute": "quit"}]
    res = run([qemu, "-M", "none", "-nodefaults", "-display", "none",
               "-qmp", "stdio"], input="\n".join(map(json.dumps, cmds)) + "\n",
              timeout=60, check=False)
    replies = [json.loads(line) for line in res.stdout.splitlines()
               if line.startswith("{")]
    returns = [r["return"] for r in replies if "return" in r]
    if len(returns) < 2:
        raise LibvirtError(f"probe {flavour} QEMU {qemu}: exit "
                           f"{res.returncode}: {tail(res.stderr)}")
    caps = tuple(c["capability"] for c in returns[1])
    return Probe(flavour, qemu, caps)


def domcapabilities(host: Host, p: Probe) -> str:
    """libvirt's verdict on the binary: its default machine type, or the
    error libvirt gives."""
    out = host.virsh(f"domcapabilities of {p.flavour} QEMU",
                     "domcapabilities", "--emulatorbin", str(p.binary),
                     "--virttype", "qemu", "--arch", "x86_64")
    return default_machine(out) or "accepted"


# -- the domain -----------------------------------------------------------

def domain(name: str, emulator: Path, inside: str, serial: Path) -> DomainSpec:
    """The writer guest as a libvirt domain: its boot sector (raw, hda)
    and the disk it writes (qcow2, hdb), both in the directory *inside*
    (a path as the hosts see it)."""
    return DomainSpec(name, emulator,
                      (DiskSpec(f"{inside}/boot.img", "hda", "raw"),
                       DiskSpec(f"{inside}/disk.qcow2", "hdb", "qcow2")),
                      serial)


# -- results --------------------------------------------------------------

@dataclass
class Result:
    flavour: str
    storage: str
    libvirt: str = "debian"         # whose libvirtd: "debian" or "ours"
    live_on: bool | None = None     # libvirt enabled dirty-bitmaps-live
    steps: dict[str, float] = field(default_factory=dict)
    writes: dict[str, int] = field(default_factory=dict)
    jobinfo: dict[str, str] = field(default_factory=dict)
    unsafe: str = ""                # libvirt's refusal without --unsafe
    raised_downtime: bool = False   # not converged in MIGRATE_TIMEOUT
    converged: bool = True          # False: aborted after GIVE_UP too
    caps_enabled: tuple[str, ...] = ()      # what libvirt turned on
    caps_sent: tuple[str, ...] = ()         # every capability libvirt set
    mapping: list[Any] = field(default_factory=list)
    bitmap_stats: dict[str, Any] = field(default_factory=dict)
    checkpoint: str = ""            # what checkpoint-create-as made
    dst_bitmaps: str = ""           # bitmaps on the destination after
    dst_checkpoints: str = ""       # libvirt's checkpoints there, before
    redefined: bool = False         # virtnbdbackup redefined them
    sizes: dict[str, int] = field(default_factory=dict)
    restored_equal: bool | None = None
    control_differs: bool | None = None     # the full backup alone
    misplaced_differs: bool | None = None   # a block at the wrong place
    error: str = ""

    @property
    def downtime_ms(self) -> int | None:
        m = re.match(r"(\d+)", self.jobinfo.get("Total downtime", ""))
        return int(m.group(1)) if m else None

    @property
    def ok(self) -> bool:
        """Migrated, and the chain restores to the disk; or a stock build
        that did not converge (the limitation the series removes, reported
        as a result like the demo does)."""
        if not self.converged and self.flavour == "stock" and not self.error:
            return True
        return (not self.error and self.restored_equal is True
                and self.control_differs is True
                and self.misplaced_differs is True)


@contextlib.contextmanager
def _step(r: Result, name: str) -> Iterator[None]:
    t = time.monotonic()
    try:
        yield
    finally:
        r.steps[name] = time.monotonic() - t


def _qmp(host: Host, dom: str, step: str, command: str,
         **arguments: Any) -> Any:
    """A QMP command through libvirt (which marks the domain tainted)."""
    msg: dict[str, Any] = {"execute": command}
    if arguments:
        msg["arguments"] = arguments
    out = host.virsh(step, "qemu-monitor-command", dom, json.dumps(msg))
    return json.loads(out)["return"]


def _bitmaps(host: Host, dom: str, step: str) -> str:
    """name(persistent, granularity, dirty bytes) of hdb's bitmaps."""
    out = []
    for n in _qmp(host, dom, step, "query-named-block-nodes", flat=True):
        if n.get("drv") != "qcow2":
            continue
        for b in n.get("dirty-bitmaps", []):
            out.append(f"{b['name']}(persistent={b.get('persistent')}, "
                       f"granularity={b['granularity'] // KiB} KiB, "
                       f"dirty={b['count'] // KiB} KiB)")
    return ", ".join(out) or "none"


def _bitmap_stats(host: Host, since: int) -> dict[str, Any]:
    """The patched QEMU's ``query-migrate`` ``dirty-bitmaps`` statistics
    from the last reply libvirt received since log mark *since* (libvirt
    polls query-migrate itself), with the migration status; empty with
    stock QEMU."""
    ret = host.monitor_log(since).last_return_with("dirty-bitmaps")
    if ret is None or not isinstance(ret["dirty-bitmaps"], dict):
        return {}
    return dict(ret["dirty-bitmaps"], status=ret.get("status"))


def _du(path: Path) -> int:
    """Bytes actually allocated under *path* (sparse files count small)."""
    if path.is_file():
        return path.stat().st_blocks * 512
    return sum(p.stat().st_blocks * 512 for p in path.rglob("*")
               if p.is_file())


def _restore(host: Host, backup_dir: Path, out: Path, until: str | None,
             step: str) -> Path:
    """virtnbdrestore of disk hdb into *out*; the restored image.  It runs
    on a host because virtnbdrestore always connects to libvirt."""
    out.mkdir()
    argv = ["virtnbdrestore", "-n", "-d", "hdb", "-i", str(backup_dir),
            "-o", str(out), "-L", str(out / "restore.log"),
            "-f", str(out / "nbd.sock")]
    if until:
        argv += ["--until", until]
    host.run(step, *argv, timeout=600)
    got = [p for p in out.iterdir() if p.suffix not in (".log", ".xml",
                                                         ".sock")]
    if len(got) != 1:
        raise LibvirtError(f"{step}: expected one restored image in {out}, "
                           f"found {sorted(got)}")
    images.wait_closed(got[0])
    return got[0]


def _migrate(a: Host, b: Host, dom: str, flags: list[str],
             r: Result) -> tuple[int, str]:
    """``virsh migrate`` from *a* to *b*, watched: past MIGRATE_TIMEOUT
    the downtime limit is raised, past GIVE_UP the job is aborted
    (``r.converged`` False).  Returns virsh's exit code and stderr."""
    proc = a.popen("virsh", "-c", "qemu:///system", "migrate", *flags, dom,
                   b.uri)
    try:
        try:
            _, err = proc.communicate(timeout=MIGRATE_TIMEOUT)
            return proc.returncode, err
        except subprocess.TimeoutExpired:
            pass
        a.virsh("raise the downtime limit", "migrate-setmaxdowntime", dom,
                str(RAISED_DOWNTIME_MS))
        r.raised_downtime = True
        try:
            _, err = proc.communicate(timeout=GIVE_UP)
            return proc.returncode, err
        except subprocess.TimeoutExpired:
            pass
        a.virsh("abort the migration that does not converge", "domjobabort",
                dom, check=False)
        r.converged = False
        _, err = proc.communicate(timeout=120)
        return proc.returncode, err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def scenario(layout: Layout, hosts: Hosts, a: Host, b: Host, flavour: str,
             storage: str, p: Probe) -> Result:
    """One flavour x storage run from host a to host b; never raises for a
    failing step: the step, command and stderr go into ``Result.error``."""
    if storage not in STORAGES:
        raise ValueError(f"unknown storage {storage!r}; known: {STORAGES}")
    r = Result(flavour, storage)
    qemu_img = layout.binary("qemu-img", flavour)
    qemu_io = layout.binary("qemu-io", flavour)
    dom = f"pqlv-{flavour}-{storage}"
    base = hosts.shared / dom
    base.mkdir()
    serial = base / "serial.log"
    backup = base / "backup"
    if storage == "shared":
        inside = str(base)
        dirs = [base]
    else:
        inside = f"/var/lib/libvirt/images/{dom}"
        dirs = [a.private(inside), b.private(inside)]
    try:
        with _step(r, "create images"):
            for d in dirs:
                d.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(guest.build(layout, WRITER), d / "boot.img")
                run([qemu_img, "create", "-q", "-f", "qcow2",
                     d / "disk.qcow2", str(DISK_SIZE)],
                    what="create the 4 TiB qcow2")
        xml = base / "domain.xml"
        xml.write_text(domain(dom, p.binary, inside, serial).xml())
        with _step(r, "define + start"):
            a.virsh("define", "define", str(xml))
            a.virsh("start", "start", dom)
        r.writes["started"] = guest.wait_progress(serial, WRITES_BETWEEN, 120)

        with _step(r, "checkpoint-create-as"):
            # the raw boot disk cannot hold a bitmap
            a.virsh("checkpoint-create-as", "checkpoint-create-as", dom,
                    "pq-manual", "--diskspec", "hda,checkpoint=no",
                    "--diskspec", "hdb,checkpoint=bitmap")
            disks = checkpoint_disks(a.virsh(
                "checkpoint-dumpxml", "checkpoint-dumpxml", dom, "pq-manual"))
            r.checkpoint = "; ".join(
                f"{d.name}: {d.checkpoint} {d.bitmap or ''}".strip()
                for d in disks) + " -> in QEMU: " + \
                _bitmaps(a, dom, "bitmaps of the checkpoint")
            a.virsh("checkpoint-delete", "checkpoint-delete", dom,
                    "pq-manual")
        with _step(r, "virtnbdbackup full"):
            a.run("virtnbdbackup -l full", "virtnbdbackup", "-n", "-d", dom,
                  "-l", "full", "-o", str(backup),
                  "-f", str(base / "nbd-full.sock"), timeout=600)
        r.writes["after full"] = guest.wait_progress(
            serial, guest.progress(serial) + WRITES_BETWEEN, 120)

        mark = a.log_mark()
        flags = ["--live", "--persistent", "--undefinesource"]
        flags += ["--copy-storage-all"] if storage == "copy" else []
        r.writes["migrate start"] = guest.progress(serial)
        with _step(r, "virsh migrate"):
            rc, err = _migrate(a, b, dom, flags, r)
            if rc != 0 and "unsafe" in err.lower() and r.converged:
                # libvirt cannot know that /tmp is the same file system
                # on both "hosts"; see the report
                r.unsafe = tail(err, 3)
                rc, err = _migrate(a, b, dom, flags + ["--unsafe"], r)
            if not r.converged:
                return r
            if rc != 0:
                raise LibvirtError(f"[host a] virsh migrate "
                                   f"{' '.join(flags)} {dom} {b.uri}: "
                                   f"exit {rc}: {tail(err)}")
        r.writes["migrate end"] = guest.progress(serial)
        r.jobinfo = b.completed_job(dom)
        qmp = a.monitor_log(mark)
        sets = qmp.sent("migrate-set-capabilities")
        if sets:
            caps = sets[-1]["arguments"]["capabilities"]
            r.caps_sent = tuple(c["capability"] for c in caps)
            r.caps_enabled = tuple(c["capability"] for c in caps
                                   if c["state"])
        r.live_on = "dirty-bitmaps-live" in r.caps_enabled
        r.bitmap_stats = _bitmap_stats(a, mark)
        for s in qmp.sent("migrate-set-parameters"):
            r.mapping += s["arguments"].get("block-bitmap-mapping", [])
        r.dst_bitmaps = _bitmaps(b, dom, "bitmaps on the destination")
        r.dst_checkpoints = b.virsh("checkpoints on the destination",
                                    "checkpoint-list", dom, "--name").strip()

        r.writes["on destination"] = guest.wait_progress(
            serial, r.writes["migrate end"] + WRITES_BETWEEN, 120)
        b.virsh("suspend", "suspend", dom)
        r.writes["suspended"] = guest.progress(serial)
        with _step(r, "virtnbdbackup inc"):
            b.run("virtnbdbackup -l inc", "virtnbdbackup", "-n", "-d", dom,
                  "-l", "inc", "-o", str(backup),
                  "-f", str(base / "nbd-inc.sock"), timeout=600)
        b.virsh("destroy", "destroy", dom)
        disk = dirs[-1] / "disk.qcow2"
        r.redefined = any("Redefine missing checkpoint" in
                          f.read_text(errors="replace")
                          for f in backup.glob("backup.inc.*.log"))

        with _step(r, "virtnbdrestore"):
            restored = _restore(b, backup, base / "restore", None,
                                "virtnbdrestore of the chain")
        with _step(r, "qemu-img compare"):
            r.restored_equal = images.compare(qemu_img, restored,
                                              disk) == "identical"
        control = _restore(b, backup, base / "control",
                           "virtnbdbackup.0", "virtnbdrestore of the full "
                           "backup alone")
        r.control_differs = images.compare(qemu_img, control,
                                           disk) != "identical"
        # write 1's block copied over write 0's: both were written before
        # the full backup, so both are in every restored image
        moved = images.misplace(qemu_img, qemu_io, restored,
                                base / "misplaced", WRITER.lba(1),
                                WRITER.lba(0), WRITER.sectors)
        r.misplaced_differs = images.compare(qemu_img, moved,
                                             disk) != "identical"
        fulls = list(backup.glob("hdb.full.data"))
        incs = list(backup.glob("hdb.inc.*.data"))
        r.sizes = {"disk": _du(disk),
                   "full": sum(_du(f) for f in fulls),
                   "inc": sum(_du(f) for f in incs)}
    except (PyqemuError, TimeoutError) as e:
        r.error = str(e)
    finally:
        for h in (a, b):
            h.virsh("destroy", "destroy", dom, check=False)
            h.virsh("undefine", "undefine", dom, "--checkpoints-metadata",
                    check=False)
    return r


# -- the whole check ------------------------------------------------------

@dataclass
class Check:
    probes: list[Probe]
    domcaps: dict[str, str]         # flavour -> libvirt's verdict
    results: list[Result]

    @property
    def ok(self) -> bool:
        return bool(self.results) and all(r.ok for r in self.results)


def libvirtd(layout: Layout, which: str) -> dict[str, Path]:
    """Hosts(libvirtd=...) for *which* libvirt on both hosts: "debian"
    (the package's daemon) or "ours" (patches/libvirt's build)."""
    if which == "debian":
        return {}
    daemon = LibvirtTree.of(layout).libvirtd
    if not daemon.exists():
        raise LibvirtError(f"{daemon} is missing: run "
                           "'./run build --libvirt'")
    return {"a": daemon, "b": daemon}


def run_all(layout: Layout, configs: tuple[tuple[str, str], ...] = CONFIGS,
            storages: tuple[str, ...] = STORAGES) -> Check:
    """Every (QEMU flavour, libvirt) x storage scenario, one pair of
    libvirt hosts per libvirt."""
    check = Check([], {}, [])
    for flavour, which in configs:
        p = probe(layout, flavour)
        check.probes.append(p)
        hosts = Hosts(libvirtd=libvirtd(layout, which))
        with hosts as (a, b):
            hosts.use_tools({t: layout.binary(t, flavour)
                             for t in ("qemu-img", "qemu-nbd")})
            check.domcaps[flavour] = domcapabilities(a, p)
            for storage in storages:
                # one line per scenario: each takes tens of seconds
                info(f"check libvirt: {flavour} QEMU, {which} libvirt, "
                     f"{storage} storage")
                r = scenario(layout, hosts, a, b, flavour, storage, p)
                r.libvirt = which
                check.results.append(r)
    return check


def travel(r: Result) -> str:
    """How the checkpoint's bitmap reached the destination, from what was
    observed: the capabilities libvirt enabled and the bytes the patched
    QEMU counted."""
    sent = r.bitmap_stats.get("transferred", 0)
    if "dirty-bitmaps" not in r.caps_enabled:
        return "in the qcow2 (libvirt: dirty-bitmaps off)"
    if not r.live_on:
        return "migration stream, in the downtime"
    return (f"migration stream, live: {fmt_bytes(sent)} sent, "
            f"{fmt_bytes(r.bitmap_stats.get('downtime-transferred'))} "
            "in the downtime")


def _ms(r: Result, key: str) -> str:
    v = r.jobinfo.get(key, "")
    return v.replace(" ms", "") if v else "-"


def _mapping(m: list[Any]) -> str:
    return "; ".join(
        f"{n['node-name']}: " + ", ".join(b["name"] for b in n["bitmaps"])
        for n in m) or "none"


def _yes(v: bool | None) -> str:
    return {True: "yes", False: "NO", None: "-"}[v]


def report(check: Check) -> str:
    """The table, the findings, and as the last line the verdict."""
    out = []
    for p in check.probes:
        out.append(
            f"{p.flavour} QEMU {p.binary}: libvirt domcapabilities -> "
            f"{check.domcaps.get(p.flavour, 'not asked')}; capability "
            f"dirty-bitmaps-live: {'yes' if p.live_capability else 'no'}")
    rows = []
    for r in check.results:
        rows.append((
            f"{r.flavour} QEMU, {r.libvirt} libvirt", r.storage,
            f"{r.steps.get('virsh migrate', 0):.1f}"
            + (" (limit raised)" if r.raised_downtime else "")
            if r.converged else "not converged",
            _ms(r, "Total downtime"), _ms(r, "Downtime w/o network"),
            ",".join(c for c in r.caps_enabled if c != "events") or "-",
            travel(r) if r.converged and r.caps_sent else "-",
            f"{r.writes.get('migrate end', 0) - r.writes.get('migrate start', 0)}",
            fmt_bytes(r.sizes.get("full")), fmt_bytes(r.sizes.get("inc")),
            _yes(r.restored_equal), _yes(r.control_differs),
            _yes(r.misplaced_differs)))
    out.append("")
    out.append(markdown_table(
        ("QEMU, libvirt", "storage", "virsh migrate s", "downtime ms",
         "w/o network ms", "caps libvirt set", "bitmap travelled",
         "writes during", "full backup", "inc backup", "restored == disk",
         "full alone != disk", "block moved != disk"), rows))
    out.append("")
    for r in check.results:
        head = f"{r.flavour}/{r.storage}:"
        if r.error:
            out.append(f"{head} FAILED: {r.error}")
        steps = ", ".join(f"{k} {v:.1f}s" for k, v in r.steps.items())
        out.append(f"{head} steps: {steps}")
        if r.checkpoint:
            out.append(f"{head} checkpoint-create-as made {r.checkpoint}")
        if r.raised_downtime:
            out.append(f"{head} not converged in {MIGRATE_TIMEOUT} s; "
                       "virsh migrate-setmaxdowntime "
                       f"{RAISED_DOWNTIME_MS} ms " +
                       ("let it complete" if r.converged else
                        f"did not help within {GIVE_UP} s: aborted"))
        if r.unsafe:
            out.append(f"{head} without --unsafe libvirt said: "
                       + r.unsafe.replace("\n", " "))
        if r.caps_sent:
            out.append(f"{head} libvirt set capabilities {', '.join(r.caps_sent)};"
                       f" enabled: {', '.join(r.caps_enabled) or 'none'}")
        out.append(f"{head} block-bitmap-mapping from libvirt: "
                   f"{_mapping(r.mapping)}; bitmaps on the destination: "
                   f"{r.dst_bitmaps or '-'}")
        if r.converged and r.restored_equal is not None:
            out.append(f"{head} libvirt checkpoints on the destination "
                       f"after the migration: {r.dst_checkpoints or 'none'}"
                       "; virtnbdbackup redefined them from its backup "
                       f"directory: {'yes' if r.redefined else 'no'}")
        if r.bitmap_stats:
            bs = r.bitmap_stats
            out.append(f"{head} QEMU's dirty-bitmaps statistics (last "
                       f"query-migrate by libvirt, status "
                       f"{bs.get('status')}): sent "
                       f"{fmt_bytes(bs.get('transferred'))}, of which in "
                       f"downtime {fmt_bytes(bs.get('downtime-transferred'))}"
                       f", chunks sent again {bs.get('resent-chunks', '-')}")
        if r.sizes:
            out.append(f"{head} disk {fmt_bytes(r.sizes['disk'])} allocated "
                       f"of {DISK_SIZE // TiB} TiB; writes "
                       + ", ".join(f"{k} {v}" for k, v in r.writes.items()))
    migrated = [r for r in check.results if r.converged]
    equal = sum(1 for r in migrated if r.restored_equal)
    stuck = [f"{r.flavour}/{r.storage}" for r in check.results
             if not r.converged]
    why = f"; {', '.join(stuck)} did not converge" if stuck else ""
    if check.ok:
        out.append(f"restored disk equals the disk: yes ({equal}/"
                   f"{len(migrated)} migrated scenarios, each full backup "
                   f"alone and each with a block moved differs{why})")
    else:
        out.append(f"restored disk equals the disk: NO (equal in {equal}/"
                   f"{len(migrated)} migrated scenarios{why}; see the "
                   "failures above)")
    return "\n".join(out)


def main(layout: Layout,
         configs: tuple[tuple[str, str], ...] = CONFIGS) -> int:
    """``pyqemu check libvirt``: build if needed, run, print, and save
    under bench/libvirt; exit 1 unless every scenario is as it must be."""
    build(layout)
    build_libvirt(layout)
    check = run_all(layout, configs)
    text = report(check)
    out = save(layout, "libvirt", text, {
        "probes": [dict(asdict(p), binary=str(p.binary))
                   for p in check.probes],
        "domcapabilities": check.domcaps,
        "results": [dict(asdict(r), downtime_ms=r.downtime_ms, ok=r.ok,
                         bitmap_travelled=travel(r))
                    for r in check.results]})
    *body, verdict = text.splitlines()
    print("\n".join(body))
    print(f"wrote {out / 'results.md'}\nwrote {out / 'results.json'}")
    print(f"result: {verdict}")
    return 0 if check.ok else 1
