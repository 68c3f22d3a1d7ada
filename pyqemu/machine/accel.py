"""Which accelerator the project's QEMUs run on: KVM where this host can
really run guests with it, TCG otherwise.

Operators run KVM, so that is what the numbers should come from; but a
guest started with ``accel=kvm`` on a host that cannot run it fails (no
device, no permission) or, worse, runs at a crawl.  So KVM is chosen
only when three things hold:

1. ``/dev/kvm`` opens read-write: it exists, we may use it, and it is a
   device (the libvirt hosts bind a read-only file over it on purpose);
2. ``KVM_GET_API_VERSION`` answers 12, the only version the kernel has
   ever shipped since 2.6.22: anything else is not a KVM to talk to;
3. the CPU has hardware virtualization (``vmx`` or ``svm`` among its
   flags).  A ``/dev/kvm`` can answer without it: software KVMs such as
   PVM (``kvm_pvm``, found in nested sandboxes) run only guest kernels
   built for them and emulate everything else one instruction at a
   time.  Measured on such a host (2 vCPUs, kvm_pvm, no vmx): the
   boot-sector writer guest (:mod:`pyqemu.machine.guest`) did 288 writes
   in 8 s, against 23,000 under TCG, and Debian's kernel had not left
   its decompressor after 5 minutes, where TCG boots it in 6 s.

The answer is worked out once per process (:func:`detect`) and every VM
takes it unless its caller says otherwise (``VM(accel=...)``,
:func:`choose` with ``tcg=True``), so that one run never mixes the two
by accident: a migration needs both ends on the same accelerator.
Output that reports measurements names the accelerator with
:func:`label`, and :func:`detect` says why it was chosen.
"""

from __future__ import annotations

import fcntl
import functools
import os
from dataclasses import dataclass
from pathlib import Path

KVM = "kvm"
TCG = "tcg"
#: The values ``-machine ...,accel=`` takes here
ACCELS = (KVM, TCG)
#: How output names them
LABELS = {KVM: "KVM", TCG: "TCG"}

DEVICE = Path("/dev/kvm")
CPUINFO = Path("/proc/cpuinfo")
#: _IO(KVMIO, 0x00), from <linux/kvm.h>
KVM_GET_API_VERSION = 0xAE00
KVM_API_VERSION = 12
#: CPU flags of hardware virtualization: Intel VT-x, AMD-V
HARDWARE_FLAGS = frozenset({"vmx", "svm"})


@dataclass(frozen=True)
class Choice:
    """The accelerator for this host, and what the probe found."""

    accel: str
    #: one line: why this accelerator (what failed, or what answered)
    why: str

    @property
    def label(self) -> str:
        return label(self.accel)

    def __str__(self) -> str:
        return f"{self.label} ({self.why})"


def cpu_flags(cpuinfo: Path = CPUINFO) -> set[str]:
    """The flags of the first CPU in *cpuinfo* (empty if unreadable)."""
    try:
        text = cpuinfo.read_text(errors="replace")
    except OSError:
        return set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            return set(value.split())
    return set()


def probe(device: Path = DEVICE, cpuinfo: Path = CPUINFO) -> Choice:
    """Ask the host now, uncached (:func:`detect` is the cached answer for
    the real device; tests point this at other files)."""
    try:
        fd = os.open(device, os.O_RDWR | os.O_CLOEXEC)
    except OSError as e:
        return Choice(TCG, f"{device}: {e.strerror}")
    try:
        version = fcntl.ioctl(fd, KVM_GET_API_VERSION)
    except OSError as e:
        return Choice(TCG, f"{device}: KVM_GET_API_VERSION: {e.strerror}")
    finally:
        os.close(fd)
    if version != KVM_API_VERSION:
        return Choice(TCG, f"{device} answers KVM API version {version}, "
                           f"not {KVM_API_VERSION}")
    hardware = sorted(HARDWARE_FLAGS & cpu_flags(cpuinfo))
    if not hardware:
        return Choice(TCG, f"{device} answers, but the CPU has no vmx or "
                           "svm: a software KVM, which emulates guests "
                           "like ours far slower than TCG")
    return Choice(KVM, f"{device} answers KVM API version {version}, CPU "
                       f"with {hardware[0]}")


@functools.cache
def detect() -> Choice:
    """This host's accelerator, probed once per process."""
    return probe()


def choose(tcg: bool = False) -> str:
    """``"kvm"`` or ``"tcg"`` for a VM: the host's choice (:func:`detect`),
    or TCG whatever the host has when *tcg* is set (a test whose point
    needs TCG's speed, say)."""
    return TCG if tcg else detect().accel


def label(accel: str | None = None) -> str:
    """"KVM" or "TCG": how output names *accel* (default: the host's
    choice, which is what every VM runs on unless told otherwise)."""
    name = detect().accel if accel is None else accel
    try:
        return LABELS[name]
    except KeyError:
        raise ValueError(f"unknown accelerator {name!r}; one of "
                         f"{', '.join(ACCELS)}") from None


def check(accel: str) -> str:
    """*accel* if it is one the project runs, else ValueError."""
    label(accel)
    return accel
