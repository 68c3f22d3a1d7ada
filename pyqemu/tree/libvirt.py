"""The libvirt tree: Debian bookworm's libvirt source, Debian's own patches
applied, then the project's libvirt series (``patches/libvirt/``).

The operators' migrations go through libvirt, and bookworm's libvirt 9.0
never turns live bitmap migration on (see the series' messages).  The
source is fetched the way QEMU's is (:mod:`pyqemu.tree.debsrc`: ``apt-get
source`` through a private apt configuration derived from the machine's
own sources, never written into the repository), pinned to the version
installed from bookworm, and checked against its sha256.

``dpkg-source -x`` applies Debian's quilt patches; the result is
committed as the base of a git tree, and the series is applied on top
with ``git am``, one patch at a time, so a patch that does not apply is
named.  A tree whose base and series are unchanged is reused.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from ..errors import PyqemuError
from ..log import info
from ..paths import Layout
from ..util.proc import run
from .debsrc import PrivateApt
from .git import clear_stamp, git, read_stamp, sync_clone, write_stamp
from .series import LIBVIRT_PATCH_DIR, Patch, apply_series, patches, series_hash
from .tarball import sha256_file

#: The libvirt the series is built for: bookworm's, as installed here.
PACKAGE = "libvirt"
SUITE = "bookworm"
VERSION = "9.0.0-4+deb12u2"
#: What apt-get source downloads, with their sha256
FILES = {
    "libvirt_9.0.0.orig.tar.xz":
        "deca5cff1b7baac297bca9663907c61f71a47183371dc7ac019c107806d5435a",
    "libvirt_9.0.0-4+deb12u2.debian.tar.xz":
        "5152a991ed16d3e155f7e14645d654cf2dbf0e60cbd256c4db121593097a1006",
    "libvirt_9.0.0-4+deb12u2.dsc":
        "4c6794d4af567cb984d1996a7c9f6b66102f5ccb81faffe2dcef8a95656a16f0",
}
DSC = "libvirt_9.0.0-4+deb12u2.dsc"
BASE_TAG = "pyqemu-debian-base"


class LibvirtSourceError(PyqemuError):
    """The libvirt source could not be obtained or patched."""


@dataclass(frozen=True)
class LibvirtTree:
    """Where the libvirt source and build of a layout live."""

    root: Path

    @classmethod
    def of(cls, layout: Layout) -> "LibvirtTree":
        return cls(layout.root / "libvirt")

    @property
    def downloads(self) -> Path:
        return self.root / "downloads"

    @property
    def base(self) -> Path:
        """Debian's source with Debian's patches, as a git repository."""
        return self.root / "base"

    @property
    def source(self) -> Path:
        """The base plus patches/libvirt."""
        return self.root / "src"

    @property
    def build(self) -> Path:
        return self.root / "build"

    @property
    def libvirtd(self) -> Path:
        """The daemon the private hosts run (it loads its driver modules
        from its own build tree)."""
        return self.build / "src" / "libvirtd"


def _download(tree: LibvirtTree, layout: Layout) -> None:
    """The source package's files, from the cache if their sha256 match."""
    have = all((tree.downloads / n).exists() and
               sha256_file(tree.downloads / n) == sha
               for n, sha in FILES.items())
    if have:
        return
    apt = PrivateApt(layout.root / "apt-libvirt", PACKAGE, SUITE)
    apt.update()
    apt.download(tree.downloads, apt.offer(VERSION))
    for name, sha in FILES.items():
        got = sha256_file(tree.downloads / name)
        if got != sha:
            raise LibvirtSourceError(f"{name}: sha256 {got}, expected {sha}")


def _base(tree: LibvirtTree, layout: Layout) -> None:
    """Debian's source with Debian's patches, committed once."""
    want = {"version": VERSION}
    if read_stamp(tree.base) == want:
        return
    _download(tree, layout)
    shutil.rmtree(tree.base, ignore_errors=True)
    info(f"unpacking libvirt {VERSION} with Debian's patches")
    run(["dpkg-source", "--no-check", "-x", str(tree.downloads / DSC),
         str(tree.base)], what="dpkg-source -x")
    git(tree.base, "init", "-q")
    git(tree.base, "add", "-A")
    git(tree.base, "commit", "-q", "-m",
        f"libvirt {VERSION} with Debian's patches")
    git(tree.base, "tag", "-f", BASE_TAG)
    write_stamp(tree.base, want)


def series() -> list[Patch]:
    """patches/libvirt, in order."""
    return patches(LIBVIRT_PATCH_DIR)


def prepare(layout: Layout) -> LibvirtTree:
    """The patched libvirt source tree, made or reused."""
    tree = LibvirtTree.of(layout)
    tree.root.mkdir(parents=True, exist_ok=True)
    _base(tree, layout)
    ours = series()
    want = {"version": VERSION, "series": series_hash(ours)}
    if read_stamp(tree.source) == want:
        return tree
    clear_stamp(tree.source)
    sync_clone(tree.base, tree.source, BASE_TAG, "pyqemu-libvirt")
    info(f"applying {len(ours)} patches to libvirt in {tree.source}")
    apply_series(tree.source, ours)
    write_stamp(tree.source, want)
    return tree
