"""An incremental backup chain that survives a live migration, checked by
restoring it: ``pyqemu check backup`` and tests/test_backup.py.

Bitmaps exist for incremental backup: after a full backup, a bitmap names
every cluster changed since, and the next backup copies only those.  If
migration loses one bit, the restored chain silently differs from the
disk.  So the proof is a restore, not a checksum of the bitmap:

1. full backup: one ``transaction`` adds the bitmap and starts a
   ``blockdev-backup sync=top`` (the disk has no backing file, so that is
   all of its data) into a qcow2 added with ``blockdev-add``;
2. the guest writes;
3. live migration over shared storage (both QEMUs open the same image),
   ``dirty-bitmaps`` (plus ``dirty-bitmaps-live`` where the build has it),
   while the guest keeps writing;
4. the guest writes on the destination;
5. the destination's vCPUs are stopped, and an incremental backup
   (``sync=incremental`` with the migrated bitmap) goes into a qcow2
   whose backing file is the full backup;
6. the destination quits, and ``qemu-img compare`` of the restored chain
   (incremental over full) with the disk must find them identical.  The
   incremental image, by ``qemu-img map`` of its own layer, must hold no
   cluster the guest did not write after the full backup, and every
   cluster it surely wrote after it.

"Which clusters the guest wrote" comes from the guest, not from QEMU: the
Linux guest's writer uses a seeded generator that
:func:`pyqemu.machine.linuxguest.write_offsets` replays, and its serial console
says how many writes were done at each step.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from qemu.qmp import ExecuteError

from ..build.driver import build
from ..errors import PyqemuError
from ..log import info
from ..machine import accel, images, linuxguest, migration
from ..machine.linuxguest import WriterConfig
from ..machine.vm import VM, Pair
from ..paths import Layout
from ..util.proc import run as run_command
from ..util.results import save
from ..util.table import markdown_table
from ..util.units import GiB, KiB, MiB, TiB

BITMAP = "backup"
#: Cluster size of the backup images.  The backup job copies in units of
#: max(64 KiB, target cluster size), so this is also the unit in which
#: the incremental image is compared with the guest's writes.
CLUSTER = 64 * KiB


class BackupError(PyqemuError):
    """A step of the scenario failed; the message names the step."""


@dataclass(frozen=True)
class Scenario:
    """One size of the backup scenario."""

    name: str
    disk_size: int
    granularity: int
    writer: WriterConfig
    #: migration parameters on the source
    params: dict[str, Any] = field(default_factory=dict)
    #: guest writes after the full backup, and again on the destination
    writes_between: int = 1024
    #: how long the migration may take before it counts as not converged
    migration_timeout: float = 60

    @property
    def bitmap_bytes(self) -> int:
        return self.disk_size // self.granularity // 8


#: Stock QEMU migrates this: its bitmap is 128 KiB, small enough for the
#: stop-and-copy phase even with stock's pending estimate (bits counted
#: as bytes: 1 MB for a 300 ms downtime limit).
SMALL = Scenario(
    "64 GiB, 64 KiB granularity", 64 * GiB, 64 * KiB,
    WriterConfig(length=GiB, seed=11, kick_ms=linuxguest.KICK_MS),
    {"max-bandwidth": 64 * MiB, "downtime-limit": 300})

#: Only the patched build migrates this: 4 TiB at 4 KiB granularity is a
#: 128 MiB bitmap, which stock can only send in the downtime and whose
#: pending estimate (1 Gi "bytes") never lets precopy finish.  Sent live at
#: 16 MiB/s it takes 8 s, long enough for thousands of guest writes.
#: They land in 64 GiB beyond 3 TiB (offsets past 2^32 sectors): spread
#: over all 4 TiB, every write allocates a qcow2 L2 table and misses
#: QEMU's L2 cache, and the guest manages only about 120 writes/s.
LARGE = Scenario(
    "4 TiB, 4 KiB granularity", 4 * TiB, 4 * KiB,
    WriterConfig(offset=3 * TiB, length=64 * GiB, seed=12,
                 kick_ms=linuxguest.KICK_MS),
    {"max-bandwidth": 16 * MiB, "downtime-limit": 300},
    migration_timeout=300)

SCENARIOS = {"small": SMALL, "large": LARGE}


@dataclass
class BackupResult:
    scenario: str
    flavour: str
    live: bool = False
    #: what the guest ran on, "KVM" or "TCG" ("-": it did not start)
    accel: str = "-"
    boot_s: float = 0.0
    writes_per_s: float = 0.0
    migration: str = "-"
    total_ms: int | None = None
    downtime_ms: int | None = None
    #: guest writes between the start and the end of the migration
    live_writes: int = 0
    full_clusters: int = 0
    dirty_clusters: int = 0          # bitmap, before the incremental backup
    inc_clusters: int = 0            # allocated in the incremental layer
    written_clusters: int = 0        # writes possibly after the full backup
    surely_written: int = 0          # writes surely after the full backup
    extra: int = 0                   # in the increment, never written
    missing: int = 0                 # surely written, not in the increment
    compare: str = "-"
    #: writes that took over 0.5 s (a lost completion interrupt, reaped
    #: by the guest's background read: see linuxguest.KICK_MS)
    stalls: int = 0
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return (self.migration == "completed" and self.compare == "identical"
                and self.extra == 0 and self.missing == 0
                and self.inc_clusters > 0)


# -- helpers ---------------------------------------------------------------

def _create(layout: Layout, flavour: str, path: Path, size: int,
            backing: Path | None = None) -> None:
    args: list[str | Path] = ["create", "-q", "-f", "qcow2", "-o",
                              f"cluster_size={CLUSTER}"]
    if backing is not None:
        args += ["-b", backing, "-F", "qcow2"]
    run_command([layout.binary("qemu-img", flavour), *args, path, str(size)],
                what=f"qemu-img create {path.name}")


def allocated_clusters(layout: Layout, flavour: str, image: Path) -> set[int]:
    """Clusters holding data in *image*'s own layer (not its backing)."""
    res = run_command([layout.binary("qemu-img", flavour), "map",
                       "--output=json", image],
                      what=f"qemu-img map {image.name}")
    out: set[int] = set()
    for extent in json.loads(res.stdout):
        if extent["depth"] == 0 and extent["data"]:
            start, length = extent["start"], extent["length"]
            out.update(range(start // CLUSTER,
                             (start + length - 1) // CLUSTER + 1))
    return out


def compare(layout: Layout, flavour: str, a: Path, b: Path) -> str:
    """:func:`pyqemu.machine.images.compare` with *flavour*'s qemu-img."""
    return images.compare(layout.binary("qemu-img", flavour), a, b)


def assert_running(vm: VM) -> None:
    """A QEMU that exited on its own (abort, assertion) fails the run."""
    if not vm.is_running():
        end = vm.shutdown()
        raise BackupError(f"{vm.name} QEMU exited with status {end.code}; "
                          f"its log:\n{end.log[-3000:]}")


def run_job(vm: VM, job: str, command: str, timeout: float = 600,
            **args: Any) -> None:
    """Run a block job command and wait for its BLOCK_JOB_COMPLETED."""
    vm.cmd(command, **{"job-id": job}, **args)
    wait_job(vm, job, timeout)


def wait_job(vm: VM, job: str, timeout: float = 600) -> None:
    # an event, not a poll: query-jobs forgets a job once it concluded
    ev = vm.machine.event_wait("BLOCK_JOB_COMPLETED", timeout=timeout,
                               match={"data": {"device": job}})
    if ev is None:
        raise BackupError(f"job {job} not completed after {timeout:.0f}s "
                          f"(jobs: {vm.cmd('query-jobs')})")
    if "error" in ev["data"]:
        raise BackupError(f"job {job} failed: {ev['data']['error']}")


def _add_image(vm: VM, node: str, path: Path) -> None:
    """A backup target: its backing file (if any) stays closed; the backup
    only writes the clusters it copies."""
    vm.cmd("blockdev-add", driver="qcow2", **{"node-name": node},
           file={"driver": "file", "filename": str(path)}, backing=None)


def _has_capability(vm: VM, name: str) -> bool:
    return any(c["capability"] == name
               for c in vm.cmd("query-migrate-capabilities"))


def _dirty_count(vm: VM) -> int:
    return int(vm.bitmaps()[("disk0", BITMAP)]["count"])


# -- the scenario ----------------------------------------------------------

def run(layout: Layout, scenario: Scenario, flavour: str,
        workdir: Path | None = None) -> BackupResult:
    """Run the whole chain; raises a PyqemuError when a step breaks,
    returns the measurements (``ok`` says whether the chain restored the
    disk)."""
    with tempfile.TemporaryDirectory(prefix="pq-b-", dir="/tmp") as tmp:
        return _run(layout, scenario, flavour, workdir or Path(tmp))


def _run(layout: Layout, scenario: Scenario, flavour: str,
         workdir: Path) -> BackupResult:
    t_start = time.monotonic()
    res = BackupResult(scenario.name, flavour)
    cfg = scenario.writer
    report = cfg.report
    disk_img, full_img = workdir / "disk.qcow2", workdir / "full.qcow2"
    inc_img = workdir / "inc.qcow2"
    _create(layout, flavour, disk_img, scenario.disk_size)
    _create(layout, flavour, full_img, scenario.disk_size)

    disks = [linuxguest.disk("disk0", scenario.disk_size, file=disk_img)]
    with Pair(layout, disks, workdir, src_flavour=flavour,
              dst_flavour=flavour,
              extra_args=linuxguest.qemu_args(layout, cfg),
              machine=linuxguest.MACHINE,
              memory_mb=linuxguest.MEMORY_MB) as p:
        src, dst = p.src, p.dst
        res.accel = accel.label(src.accel)
        res.boot_s = linuxguest.wait_started(src.serial_log)
        # some data on the disk before the full backup, so it copies some
        linuxguest.wait_progress(src.serial_log, 4 * report)

        # 1. full backup: the bitmap starts where the backup's point in
        # time is, atomically, while the guest writes
        _add_image(src, "full", full_img)
        n_before = linuxguest.progress(src.serial_log)
        src.cmd("transaction", actions=[
            {"type": "block-dirty-bitmap-add",
             "data": {"node": "disk0", "name": BITMAP,
                      "granularity": scenario.granularity}},
            {"type": "blockdev-backup",
             "data": {"device": "disk0", "target": "full", "sync": "top",
                      "job-id": "full"}}])
        n_after = linuxguest.progress(src.serial_log)
        wait_job(src, "full")
        src.cmd("blockdev-del", **{"node-name": "full"})

        # 2. the guest writes
        t0 = time.monotonic()
        n0 = linuxguest.wait_progress(src.serial_log, n_after +
                                      scenario.writes_between)
        res.writes_per_s = (n0 - n_after) / (time.monotonic() - t0)

        # 3. live migration over shared storage, the guest writing
        caps = {"dirty-bitmaps": True, "events": True}
        res.live = _has_capability(src, "dirty-bitmaps-live")
        if res.live:
            caps["dirty-bitmaps-live"] = True
        n_mig = linuxguest.progress(src.serial_log)
        mig = migration.run(src, dst, p.uri, caps, scenario.params,
                            timeout=scenario.migration_timeout,
                            dst_caps={"dirty-bitmaps": True, "events": True})
        res.migration, res.total_ms = mig.status, mig.total_ms
        res.downtime_ms = mig.downtime_ms
        if not mig.converged:
            assert_running(src)
            res.seconds = time.monotonic() - t_start
            return res
        migration.wait(dst, ("completed",), 60)
        n_src_end = linuxguest.progress(src.serial_log)
        res.live_writes = n_src_end - n_mig
        src.quit()

        # 4. the guest writes on the destination (its counter goes on from
        # where the source's stopped)
        migration.wait_destination_running(dst)
        linuxguest.wait_progress(dst.serial_log,
                                 n_src_end + scenario.writes_between)

        # 5. incremental backup of the stopped guest's disk
        dst.cmd("stop")
        n_end = linuxguest.progress(dst.serial_log)
        res.dirty_clusters = len(_dirty_clusters(dst, scenario))
        _create(layout, flavour, inc_img, scenario.disk_size,
                backing=full_img)
        _add_image(dst, "inc", inc_img)
        run_job(dst, "inc", "blockdev-backup", device="disk0", target="inc",
                sync="incremental", bitmap=BITMAP)
        dst.cmd("blockdev-del", **{"node-name": "inc"})

        # 6. stop, restore, compare
        dst.quit()
        res.stalls = len(linuxguest.stalls(src.serial_log) +
                         linuxguest.stalls(dst.serial_log))

    res.compare = compare(layout, flavour, inc_img, disk_img)
    inc = allocated_clusters(layout, flavour, inc_img)
    res.full_clusters = len(allocated_clusters(layout, flavour, full_img))
    # Writes before n_before were reported done before the full backup's
    # point in time.  Writes up to n_end + slack may have completed before
    # the stop with their report line still in the guest's tty (output
    # lags the writes by at most a few lines).
    slack = 4 * report
    possibly = linuxguest.written_clusters(cfg, n_before, n_end + slack,
                                           CLUSTER)
    surely = linuxguest.written_clusters(cfg, n_after + slack, n_end,
                                         CLUSTER)
    res.inc_clusters = len(inc)
    res.written_clusters = len(possibly)
    res.surely_written = len(surely)
    res.extra = len(inc - possibly)
    res.missing = len(surely - inc)
    res.seconds = time.monotonic() - t_start
    return res


def _dirty_clusters(vm: VM, scenario: Scenario) -> set[int]:
    """Backup clusters the bitmap marks dirty (regions need the series'
    x-debug command; stock counts granules instead)."""
    try:
        regions = vm.regions("disk0", BITMAP)
    except ExecuteError:  # stock has no x-debug-block-dirty-bitmap-regions
        return set(range(_dirty_count(vm) // max(CLUSTER,
                                                 scenario.granularity)))
    out: set[int] = set()
    for off, length in regions:
        out.update(range(off // CLUSTER, (off + length - 1) // CLUSTER + 1))
    return out


# -- reporting -------------------------------------------------------------

def table(results: list[BackupResult]) -> str:
    rows = []
    for r in results:
        rows.append((
            r.scenario, r.flavour + (", live" if r.live else ""), r.accel,
            f"{r.boot_s:.1f} s", f"{r.writes_per_s:.0f}/s", r.migration,
            f"{r.total_ms} ms" if r.total_ms is not None else "-",
            f"{r.downtime_ms} ms" if r.downtime_ms is not None else "-",
            r.live_writes, r.full_clusters, r.dirty_clusters,
            r.inc_clusters, f"{r.surely_written}-{r.written_clusters}",
            r.extra, r.missing, r.compare, r.stalls, f"{r.seconds:.0f} s"))
    return markdown_table(
        ("scenario", "build", "guest on", "boot", "writes", "migration",
         "total", "downtime", "writes during migration", "full backup clusters",
         "dirty clusters", "incremental clusters", "written clusters",
         "extra", "missing", "restored chain vs disk", "write stalls",
         "time"), rows)


def to_json(results: list[BackupResult]) -> list[dict]:
    return [dict(asdict(r), ok=r.ok) for r in results]


#: Stock at the large size, given up after this long: it shows that the
#: large size really is beyond stock, and is no backup chain.  The
#: patched migration of the same scenario takes about 5 s in all (RAM
#: about 1 s), so 15 s is three times what converging needs.
STOCK_LARGE_TIMEOUT = 15.0


def stock_cannot_migrate(layout: Layout, scenario: Scenario = LARGE,
                         workdir: Path | None = None) -> BackupResult:
    """The scenario on stock, up to the migration, which must not converge
    (``migration`` is "timeout" then: cancelled, the source still alive)."""
    return run(layout, replace(scenario,
                               migration_timeout=STOCK_LARGE_TIMEOUT),
               "stock", workdir)


def main(layout: Layout, sizes: tuple[str, ...] = ("small", "large")) -> int:
    """``pyqemu check backup``: the chain at every size on the builds that
    can migrate it (and stock at the large size, which must not converge);
    print a table and say on the last line whether every restored chain
    equals its disk, and on which accelerator the guests ran; exit 1 if
    one does not."""
    build(layout)
    host = accel.detect()
    info(f"backup chain: the Linux guests run on {host}")
    runs = [(size, flavour) for size, flavour in
            (("small", "stock"), ("small", "patched"), ("large", "patched"),
             ("large", "stock")) if size in sizes]
    results: list[BackupResult] = []
    for size, flavour in runs:
        info(f"backup chain: {SCENARIOS[size].name}, {flavour}")
        try:
            if (size, flavour) == ("large", "stock"):
                results.append(stock_cannot_migrate(layout, SCENARIOS[size]))
            else:
                results.append(run(layout, SCENARIOS[size], flavour))
        except (PyqemuError, TimeoutError) as e:
            # one broken run is a row of the table, not the end of it
            failed = BackupResult(SCENARIOS[size].name, flavour)
            failed.compare = "error: " + str(e).splitlines()[0][:120]
            print(f"{size}, {flavour}: {e}", file=sys.stderr)
            results.append(failed)
    text = table(results)
    out = save(layout, "backup", text, to_json(results))
    print(text)
    print(f"\n(written clusters: surely written after the full backup - "
          f"possibly written; {CLUSTER // KiB} KiB clusters; stock at "
          f"{LARGE.name} is given up after {STOCK_LARGE_TIMEOUT:.0f} s)")
    print(f"wrote {out / 'results.md'}\nwrote {out / 'results.json'}")
    chains: list[BackupResult] = []
    stock_large: list[BackupResult] = []
    for r in results:
        is_stock_large = (r.scenario, r.flavour) == (LARGE.name, "stock")
        (stock_large if is_stock_large else chains).append(r)
    good = sum(r.ok for r in chains)
    restored = good == len(chains) and bool(chains)
    as_expected = all(r.migration == "timeout" for r in stock_large)
    note = ""
    if stock_large:
        note = (f"; stock at {LARGE.name}: " +
                ("not converged, as expected" if as_expected else
                 f"{stock_large[0].migration}, UNEXPECTED"))
    print(f"result: restored chain equals the disk: "
          f"{'yes' if restored else 'NO'} "
          f"({good}/{len(chains)} chains{note}; guests on {host.label})")
    ok = restored and as_expected
    return 0 if ok else 1
