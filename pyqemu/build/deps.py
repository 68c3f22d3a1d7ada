"""Debian packages the project needs, and the one place that installs them.

Only the ``./run`` commands install.  :data:`COMMANDS` says what each one
needs, and ``cli.main`` calls :func:`ensure_for` with it before the command
does anything else, so a machine that already has the packages and a fresh
one run the same code afterwards.  Helpers (:mod:`pyqemu.machine`) and
tests never install: they call :func:`require`, which fails with one line
naming the commands that install what is missing.  (A test that installed
for itself would change the machine under the test's feet; one did:
libvirt's packages appeared in the middle of a test that snapshots
/etc/libvirt.)

Asking dpkg what is missing is cheap, so a second run costs nothing and
never touches the network.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterable, Sequence

from ..errors import CommandError, PyqemuError
from ..log import info
from ..util.poll import PollTimeout, until
from ..util.proc import run

#: What building QEMU 10.2 (x86_64-softmmu + tools, no default features
#: but KVM and zstd) and the shim library needs.  libzstd-dev: zstd
#: compression of qcow2 clusters, which upstream's iotest 303 needs.
#: Debian's tarball strips the prebuilt
#: device trees of pc-bios/dtb, which QEMU's meson then insists on
#: compiling: hence dtc (device-tree-compiler).
BUILD = (
    "gcc", "libc6-dev", "ninja-build", "pkgconf", "libglib2.0-dev",
    "zlib1g-dev", "ccache", "flex", "bison", "git", "xz-utils", "perl",
    "python3-venv", "device-tree-compiler", "libzstd-dev",
)

#: Firmware for ``-machine pc``: Debian strips the blobs from QEMU's source
#: tarball, so SeaBIOS and the option ROMs come from these packages.
FIRMWARE = ("seabios", "qemu-system-data")

#: Network namespaces (:mod:`pyqemu.machine.netns`): ``ip netns``, ``tc``,
#: ``sysctl`` for the namespaces' TCP settings (procps is not in a
#: minimal Debian), and ``nft`` to drop packets (the kernels here have no
#: netem).
NETNS = ("iproute2", "procps", "nftables")

#: The libvirt hosts (:mod:`pyqemu.machine.libvirt`): bookworm's libvirt
#: 9.0 daemon, its QEMU driver, virsh and virtnbdbackup (with
#: virtnbdrestore), in network namespaces.  Never libvirt-daemon-system:
#: that one configures and starts the machine's own libvirt.
LIBVIRT = ("libvirt-daemon", "libvirt-daemon-driver-qemu", "libvirt-clients",
           "virtnbdbackup", "util-linux") + NETNS

#: Building the patched libvirt (:mod:`pyqemu.build.libvirt`): Debian's
#: source package tools, and the libraries of the daemon and its QEMU
#: driver (everything else is configured off).
LIBVIRT_BUILD = ("dpkg-dev", "libxml2-dev", "libgnutls28-dev",
                 "libyajl-dev", "libtirpc-dev", "xsltproc", "libxml2-utils",
                 "gcc", "ninja-build", "pkgconf", "libglib2.0-dev", "ccache")

#: The Linux guest (:mod:`pyqemu.machine.linuxguest`): Debian's own kernel,
#: booted with an initramfs the project builds from busybox-static and a
#: writer compiled with gcc -static (hence libc6-dev's libc.a); kmod's
#: modprobe resolves the kernel modules it needs.
LINUX_GUEST = ("linux-image-amd64", "kmod", "busybox-static", "libc6-dev",
               "gcc")

#: Debian's own QEMU 7.2, the old peer of tests/test_e2e_peers.py.
PEERS = ("qemu-system-x86",)

#: Instruction counts of the hbitmap benchmark (``valgrind --tool=callgrind``).
CALLGRIND = ("valgrind",)

#: System users a package's use here needs but the package does not create.
#: libvirt's QEMU driver resolves its compiled-in default user
#: (``libvirt-qemu``) before it reads qemu.conf, and fails to start when the
#: user is missing; libvirt-daemon-system would create it, but that package
#: is never installed (see LIBVIRT).  A system user is not libvirt
#: configuration, so creating it leaves the machine's libvirt alone.
USERS = {"libvirt-qemu": "libvirt-daemon-driver-qemu"}


def _union(*groups: Sequence[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(p for g in groups for p in g))


#: Every ``./run`` command (as typed after ``./run``) and what it needs,
#: installed before it starts.  tests/test_deps.py checks that every
#: command of the CLI is here, and that each command's list covers the
#: groups the modules it runs require.
COMMANDS: dict[str, tuple[str, ...]] = {
    "build": _union(BUILD, FIRMWARE, LIBVIRT_BUILD),
    # binary() only looks, but its module builds (and requires those)
    "which": _union(BUILD, FIRMWARE),
    "demo": _union(BUILD, FIRMWARE),
    "test": _union(BUILD, FIRMWARE, NETNS, LINUX_GUEST, LIBVIRT, PEERS,
                   CALLGRIND, LIBVIRT_BUILD),
    "check faults": _union(BUILD, FIRMWARE, NETNS),
    "check libvirt": _union(BUILD, FIRMWARE, LIBVIRT, LIBVIRT_BUILD),
    "check operator": _union(BUILD, FIRMWARE, LIBVIRT, LIBVIRT_BUILD,
                             LINUX_GUEST),
    "check fuzz": _union(BUILD, FIRMWARE),
    "check backup": _union(BUILD, FIRMWARE, LINUX_GUEST),
    "check upstream": _union(BUILD, FIRMWARE, PEERS, CALLGRIND),
    # valgrind: a fix whose test fails on its parent only under it
    "series check": _union(BUILD, FIRMWARE, LIBVIRT_BUILD, CALLGRIND),
    "series cover-letter": _union(BUILD, FIRMWARE, NETNS, LINUX_GUEST,
                                  CALLGRIND),
    "bench": _union(BUILD, FIRMWARE, NETNS, LINUX_GUEST, CALLGRIND),
}

#: dpkg's database.  Tests point it at an empty directory to see how
#: helpers behave on a machine without the packages, uninstalling nothing.
ADMINDIR = "/var/lib/dpkg"
#: Seconds apt-get waits for another apt-get or dpkg (a colleague's
#: install, unattended-upgrades) to release its locks.
LOCK_TIMEOUT = 600


class DependencyError(PyqemuError):
    """A required package is missing (and, for :func:`ensure`, cannot be
    installed here)."""


def missing(packages: Iterable[str]) -> list[str]:
    """The packages dpkg does not report as installed, in the order given.

    One dpkg-query for all of them: it prints the known ones and says
    "no packages found" (exit 1) about the others, which are missing too.
    """
    wanted = list(dict.fromkeys(packages))
    if not wanted:
        return []
    res = run(["dpkg-query", f"--admindir={ADMINDIR}", "-W",
               "-f=${Package}\t${db:Status-Status}\n", "--", *wanted],
              check=False)
    if res.returncode not in (0, 1):
        raise CommandError(res.args, res.returncode, res.stderr,
                           "dpkg-query -W")
    installed = {name for name, _, status in
                 (line.partition("\t") for line in res.stdout.splitlines())
                 if status == "installed"}
    return [p for p in wanted if p not in installed]


def missing_users(packages: Iterable[str]) -> list[str]:
    """The :data:`USERS` that *packages* need and the machine lacks."""
    wanted = set(packages)
    return [user for user, pkg in USERS.items() if pkg in wanted and
            run(["getent", "passwd", user], check=False).returncode != 0]


def installers(packages: Iterable[str]) -> list[str]:
    """The ``./run`` commands that install all of *packages*: ``test``
    first (tests are the usual users of helpers), then the others."""
    need = set(packages)
    names = [c for c, pkgs in COMMANDS.items() if need <= set(pkgs)]
    return sorted(names, key=lambda c: (c != "test", c))


def _hint(packages: Sequence[str]) -> str:
    """"run ./run test (or ./run check libvirt) to install them"."""
    names = [f"./run {c}" for c in installers(packages)]
    if not names:       # a package no command installs: a bug of COMMANDS
        return "no ./run command installs them; add them to deps.COMMANDS"
    others = f" (or {', '.join(names[1:])})" if names[1:] else ""
    return f"run {names[0]}{others} to install them"


def require(packages: Sequence[str]) -> None:
    """For helpers and tests: raise :class:`DependencyError`, one line that
    names the ``./run`` commands which install them, unless every package
    in *packages* (and every user it needs, see :data:`USERS`) is there.
    Installs nothing."""
    pkgs = missing(packages)
    users = missing_users(packages)
    if not pkgs and not users:
        return
    what = []
    if pkgs:
        what.append("Debian packages " + " ".join(pkgs))
    if users:
        what.append("system user " + " ".join(users))
    raise DependencyError(f"missing {' and '.join(what)}; "
                          f"{_hint(list(packages))}")


def ensure_for(command: str) -> None:
    """What ``./run <command>`` calls first: install its :data:`COMMANDS`."""
    if command not in COMMANDS:
        raise KeyError(f"{command!r} is not in deps.COMMANDS")
    ensure(COMMANDS[command])


def ensure(packages: Sequence[str]) -> None:
    """Install whatever of *packages* is missing, and the system users they
    need; a no-op when nothing is.  For commands only (see the module's
    docstring)."""
    todo = missing(packages)
    users = missing_users(packages)
    if (todo or users) and os.geteuid() != 0:
        raise DependencyError(
            "missing " + " ".join(todo + users) +
            " (run as root so pyqemu can install them)")
    if todo:
        info("installing Debian packages: " + " ".join(todo))
        apt_get("update", "-qq")
        apt_get("install", "-y", "-qq", "--no-install-recommends", *todo)
        still = missing(todo)
        if still:
            raise DependencyError("apt-get did not install: " +
                                  " ".join(still))
    for user in missing_users(packages):
        info(f"creating system user {user} (for {USERS[user]})")
        run(["useradd", "--system", "--user-group", "--no-create-home",
             "--home-dir", "/nonexistent", "--shell", "/usr/sbin/nologin",
             user], what=f"create the {user} user")


def _locked(res: subprocess.CompletedProcess[str]) -> bool:
    return res.returncode != 0 and "Could not get lock" in res.stderr


def apt_get(*args: str, options: Sequence[str] = (),
            timeout: float = LOCK_TIMEOUT) -> None:
    """``apt-get [options] args``, waiting while another apt-get or dpkg
    holds its locks instead of failing at once.

    dpkg's locks: apt's own ``DPkg::Lock::Timeout``.  apt 2.6 (bookworm)
    applies it to those only, not to the lock of the package lists that
    ``update`` takes, nor to the download cache's; a run that fails on
    one of those ("Could not get lock") is tried again until *timeout*.
    *options* are more ``-o`` settings (tests give apt private
    directories)."""
    argv = ["apt-get", "-o", f"DPkg::Lock::Timeout={int(timeout)}",
            *options, *args]
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    tries: list[subprocess.CompletedProcess[str]] = []

    def attempt() -> subprocess.CompletedProcess[str]:
        res = run(argv, env=env, check=False)
        if _locked(res) and not tries:
            info(f"apt-get {args[0]}: waiting for another apt-get/dpkg "
                 "to release its lock")
        tries.append(res)
        return res

    try:
        res = until(attempt, lambda r: not _locked(r), timeout,
                    f"apt-get {args[0]} to get its lock", interval=2)
    except PollTimeout:
        err = tries[-1].stderr.strip().splitlines()
        raise DependencyError(
            f"apt-get {args[0]}: the lock was still held after "
            f"{timeout:g} s: {err[0] if err else ''}") from None
    if res.returncode != 0:
        raise CommandError(argv, res.returncode, res.stderr or res.stdout,
                           f"apt-get {args[0]}")
