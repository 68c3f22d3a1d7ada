"""Domain XML for the libvirt hosts, and reading libvirt's XML answers.

Both sides go through ElementTree: the domain is built as a tree and
serialized (paths and arguments are escaped by the serializer, whatever
they contain), and libvirt's answers (``capabilities``,
``domcapabilities``, ``checkpoint-dumpxml``) are parsed, never split as
strings.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from xml.etree import ElementTree as ET


@dataclass(frozen=True)
class DiskSpec:
    """A file-backed disk: *source* is the path as the host sees it."""

    source: str
    target: str                 # "hda", "hdb", "vda" ...
    format: str = "qcow2"       # QEMU's driver type: qcow2, raw
    bus: str = "ide"            # or "virtio"
    iothread: int | None = None  # virtio: the iothread serving it


@dataclass(frozen=True)
class Boot:
    """A direct kernel boot (the Linux guest, pyqemu.machine.linuxguest)."""

    kernel: Path
    initrd: Path
    cmdline: str


@dataclass(frozen=True)
class DomainSpec:
    """A domain the project's reduced QEMU build can run.

    * *virt*: "kvm" where the machine has a usable /dev/kvm, else "qemu"
      (TCG): libvirt's domain types.
    * ``<acpi/>``: without it libvirt 9.0 passes ``-no-acpi``, which QEMU
      10 no longer has (removed in 9.2; ``-machine acpi=off`` replaced it).
    * no USB controller, video, graphics, NIC or balloon: the build has
      none of those devices.
    * ``cache='none'`` on every disk: what libvirt wants for a migration
      on shared storage.
    * nothing in ``<qemu:commandline>``: what the domain needs, libvirt
      itself must know how to ask for.
    """

    name: str
    emulator: Path
    disks: tuple[DiskSpec, ...]
    serial: Path                # COM1 output, appended to this file
    memory_mib: int = 64
    machine: str = "pc"
    virt: str = "qemu"
    boot: Boot | None = None    # default: from the first disk
    iothreads: int = 0

    def element(self) -> ET.Element:
        dom = ET.Element("domain", type=self.virt)
        ET.SubElement(dom, "name").text = self.name
        ET.SubElement(dom, "memory", unit="MiB").text = str(self.memory_mib)
        ET.SubElement(dom, "vcpu").text = "1"
        if self.iothreads:
            ET.SubElement(dom, "iothreads").text = str(self.iothreads)
        os_ = ET.SubElement(dom, "os")
        ET.SubElement(os_, "type", arch="x86_64",
                      machine=self.machine).text = "hvm"
        if self.boot is None:
            ET.SubElement(os_, "boot", dev="hd")
        else:
            ET.SubElement(os_, "kernel").text = str(self.boot.kernel)
            ET.SubElement(os_, "initrd").text = str(self.boot.initrd)
            ET.SubElement(os_, "cmdline").text = self.boot.cmdline
        ET.SubElement(ET.SubElement(dom, "features"), "acpi")
        ET.SubElement(dom, "clock", offset="utc")
        ET.SubElement(dom, "on_poweroff").text = "destroy"
        ET.SubElement(dom, "on_crash").text = "destroy"
        devices = ET.SubElement(dom, "devices")
        ET.SubElement(devices, "emulator").text = str(self.emulator)
        for d in self.disks:
            disk = ET.SubElement(devices, "disk", type="file", device="disk")
            driver = ET.SubElement(disk, "driver", name="qemu",
                                   type=d.format, cache="none")
            if d.iothread is not None:
                driver.set("iothread", str(d.iothread))
            ET.SubElement(disk, "source", file=d.source)
            ET.SubElement(disk, "target", dev=d.target, bus=d.bus)
        ET.SubElement(devices, "controller", type="usb", model="none")
        serial = ET.SubElement(devices, "serial", type="file")
        ET.SubElement(serial, "source", path=str(self.serial), append="on")
        ET.SubElement(serial, "target", port="0")
        ET.SubElement(devices, "memballoon", model="none")
        return dom

    def xml(self) -> str:
        """The document for ``virsh define``."""
        tree = self.element()
        ET.indent(tree)
        return ET.tostring(tree, encoding="unicode") + "\n"


# -- libvirt's answers ----------------------------------------------------

def host_uuid(capabilities: str) -> str:
    """The host's UUID in ``virsh capabilities`` (``host_uuid`` of
    libvirtd.conf: what makes two hosts on one machine two hosts)."""
    uuid = ET.fromstring(capabilities).findtext("host/uuid")
    if not uuid:
        raise ValueError("no <host><uuid> in the capabilities")
    return uuid.strip()


def default_machine(domcapabilities: str) -> str | None:
    """The machine type ``virsh domcapabilities`` chose for the binary."""
    machine = ET.fromstring(domcapabilities).findtext("machine")
    return machine.strip() if machine else None


@dataclass(frozen=True)
class CheckpointDisk:
    """One ``<disk>`` of ``virsh checkpoint-dumpxml``."""

    name: str
    checkpoint: str             # "bitmap" or "no"
    bitmap: str | None


def checkpoint_disks(checkpoint: str) -> list[CheckpointDisk]:
    """The disks of a checkpoint and the bitmap each got."""
    return [CheckpointDisk(d.get("name", ""), d.get("checkpoint", ""),
                           d.get("bitmap"))
            for d in ET.fromstring(checkpoint).findall("./disks/disk")]
