"""Peers that stall and links that are slow, not cut: ``pyqemu check faults``
runs these after the instantaneous faults of :mod:`pyqemu.checks.faults`.

A destination that stops reading, whether its process is stopped
(SIGSTOP) or the network drops every packet (a partition, ``tc netem
loss 100%``), must block only the source's migration thread.  While it
stalls, the source's monitor answers ``query-migrate``, ``query-status``
and HMP ``info migrate``, the guest goes on writing, and
``migrate_cancel`` or ``yank`` end the migration; no bitmap bit is lost,
and once the peer is back a new migration completes.

Links that are merely bad (``tc netem``: 50 ms of delay, 1 % loss, a rate
under what the migration needs) must either carry a live migration to
its end with equal bitmaps, or keep it running with a monitor that
answers until it is cancelled.  Postcopy with live mode must recover from
a pause (``migrate-pause``, ``migrate-recover``, ``migrate`` with
``resume``).

Each scenario returns what it measured; the pytest suite asserts on it
and ``check faults`` prints it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..bench import fill
from ..machine import guest, migration
from ..machine.netns import Link
from ..machine.vm import VM, Bitmap, Disk
from ..paths import Layout
from ..util.poll import PollTimeout, until
from ..util.units import MiB, TiB
from . import faults

STALLS = ("sigstop", "partition")
ENDS = ("cancel", "yank")
#: A second disk whose two migrated bitmaps are full: 16 MiB of bitmap
#: data, sent at BANDWIDTH in writes far larger than the socket buffers,
#: so that the sender is in the middle of the bitmaps when the peer stalls
BIG = Disk("disk1", 4 * TiB, bitmaps=tuple(
    Bitmap(f"{p}-full{i}") for p in ("bm", "ref") for i in range(2)))
BANDWIDTH = 32 * MiB
#: How long the peer stalls before the monitor is asked
STALL_SECONDS = 1.5
#: What the monitor is asked during the stall, and how often
QUERIES = 10


def _mapping() -> list[dict]:
    """faults' mapping, plus the full bitmaps of the second disk."""
    return faults.mapping() + [{
        "node-name": BIG.node, "alias": BIG.node,
        "bitmaps": [{"name": b.name, "alias": b.name}
                    for b in BIG.bitmaps if b.name.startswith("bm-")]}]


def _twins_equal(src: VM) -> bool:
    """faults' twins on the writer's disk, and the full ones on BIG."""
    big = all(src.sha256(BIG.node, f"bm-full{i}") ==
              src.sha256(BIG.node, f"ref-full{i}") for i in range(2))
    return big and faults.twins_equal(src)


def _timed(call) -> float:
    start = time.monotonic()
    call()
    return time.monotonic() - start


@dataclass
class StallResult:
    how: str
    end: str
    flavour: str
    query_s: list[float] = field(default_factory=list)
    status_s: float = -1
    info_s: float = -1
    end_s: float = -1           # cancel/yank until the migration ended
    outcome: str = "-"
    source_running: bool = False
    bitmaps_intact: bool = False
    retry: str = "-"

    @property
    def query_median(self) -> float:
        return statistics.median(self.query_s) if self.query_s else -1

    @property
    def slowest(self) -> float:
        return max([*self.query_s, self.status_s, self.info_s])


def _destination(layout: Layout, link: Link, workdir: Path, name: str,
                 flavour: str, paused: bool = True) -> VM:
    """A destination listening on the link; *paused* (-S) waits for
    ``cont`` after the migration, unpaused runs the guest at once (for a
    downtime measured as the guest sees it)."""
    dst = VM(layout, name, [*faults.disks(), BIG], flavour, workdir,
             incoming=True, boot=guest.boot_disk(layout, workdir, name),
             wrapper=link.wrapper("b"),
             extra_args=("-S",) if paused else ())
    dst.launch()
    try:
        migration.set_capabilities(dst, faults.caps(live=False))
        migration.set_parameters(dst, {"block-bitmap-mapping": _mapping()})
        dst.cmd("migrate-incoming", channels=link.channels(),
                **{"exit-on-error": False})
    except BaseException:
        dst.shutdown()
        raise
    return dst


