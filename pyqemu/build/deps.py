"""Debian packages the project needs, installed by the project itself.

A fresh Debian 12 machine has none of QEMU's build dependencies; CI runs on
a fresh clone where nothing installed by hand exists.  So every command
that needs a package calls :func:`ensure` first.  It asks dpkg what is
missing (cheap) and only then runs apt-get, so the second run costs
nothing and never touches the network.
"""

from __future__ import annotations

import os
from typing import Iterable

from ..errors import PyqemuError
from ..log import info
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
    run(["apt-get", "update", "-qq"], env=env)
    run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", *todo],
        env=env)
    still = missing(todo)
    if still:
        raise DependencyError("apt-get did not install: " + " ".join(still))
