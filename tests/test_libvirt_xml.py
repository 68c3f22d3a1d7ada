"""The libvirt hosts' XML and log reading (pyqemu.machine.libvirt), without
libvirt: the domain document survives any path or argument, libvirt's
answers are read as XML, and the QMP traffic libvirtd logged is read back
message by message.  (tests/test_libvirt.py runs them against libvirt.)"""

from __future__ import annotations

from pathlib import Path
from xml.etree import ElementTree as ET

from pyqemu.machine.libvirt import (
    Boot,
    DiskSpec,
    DomainSpec,
    MonitorLog,
    checkpoint_disks,
    default_machine,
    host_uuid,
)

#: characters a string-built document would have to escape by hand
NASTY = "/tmp/a'b\"c<d>&e f"


def _attr(root: ET.Element, path: str, name: str) -> str | None:
    el = root.find(path)
    assert el is not None, path
    return el.get(name)


def test_domain_xml_carries_any_path_and_argument() -> None:
    spec = DomainSpec("dom<1>", Path(NASTY) / "qemu",
                      (DiskSpec(f"{NASTY}/boot.img", "hda", "raw"),
                       DiskSpec(f"{NASTY}/disk.qcow2", "hdb")),
                      Path(NASTY) / "serial.log",
                      boot=Boot(Path(NASTY) / "vmlinuz", Path(NASTY) / "init",
                                f"console=ttyS0 writer.dev={NASTY}"),
                      virt="kvm", iothreads=1)
    root = ET.fromstring(spec.xml())
    assert root.tag == "domain" and root.get("type") == "kvm"
    assert root.findtext("name") == "dom<1>"
    assert root.findtext("devices/emulator") == f"{NASTY}/qemu"
    assert [(_attr(d, "source", "file"), _attr(d, "target", "dev"),
             _attr(d, "driver", "type"))
            for d in root.findall("devices/disk")] == [
        (f"{NASTY}/boot.img", "hda", "raw"),
        (f"{NASTY}/disk.qcow2", "hdb", "qcow2")]
    assert all(_attr(d, "driver", "cache") == "none"
               for d in root.findall("devices/disk"))
    assert _attr(root, "devices/serial/source", "path") == \
        f"{NASTY}/serial.log"
    assert root.find("features/acpi") is not None
    assert root.findtext("os/kernel") == f"{NASTY}/vmlinuz"
    assert root.findtext("os/cmdline") == f"console=ttyS0 writer.dev={NASTY}"
    assert root.find("os/boot") is None
    assert root.findtext("iothreads") == "1"


def test_no_qemu_commandline_ever() -> None:
    """The project reaches the live mode through libvirt itself, never
    through <qemu:commandline> (the series has no -global for it)."""
    spec = DomainSpec("d", Path("/q"), (DiskSpec("/d", "vda", bus="virtio",
                                                 iothread=1),), Path("/s"),
                      iothreads=1)
    xml = spec.xml()
    assert "commandline" not in xml and "qemu:" not in xml
    root = ET.fromstring(xml)
    assert _attr(root, "devices/disk/driver", "iothread") == "1"
    assert _attr(root, "os/boot", "dev") == "hd"


def test_libvirts_answers_are_read_as_xml() -> None:
    caps = """<capabilities>
      <host><uuid>
        1b4e28ba-2fa1-11d2-883f-0016d3cca427
      </uuid><cpu><arch>x86_64</arch></cpu></host>
      <guest><uuid>not-this-one</uuid></guest>
    </capabilities>"""
    assert host_uuid(caps) == "1b4e28ba-2fa1-11d2-883f-0016d3cca427"
    assert default_machine(
        "<domainCapabilities><path>/q</path><domain>qemu</domain>"
        "<machine>pc-i440fx-10.2</machine></domainCapabilities>") == \
        "pc-i440fx-10.2"
    assert default_machine("<domainCapabilities/>") is None
    disks = checkpoint_disks(
        "<domaincheckpoint><name>c</name><disks>"
        "<disk name='hda' checkpoint='no'/>"
        "<disk name='hdb' checkpoint='bitmap' bitmap='c'/>"
        "</disks></domaincheckpoint>")
    assert [(d.name, d.checkpoint, d.bitmap) for d in disks] == [
        ("hda", "no", None), ("hdb", "bitmap", "c")]


#: libvirtd's log lines: "<time>: <thread>: <level> : <function> : <text>"
_LINE = "2025-01-01 10:00:00.00{}+0000: 1: {}"
_SEND = "debug : qemuMonitorSend:859 : QEMU_MONITOR_SEND_MSG: mon=0x7f msg="
_RECV = ("info : qemuMonitorJSONIOProcessLine:210 : QEMU_MONITOR_RECV_REPLY: "
         "mon=0x7f reply=")
_WRITE = "info : qemuMonitorIOWrite:366 : QEMU_MONITOR_IO_WRITE: mon=0x7f buf="
LOG = "".join(_LINE.format(i, text) + "\n" for i, text in enumerate((
    'debug : qemuMonitorJSONIOProcessLine:191 : Line [{"QMP": {}}]',
    _WRITE + '{"execute":"migrate-set-capabilities","arguments":'
    '{"capabilities":[{"capability":"xbzrle","state":false}]},'
    '"id":"libvirt-8"}',
    _SEND + '{"execute":"migrate-set-capabilities","arguments":'
    '{"capabilities":[{"capability":"dirty-bitmaps","state":true}]},'
    '"id":"libvirt-9"}\r\n fd=-1',
    _RECV + '{"return": {}, "id": "libvirt-9"}',
    _SEND + '{"execute":"query-migrate","id":"libvirt-10"}\r\n fd=-1',
    _RECV + '{"return": {"status": "active", "dirty-bitmaps": '
    '{"transferred": 10}}, "id": "libvirt-10"}',
    _RECV + '{"return": {"status": "completed", "dirty-bitmaps": '
    '{"transferred": 20}}, "id": "libvirt-11"}',
    _RECV + '{"return": {"status": "completed"}, "id": "libvirt-12"}')))


def test_the_qmp_traffic_libvirtd_logged() -> None:
    log = MonitorLog(LOG)
    sets = log.sent("migrate-set-capabilities")
    # only what was sent (not the IO_WRITE echo of an earlier buffer)
    assert [s["id"] for s in sets] == ["libvirt-9"]
    assert sets[0]["arguments"]["capabilities"] == [
        {"capability": "dirty-bitmaps", "state": True}]
    assert [m["execute"] for m in log.sent()] == [
        "migrate-set-capabilities", "query-migrate"]
    assert len(log.replies()) == 4
    # the last reply with the key, not the last reply
    assert log.last_return_with("dirty-bitmaps") == {
        "status": "completed", "dirty-bitmaps": {"transferred": 20}}
    assert log.last_return_with("ram") is None
    # a mark: only what came after it
    later = MonitorLog(LOG[LOG.index("2025-01-01 10:00:00.004"):])
    assert later.sent("migrate-set-capabilities") == []