def _source(layout: Layout, link: Link, workdir: Path, flavour: str) -> VM:
    return VM(layout, "src", [*faults.disks(), BIG], flavour, workdir,
              boot=guest.boot_disk(layout, workdir, "src"),
              wrapper=link.wrapper("a"))


def _prepare(src: VM) -> None:
    faults.add_twin_bitmaps(src)
    src.dirty("disk0", *faults.DENSE)
    src.add_bitmaps()
    fill.fill(src, BIG, "full")
    guest.wait_progress(src.serial_log, 64)


def _start(src: VM, link: Link, bandwidth: int, pause: bool = False,
           extra: dict[str, bool] | None = None,
           channels: list[dict] | None = None) -> None:
    migration.set_capabilities(src, dict(faults.caps(), **(extra or {}),
                                         **{"pause-before-switchover": pause}))
    migration.set_parameters(src, {"block-bitmap-mapping": _mapping(),
                                   "max-bandwidth": bandwidth,
                                   "downtime-limit": 300})
    src.cmd("migrate", channels=channels or link.channels())


def _complete(layout: Layout, src: VM, link: Link, workdir: Path,
              flavour: str) -> str:
    """A fresh destination and a fast migration, checked at the switchover."""
    dst = _destination(layout, link, workdir, "dst-retry", flavour)
    try:
        _start(src, link, 1024 * MiB, pause=True)
        migration.wait(src, ("pre-switchover",), 120)
        want = src.all_sha256()
        migration.switch_over(src, dst)
        got = dst.all_sha256()
        mapped = {k: v for k, v in want.items() if k[1].startswith("bm-")}
        result = ("completed, bitmaps equal"
                  if all(got.get(k) == v for k, v in mapped.items())
                  else "completed, bitmaps DIFFER")
    except Exception as e:      # a result, not an error of the harness
        result = f"failed: {e}"
    finally:
        problem = dst.shutdown().problem()
    return f"destination ended badly: {problem}" if problem else result


def stall(layout: Layout, how: str, end: str, flavour: str = "patched",
          workdir: Path | None = None) -> StallResult:
    """The destination stops reading in the middle of the bitmaps; the
    source is asked, then the migration is ended with *end*."""
    if how not in STALLS or end not in ENDS:
        raise ValueError(f"stall {how!r}/{end!r}: known {STALLS} x {ENDS}")
    r = StallResult(how, end, flavour)
    with tempfile.TemporaryDirectory(prefix="pq-s-", dir="/tmp") as tmp:
        workdir = workdir or Path(tmp)
        with Link(rate=None) as link:
            src = _source(layout, link, workdir, flavour)
            with src:
                _prepare(src)
                dst = _destination(layout, link, workdir, "dst", flavour)
                dst.allow_exit()
                stopped = False
                try:
                    _start(src, link, BANDWIDTH)
                    until(lambda: migration.query(src).get(
                        "dirty-bitmaps", {}).get("transferred", 0),
                        lambda n: n > 2 * MiB, 60, "2 MiB of bitmaps sent",
                        interval=0.01)
                    if how == "sigstop":
                        os.kill(dst.machine.get_pid(), signal.SIGSTOP)
                        stopped = True
                    else:
                        link.drop(100)
                    time.sleep(STALL_SECONDS)
                    r.query_s = [_timed(lambda: migration.query(src))
                                 for _ in range(QUERIES)]
                    r.status_s = _timed(lambda: src.cmd("query-status"))
                    r.info_s = _timed(lambda: src.hmp("info migrate"))
                    start = time.monotonic()
                    if end == "cancel":
                        src.cmd("migrate_cancel")
                    else:
                        src.cmd("yank", instances=[{"type": "migration"}])
                    try:
                        info = migration.wait(src, ("cancelled", "failed"),
                                              30, interval=0.005)
                        r.end_s = time.monotonic() - start
                        r.outcome = info["status"]
                    except migration.MigrationTimeout as e:
                        r.outcome = f"stuck: {e}"
                finally:
                    if stopped:
                        os.kill(dst.machine.get_pid(), signal.SIGCONT)
                    link.undrop()
                    dst.shutdown()
                r.source_running = faults.source_runs(src)
                r.bitmaps_intact = _twins_equal(src)
                r.retry = _complete(layout, src, link, workdir, flavour)
    return r


