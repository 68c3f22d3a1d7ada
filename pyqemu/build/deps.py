"""Debian packages the project needs, installed by the project itself.

A fresh Debian 12 machine has none of QEMU's build dependencies; CI runs on
a fresh clone where nothing installed by hand exists.  So every command
that needs a package calls :func:`ensure` first.  It asks dpkg what is
missing (cheap) and only then runs apt-get, so the second run costs
nothing and never touches the network.
"""

from __future__ import annotations

import fcntl
import os
import struct
from typing import Iterable

from ..errors import PyqemuError
from ..log import info
from ..util.poll import until
from ..util.proc import run

#: What building QEMU 10.2 (x86_64-softmmu + tools, no default features)
#: and the shim library needs.  Debian's tarball strips the prebuilt
#: device trees of pc-bios/dtb, which QEMU's meson then insists on
#: compiling: hence dtc (device-tree-compiler).
BUILD = (
    "gcc", "libc6-dev", "ninja-build", "pkgconf", "libglib2.0-dev",
    "zlib1g-dev", "ccache", "flex", "bison", "git", "xz-utils", "perl",
    "python3-venv", "device-tree-compiler",
)

#: Firmware for ``-machine pc``: Debian strips the blobs from QEMU's source
#: tarball, so SeaBIOS and the option ROMs come from these packages.
FIRMWARE = ("seabios", "qemu-system-data")

#: ``check libvirt``: bookworm's libvirt 9.0 daemon, its QEMU driver, virsh
#: and virtnbdbackup (with virtnbdrestore).  Never libvirt-daemon-system:
#: that one configures and starts the machine's own libvirt.
LIBVIRT = ("libvirt-daemon", "libvirt-daemon-driver-qemu", "libvirt-clients",
           "virtnbdbackup", "iproute2", "util-linux")

#: Used by the tests and benchmarks (network namespaces, instruction counts).
TEST = ("iproute2", "valgrind")

#: The Linux guest (pyqemu.machine.linuxguest): Debian's own kernel,
#: booted with an initramfs the project builds from busybox-static and a
#: writer compiled with gcc -static (hence libc6-dev's libc.a).
LINUX_GUEST = ("linux-image-amd64", "busybox-static", "libc6-dev", "gcc")


class DependencyError(PyqemuError):
    """A required package is missing and cannot be installed here."""


def missing(packages: Iterable[str]) -> list[str]:
    """Return the packages dpkg does not report as installed."""
    out = []
    for pkg in packages:
        res = run(["dpkg-query", "-W", "-f=${Status}", pkg], check=False)
        if res.returncode != 0 or "install ok installed" not in res.stdout:
            out.append(pkg)
    return out


def ensure(packages: Iterable[str]) -> None:
    """Install whatever of *packages* is missing; a no-op when none is."""
    todo = missing(packages)
    if not todo:
        return
    if os.geteuid() != 0:
        raise DependencyError(
            "missing Debian packages: " + " ".join(todo) +
            " (run as root so pyqemu can apt-get install them)")
    info("installing Debian packages: " + " ".join(todo))
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    wait_for_locks()
    run(["apt-get", "update", "-qq"], env=env)
    run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", *todo],
        env=env)
    still = missing(todo)
    if still:
        raise DependencyError("apt-get did not install: " + " ".join(still))


#: What apt-get and dpkg lock (fcntl record locks) while they work.
APT_LOCKS = ("/var/lib/dpkg/lock-frontend", "/var/lib/dpkg/lock",
             "/var/lib/apt/lists/lock", "/var/cache/apt/archives/lock")
#: struct flock: l_type, l_whence, l_start, l_len, l_pid (native alignment)
FLOCK = "@hhqqi4x"


def held(paths: Iterable[str]) -> list[str]:
    """Those of the lock files *paths* another process holds now.

    Asked with F_GETLK, which takes no lock: a probe that took the lock,
    even for a moment, could make the apt-get it waits for fail."""
    want = struct.pack(FLOCK, fcntl.F_WRLCK, os.SEEK_SET, 0, 0, 0)
    out = []
    for path in paths:
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            continue
        try:
            got = fcntl.fcntl(fd, fcntl.F_GETLK, want)
        finally:
            os.close(fd)
        if struct.unpack(FLOCK, got)[0] != fcntl.F_UNLCK:
            out.append(path)
    return out


def wait_for_locks(paths: Iterable[str] = APT_LOCKS,
                   timeout: float = 600) -> None:
    """Wait while another apt-get or dpkg (a colleague's install,
    unattended-upgrades) holds the package locks, instead of failing at
    once with "Could not get lock"."""
    paths = tuple(paths)
    if held(paths):
        info("waiting for another apt-get/dpkg to release its lock")
    until(lambda: held(paths), lambda busy: not busy, timeout,
          "the apt/dpkg locks to be released", interval=1)
