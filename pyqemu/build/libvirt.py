"""Build the patched libvirt: only what the private hosts run.

The hosts (:mod:`pyqemu.machine.libvirt`) run ``libvirtd`` from the build
tree, which loads its QEMU driver and the storage-file module it needs
(for backup scratch files and checkpoints) from the same tree.  Every
other driver is off, and so are the documentation and the optional
libraries, so the build compiles about 350 files.  virsh, virtlogd and
the client tools stay Debian's: they talk to our libvirtd over RPC.

The paths are Debian's (``/usr``, ``/etc``, ``/var``, ``/run``), so the
hosts' private mounts over ``/etc/libvirt`` and friends apply to our
daemon as they do to Debian's.
"""

from __future__ import annotations

import json
import sys

from ..errors import CommandError, PyqemuError
from ..log import info
from ..paths import Layout
from ..tree import libvirt as tree_libvirt
from ..util.proc import run
from . import deps
from .steps import ccache_env

#: meson options: Debian's paths, the QEMU driver and the daemon only,
#: unoptimized and without debug info: ./run test builds it cold in the
#: background on a saturated CPU, and a daemon that manages a handful of
#: test domains does not need -O2 (libvirt's config.h only asks for
#: _FORTIFY_SOURCE when optimizing, so -O0 builds as it is).
OPTIONS = (
    "--prefix=/usr", "--sysconfdir=/etc", "--localstatedir=/var",
    "-Doptimization=0", "-Ddebug=false",
    "-Drunstatedir=/run", "-Dsystem=true", "-Ddocs=disabled",
    "-Dtests=enabled", "-Dyajl=enabled",
    "-Ddriver_qemu=enabled", "-Ddriver_libvirtd=enabled",
    "-Ddriver_remote=enabled",
    "-Dqemu_moddir=/usr/lib/x86_64-linux-gnu/qemu",
    # the storage-file module: backup scratch files, image checks
    "-Dstorage_dir=enabled", "-Dstorage_fs=enabled",
    *(f"-Ddriver_{d}=disabled" for d in (
        "bhyve", "esx", "hyperv", "interface", "libxl", "lxc", "ch",
        "network", "openvz", "secrets", "test", "vbox", "vmware", "vz")),
    *(f"-Dstorage_{s}=disabled" for s in (
        "disk", "gluster", "iscsi", "iscsi_direct", "lvm", "mpath", "rbd",
        "scsi", "vstorage", "zfs")),
    *(f"-D{o}=disabled" for o in (
        "apparmor", "attr", "audit", "blkid", "capng", "curl", "fuse",
        "glusterfs", "libiscsi", "libnl", "libpcap", "libssh", "libssh2",
        "netcf", "nls", "numactl", "openwsman", "pciaccess", "polkit",
        "readline", "sanlock", "sasl", "selinux", "udev",
        "wireshark_dissector", "secdriver_apparmor", "secdriver_selinux",
        "numad", "firewalld", "host_validate", "nss", "bash_completion",
        "pm_utils", "sysctl_config", "dtrace", "login_shell")),
)
#: What the hosts run
TARGETS = ("src/libvirtd", "src/libvirt_driver_qemu.so",
           "src/libvirt_storage_file_fs.so")


class LibvirtBuildError(PyqemuError):
    """The libvirt build failed; the message says where to look."""


def build(layout: Layout) -> tree_libvirt.LibvirtTree:
    """Fetch, patch and build libvirt (each step a no-op when done)."""
    deps.require(deps.LIBVIRT_BUILD)
    tree = tree_libvirt.prepare(layout)
    env = dict(ccache_env(layout), CC="ccache gcc")
    record = tree.build / "pyqemu-setup.json"
    want = {"source": str(tree.source), "options": list(OPTIONS)}
    try:
        configured = json.loads(record.read_text()) == want
    except (OSError, ValueError):
        configured = False
    log = layout.root / "libvirt-build.log"
    try:
        if not configured:
            info(f"configuring libvirt in {tree.build}")
            wipe = ["--wipe"] if (tree.build / "build.ninja").exists() \
                else []
            run([sys.executable, "-m", "mesonbuild.mesonmain", "setup",
                 *wipe, str(tree.build), str(tree.source), *OPTIONS],
                cwd=tree.source, env=env, what="meson setup of libvirt")
            record.write_text(json.dumps(want))
        res = run(["ninja", "-C", str(tree.build), *TARGETS], env=env,
                  what="ninja (libvirt)")
        log.write_text(res.stdout)
    except CommandError as e:
        log.write_text(e.output)
        raise LibvirtBuildError(f"building libvirt failed: {e} (log: {log})"
                                ) from None
    return tree


#: libvirt's own tests of what patches/libvirt touches (migration
#: parameters and capabilities, the migration cookie, capability probing)
OWN_TESTS = ("qemumigparamstest", "qemumigrationcookiexmltest",
             "qemucapabilitiestest")


def own_tests(layout: Layout) -> tuple[bool, str]:
    """Build and run :data:`OWN_TESTS` (and the mock libraries they
    preload) in the libvirt build; (all passed, meson's summary)."""
    tree = build(layout)
    env = dict(ccache_env(layout), CC="ccache gcc")
    targets = run(["ninja", "-C", str(tree.build), "-t", "targets", "all"],
                  what="ninja -t targets").stdout
    mocks = sorted({ln.split(":")[0] for ln in targets.splitlines()
                    if ln.startswith("tests/lib") and
                    ln.split(":")[0].endswith("mock.so")})
    run(["ninja", "-C", str(tree.build), *mocks,
         *(f"tests/{t}" for t in OWN_TESTS)], env=env,
        what="ninja (libvirt's tests)")
    res = run([sys.executable, "-m", "mesonbuild.mesonmain", "test",
               "-C", str(tree.build), "--no-rebuild", *OWN_TESTS],
              check=False, what="meson test (libvirt)")
    summary = [ln.strip() for ln in res.stdout.splitlines()
               if any(t in ln for t in OWN_TESTS)]
    return res.returncode == 0, "; ".join(summary)
