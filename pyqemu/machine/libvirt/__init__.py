"""libvirt as the fleet runs it: two private hosts on one machine.

* :mod:`.hosts` -- :class:`Hosts` starts two libvirt "hosts" (network,
  mount and UTS namespaces with their own libvirtd and virtlogd) and
  removes every trace of them afterwards; :class:`Host` runs ``virsh``
  and other tools on one of them.
* :mod:`.domain` -- the domain XML (:class:`DomainSpec`) and the reading
  of libvirt's XML answers, with ElementTree.
* :mod:`.monitorlog` -- what libvirtd logged of its QMP traffic with QEMU
  (:class:`MonitorLog`, from :meth:`Host.monitor_log`): the evidence of
  what libvirt asked QEMU to do.

Typical use::

    hosts = Hosts()
    with hosts as (a, b):
        hosts.use_tools({"qemu-img": ..., "qemu-nbd": ...})
        a.virsh("define", "define", str(xml_file))   # DomainSpec(...).xml()
        mark = a.log_mark()
        a.virsh("migrate", "migrate", "--live", dom, b.uri)
        caps = a.monitor_log(mark).sent("migrate-set-capabilities")

The packages are installed by ``./run test`` and ``./run check libvirt``
(:data:`pyqemu.build.deps.LIBVIRT`), never here.
"""

from .domain import (
    Boot,
    CheckpointDisk,
    DiskSpec,
    DomainSpec,
    checkpoint_disks,
    default_machine,
    host_uuid,
)
from .hosts import PRIVATE_DIRS, Host, Hosts, LibvirtError, sweep, tail
from .monitorlog import Event, MonitorLog

__all__ = ["PRIVATE_DIRS", "Boot", "CheckpointDisk", "DiskSpec", "DomainSpec",
           "Event", "Host", "Hosts", "LibvirtError", "MonitorLog",
           "checkpoint_disks", "default_machine", "host_uuid", "sweep",
           "tail"]
