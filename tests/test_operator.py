"""The operator's path (pyqemu/checks/operator.py), reduced: one migration
per configuration that shows a behaviour, assertions on what libvirt and
QEMU did, never on how long it took (``./run check operator`` measures).

* our libvirt and QEMU on both hosts: with shared storage libvirt enables
  ``dirty-bitmaps`` and ``dirty-bitmaps-live`` with a mapping of every
  checkpoint's bitmap, and QEMU sends them while the guest runs;
* our libvirt and QEMU on one host, Debian's libvirt and stock QEMU on
  the other, there and back: each migration completes as it does today,
  the bitmaps going through the image;
* each time, the guest-visible downtime is measured from both QEMUs'
  events, the virtnbdbackup chain restores equal to the disk (and its
  controls differ), and the 8 checkpoints redefine on the destination
  with ``--redefine-validate`` over bitmaps that are still fully dirty.

Debian's libvirt and stock QEMU on both hosts, as operators run them
today, is ``./run check operator``'s baseline and not run here: neither
program is ours, and the mixed hosts show both halves of it (a stock
source, then a stock destination, no bitmap capability, the bitmaps
through the image, the chain restored).  It cost a third of this
module's time in a warm suite.

The disk is 1 TiB rather than the check's 16 TiB (8 bitmaps of 2 MiB) and
the guest has 512 MiB of RAM rather than 2 GiB: what is asserted does not
depend on either, the time does.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pyqemu.checks import operator as op
from pyqemu.machine.libvirt import MonitorLog
from pyqemu.paths import Layout
from pyqemu.util.units import TiB

pytestmark = pytest.mark.skipif(os.geteuid() != 0,
                                reason="namespaces need root")

WORKLOAD = op.Workload(size=TiB, memory_mib=512)
CHECKPOINTS = {op.CHECKPOINT.format(i) for i in range(WORKLOAD.checkpoints)}

#: What libvirtd logs, in its format: two QEMUs (monitors), the first
#: told apart by the image in a reply, the second by one in a command.
LOG = """\
2026-12-05 12:56:41.938+0000: 3054: info : qemuMonitorJSONIOProcessLine:208 \
: QEMU_MONITOR_RECV_REPLY: mon=0x7fd8 reply={"return": [{"inserted": \
{"file": "/tmp/x/dom/disk.qcow2"}}], "id": "libvirt-7"}
2026-12-05 12:56:42.001+0000: 3054: info : qemuMonitorIOWrite:433 : \
QEMU_MONITOR_IO_WRITE: mon=0x7fe0 buf={"execute":"blockdev-add"}
2026-12-05 12:56:42.002+0000: 3054: info : qemuMonitorSend:915 : \
QEMU_MONITOR_SEND_MSG: mon=0x7fe0 msg={"execute":"blockdev-add",\
"arguments":{"filename":"/tmp/x/other/disk.qcow2"},"id":"libvirt-8"}\r\n \
fd=-1
2026-12-05 12:56:51.050+0000: 3054: info : qemuMonitorJSONIOProcessLine:203 \
: QEMU_MONITOR_RECV_EVENT: mon=0x7fe0 event={"timestamp": {"seconds": \
1796475411, "microseconds": 40000}, "event": "STOP"}
2026-12-05 12:56:51.050+0000: 3054: info : qemuMonitorJSONIOProcessLine:203 \
: QEMU_MONITOR_RECV_EVENT: mon=0x7fd8 event={"timestamp": {"seconds": \
1796475411, "microseconds": 50806}, "event": "STOP"}
2026-12-05 12:56:51.054+0000: 3054: info : qemuMonitorJSONIOProcessLine:203 \
: QEMU_MONITOR_RECV_EVENT: mon=0x7fd8 event={"timestamp": {"seconds": \
1796475411, "microseconds": 54011}, "event": "MIGRATION", "data": \
{"status": "device"}}
"""


def test_events_carry_qemus_timestamp_and_their_monitor() -> None:
    """Events are read with QEMU's timestamp and data, filtered by name and
    by monitor; a domain's monitor is found by its image path, in a reply
    as in a command."""
    log = MonitorLog(LOG)
    dom = log.monitors("/tmp/x/dom/disk.qcow2")
    assert dom == {"0x7fd8"}
    assert log.monitors("/tmp/x/other/disk.qcow2") == {"0x7fe0"}
    stops = log.events("STOP", dom)
    assert [(e.mon, e.timestamp) for e in stops] == [
        ("0x7fd8", pytest.approx(1796475411.050806))]
    assert [e.name for e in log.events()] == ["STOP", "STOP", "MIGRATION"]
    assert log.events("MIGRATION")[0].data == {"status": "device"}
    assert log.events("RESUME") == []


def test_phases_split_the_downtime_at_the_events() -> None:
    """Where the downtime went, from a migration's event timeline."""
    m = op.Migration("d", "a", "b", downtime_ms=30.0, timeline=[
        (-500.0, "src", "MIGRATION", "active"), (0.0, "src", "STOP", ""),
        (2.0, "src", "MIGRATION", "pre-switchover"),
        (3.0, "src", "MIGRATION", "device"),
        (20.0, "dst", "MIGRATION", "completed"),
        (20.5, "src", "MIGRATION", "completed"),
        (30.0, "dst", "RESUME", "")])
    assert op.phases(m) == {"stop to device": 3.0,
                            "device to dst completed": 17.0,
                            "dst completed to RESUME": 10.0}