#: The links' settings (these kernels have no netem: the delay is a
#: relay's, the loss nftables', the rate tbf's)
SLOW = {"delay": "50 ms more latency each way",
        "loss": "1 % of the packets dropped each way",
        # the 16 MiB of full bitmaps alone need a minute
        "too-slow": "2 Mbit/s"}
DELAY = 0.05
LOSS_PERCENT = 1
TOO_SLOW_RATE = "2mbit"
#: How long a migration over a too slow link is watched before the cancel
TOO_SLOW_WATCH = 5.0


@dataclass
class SlowResult:
    setting: str
    outcome: str = "-"          # completed / still active, then cancelled
    downtime_ms: float = -1     # source STOP to destination RESUME
    query_max_s: float = -1     # slowest query-migrate while it ran
    bitmaps_equal: bool = False  # destination = source (completed), or
                                 # source intact (cancelled)
    source_running: bool = False


def _guest_downtime(src: VM, dst: VM) -> float:
    """STOP on the source to RESUME on the destination, by QEMU's own
    event timestamps (both run on this host's clock)."""
    def stamp(vm: VM, event: str) -> float:
        for e in vm.drain_events():
            if e["event"] == event:
                ts = e["timestamp"]
                return ts["seconds"] + ts["microseconds"] / 1e6
        raise migration.MigrationTimeout(f"no {event} event from {vm.name}")
    stop = stamp(src, "STOP")
    resume = stamp(dst, "RESUME")
    return (resume - stop) * 1000


def _arrived(src: VM, dst: VM) -> bool:
    """The migrated bitmaps are on the running destination: the full ones
    equal, and those of the writer's disk at least as full as on the
    source (the guest goes on writing there)."""
    want, got = src.bitmaps(), dst.bitmaps()
    for (node, name), desc in want.items():
        if not name.startswith("bm-"):
            continue
        if node == BIG.node:
            if src.sha256(node, name) != dst.sha256(node, name):
                return False
        elif (node, name) not in got or \
                got[(node, name)]["count"] < desc["count"]:
            return False
    return True


def slow(layout: Layout, setting: str, flavour: str = "patched",
         workdir: Path | None = None) -> SlowResult:
    """A live migration over a link impaired with *setting* (see SLOW)."""
    r = SlowResult(setting)
    with tempfile.TemporaryDirectory(prefix="pq-l-", dir="/tmp") as tmp:
        workdir = workdir or Path(tmp)
        with Link(rate=None) as link, contextlib.ExitStack() as bad:
            channels = None
            if setting == "delay":
                channels = bad.enter_context(link.delayed(DELAY))
            elif setting == "loss":
                link.drop(LOSS_PERCENT)
                bad.callback(link.undrop)
            else:
                link.limit(TOO_SLOW_RATE)
            src = _source(layout, link, workdir, flavour)
            with src:
                _prepare(src)
                dst = _destination(layout, link, workdir, "dst", flavour,
                                   paused=False)
                try:
                    src.drain_events()
                    dst.drain_events()
                    _start(src, link, BANDWIDTH, channels=channels)
                    slowest = 0.0
                    deadline = time.monotonic() + (
                        TOO_SLOW_WATCH if setting == "too-slow" else 120)
                    status = "active"
                    while time.monotonic() < deadline:
                        t = time.monotonic()
                        status = migration.query(src)["status"]
                        slowest = max(slowest, time.monotonic() - t)
                        if status not in ("setup", "active", "device"):
                            break
                        time.sleep(0.05)
                    r.query_max_s = slowest
                    if status == "completed":
                        migration.wait_destination_running(dst)
                        r.bitmaps_equal = _arrived(src, dst)
                        r.downtime_ms = _guest_downtime(src, dst)
                        r.outcome = "completed"
                        r.source_running = True     # on the destination
                    else:
                        dst.allow_exit()
                        src.cmd("migrate_cancel")
                        info = migration.wait(src, ("cancelled", "failed"),
                                              30)
                        r.outcome = f"{status}, then {info['status']}"
                        r.source_running = faults.source_runs(src)
                        r.bitmaps_equal = _twins_equal(src)
                finally:
                    dst.shutdown()
    return r