@pytest.fixture(scope="module")
def lives(layout: Layout, libvirtd: Path) -> dict[str, list[op.Life]]:
    """The reduced scenario, once for the module: one domain under our
    libvirt and QEMU, one between mixed hosts there and back; one after
    the other (TCG guests side by side slow each other down more than
    they save).  Afterwards no host directory (images, backups,
    namespaces' files) is left."""
    with op.Lab(layout, WORKLOAD) as lab:
        got = op.measure(lab, runs=1, configs=("ours",))
        got += op.mixed(lab)
        workdirs = [h.workdir for h, _, _ in lab.pairs.values()]
    assert workdirs and not [d for d in workdirs if d.exists()]
    out: dict[str, list[op.Life]] = {}
    for lf in got:
        out.setdefault(lf.config, []).append(lf)
    return out


def _one(lf: op.Life, migrations: int = 1
         ) -> tuple[list[op.Migration], op.Check]:
    """The life's migrations, all completed, and its one check (after
    the last)."""
    assert not lf.error, lf.error
    assert not lf.qemu_problems, lf.qemu_problems
    assert len(lf.migrations) == migrations and len(lf.checks) == 1
    for m in lf.migrations:
        assert not m.aborted and not m.error, m.error
    return lf.migrations, lf.checks[0]


def _chain_restored(c: op.Check) -> None:
    """The chain equals the disk, its controls do not, and the operator's
    checkpoints redefine over bitmaps that are still what they were
    before the migration: fully dirty."""
    assert c.restored_equal is True
    assert c.full_alone_differs is True
    assert c.moved_block_differs is True
    assert c.checkpoints_valid is True
    assert {n: c.bitmaps.get(n) for n in CHECKPOINTS} == \
        dict.fromkeys(CHECKPOINTS, WORKLOAD.size), c.bitmaps
    assert c.full_bitmaps == WORKLOAD.checkpoints
    assert c.inc_bytes > 0


def _downtime_measured(m: op.Migration) -> None:
    """The source QEMU's STOP and the destination QEMU's RESUME, both
    found in the libvirtds' logs, in that order (how long: the check's
    business), while the guest went on writing around them."""
    assert m.downtime_ms is not None and m.downtime_ms > 0
    events = [(side, name) for _, side, name, _ in m.timeline]
    assert ("src", "STOP") in events and ("dst", "RESUME") in events
    assert m.writes_during > 0


def test_our_libvirt_sends_the_checkpoints_live(
        lives: dict[str, list[op.Life]]) -> None:
    """Shared storage, our libvirt and QEMU: the source libvirt enables
    dirty-bitmaps and dirty-bitmaps-live and maps every bitmap of the
    disk; QEMU sends all of them before the switchover and next to
    nothing after it."""
    (lf,) = lives["ours"]
    (m,), c = _one(lf)
    assert {"dirty-bitmaps", "dirty-bitmaps-live"} <= set(m.caps_enabled)
    assert set(m.mapped) == CHECKPOINTS | {op.FULL}
    stats = m.bitmap_stats
    assert stats["status"] == "completed"
    assert stats["transferred"] >= WORKLOAD.checkpoints * \
        WORKLOAD.bitmap_bytes
    # a few chunks the guest dirtied last, not a bitmap
    assert stats["downtime-transferred"] < WORKLOAD.bitmap_bytes // 8
    assert m.travel() == "stream, live"
    _downtime_measured(m)
    _chain_restored(c)


def test_mixed_hosts_migrate_both_ways_through_the_image(
        lives: dict[str, list[op.Life]]) -> None:
    """Debian's libvirt and stock QEMU on host b, our libvirt and QEMU on
    host a; the domain goes from b to a and back.  From b, stock libvirt
    does not offer the bitmaps; from a, our libvirt does not either, the
    stock destination having no live mode.  Either way the migration is
    today's: no bitmap capability, the bitmaps stored into the image and
    loaded from it, and after both they are whole and the chain
    restores.  (The first test's assertions fail here: no
    dirty-bitmaps-live, no mapping, no bitmap statistics.)"""
    (lf,) = lives["mixed"]
    ms, c = _one(lf, migrations=2)
    assert [(m.src, m.dst) for m in ms] == [("b", "a"), ("a", "b")]
    for m in ms:
        assert "dirty-bitmaps" not in m.caps_enabled
        assert "dirty-bitmaps-live" not in m.caps_enabled
        assert m.mapped == ()
        assert m.bitmap_stats.get("transferred", 0) == 0
        assert m.travel() == "image"
        _downtime_measured(m)
    _chain_restored(c)