def postcopy_recovery(layout: Layout,
                      workdir: Path | None = None) -> tuple[str, str]:
    """Live mode, postcopy started during the bulk phase, the stream
    paused with migrate-pause, then recovered over the same link.

    Returns (how the migration ended, what became of the migrated
    bitmaps on the destination): the migration recovers and completes;
    the destination drops every bitmap whose data was still arriving when
    the stream broke, as stock QEMU does (its incoming bitmap state does
    not survive a broken stream), and keeps the others equal."""
    with tempfile.TemporaryDirectory(prefix="pq-r-", dir="/tmp") as tmp:
        workdir = workdir or Path(tmp)
        with Link(rate=None) as link:
            src = _source(layout, link, workdir, "patched")
            with src:
                _prepare(src)
                dst = _destination(layout, link, workdir, "dst", "patched")
                try:
                    migration.set_capabilities(dst, {"postcopy-ram": True})
                    # bitmap postcopy goes at max-postcopy-bandwidth: the
                    # 16 MiB of full bitmaps take 16 s, long enough to
                    # pause and recover while some are still to send
                    _start(src, link, 8 * MiB,
                           extra={"postcopy-ram": True})
                    migration.set_parameters(
                        src, {"max-postcopy-bandwidth": MiB})
                    until(lambda: migration.query(src).get(
                        "dirty-bitmaps", {}).get("transferred", 0),
                        lambda n: n > MiB, 60, "1 MiB of bitmaps sent",
                        interval=0.01)
                    src.cmd("migrate-start-postcopy")
                    migration.wait(src, ("postcopy-active",), 60)
                    src.cmd("migrate-pause")
                    migration.wait(src, ("postcopy-paused",), 30)
                    migration.wait(dst, ("postcopy-paused",), 30)
                    port = link.channels()[0]["addr"]["port"]
                    again = link.channels(int(port) + 1)
                    addr = again[0]["addr"]
                    dst.cmd("migrate-recover",
                            uri=f"tcp:{addr['host']}:{addr['port']}")
                    # the destination listens again, still paused, until
                    # the source connects
                    src.cmd("migrate", channels=again, resume=True)
                    migration.set_parameters(
                        src, {"max-postcopy-bandwidth": 1024 * MiB})
                    migration.wait(src, ("completed",), 120)
                    dst.cmd("cont")
                    migration.wait_destination_running(dst)
                    return "recovered", _survivors(src, dst)
                except (migration.MigrationTimeout, PollTimeout) as e:
                    return f"not recovered: {e}", "-"
                finally:
                    dst.shutdown()


def _survivors(src: VM, dst: VM) -> str:
    """'all equal', or which migrated bitmaps the destination dropped;
    'DIFFER: ...' if one that arrived is not the source's."""
    got = dst.bitmaps()
    dropped, differ = [], []
    for node, name in src.bitmaps():
        if not name.startswith("bm-"):
            continue
        if (node, name) not in got:
            dropped.append(f"{node}/{name}")
        elif node == BIG.node and \
                src.sha256(node, name) != dst.sha256(node, name):
            differ.append(f"{node}/{name}")
    if differ:
        return "DIFFER: " + ", ".join(differ)
    return "dropped: " + ", ".join(dropped) if dropped else "all equal"
