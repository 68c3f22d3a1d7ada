"""The stock tree: the pinned tarball (or a ``--qemu-src`` checkout) as a
git base commit, plus the build fixups; what the series applies to.

The tree's first commit is the pristine source, then come the fixups for
Debian's stripped tarball and the project's device list, tagged
``pyqemu-base``.  A stamp in ``.git`` records what the tree was made
from, so an unchanged input leaves every file (and its mtime) alone and
QEMU's ninja has nothing to rebuild.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from ..log import info, warn
from ..paths import DEVICES_FILE, Layout
from . import tarball
from .debsrc import SourceError
from .git import clear_stamp, git, head, read_stamp, sync_clone, write_stamp

FIXUP_SUBJECT = "pyqemu: skip the edk2 firmware unpack (blobs stripped by Debian)"
#: Where the device list goes in a QEMU tree (configure's
#: --with-devices-x86_64=pyqemu reads it from there).
DEVICES_IN_TREE = "configs/devices/x86_64-softmmu/pyqemu.mak"
DEVICES_SUBJECT = "pyqemu: the x86_64 device list this project builds"
#: The commit the series applies to, in both trees.
BASE_TAG = "refs/tags/pyqemu-base"


@dataclass(frozen=True)
class Origin:
    """What a tree is built from, recorded next to the build for reports."""

    kind: str          # "debian" or "git"
    version: str       # Debian version or git commit
    detail: str        # tarball sha256 or checkout path

    def describe(self) -> str:
        if self.kind == "debian":
            return f"Debian qemu {self.version} (orig sha256 {self.detail[:16]}...)"
        return f"git {self.version[:12]} from {self.detail}"


def needs_firmware_fixup(tree: Path) -> bool:
    """True for a tree whose edk2 blobs were stripped (Debian's tarball)."""
    build = tree / "pc-bios" / "meson.build"
    if not build.exists() or "if unpack_edk2_blobs\n" not in build.read_text():
        return False
    return not any((tree / "pc-bios").glob("edk2-*.fd.bz2"))


def apply_firmware_fixup(tree: Path) -> None:
    """Skip pc-bios' edk2 unpack: its inputs are not in Debian's tarball."""
    build = tree / "pc-bios" / "meson.build"
    text = build.read_text()
    build.write_text(text.replace(
        "if unpack_edk2_blobs\n",
        "if unpack_edk2_blobs and false  # pyqemu: edk2 blobs stripped\n", 1))
    git(tree, "commit", "-q", "-a", "-m", FIXUP_SUBJECT)


def add_device_config(tree: Path) -> None:
    """Commit the project's device list into the tree (see DEVICES_FILE)."""
    dest = tree / DEVICES_IN_TREE
    dest.write_text(DEVICES_FILE.read_text())
    git(tree, "add", "-f", DEVICES_IN_TREE)
    git(tree, "commit", "-q", "-m", DEVICES_SUBJECT)


def fixup_id() -> str:
    """What the build fixups are, for the tree stamp: a changed device
    list makes a new base (and so a new patched tree)."""
    digest = hashlib.sha256(DEVICES_FILE.read_bytes()).hexdigest()[:16]
    return f"{FIXUP_SUBJECT}; devices {digest}"


def _finish_base(tree: Path, stamp: dict) -> Path:
    """Apply the build fixups, tag the base, record the stamp."""
    if needs_firmware_fixup(tree):
        apply_firmware_fixup(tree)
    add_device_config(tree)
    git(tree, "tag", "-f", "pyqemu-base")
    write_stamp(tree, stamp)
    return tree


def from_tarball(layout: Layout, tb: tarball.Tarball) -> Path:
    """The stock tree: pristine tarball commit plus the fixups."""
    tree = layout.source("stock")
    want = {"tarball": tb.sha256, "fixup": fixup_id()}
    if read_stamp(tree) == want:
        return tree
    info(f"unpacking {tb.path.name} into {tree}")
    tarball.unpack(tb.path, tree)
    git(tree, "init", "-q", "-b", "pyqemu")
    git(tree, "add", "-A", "-f")
    git(tree, "commit", "-q", "-m",
        f"QEMU {tb.version} (Debian orig tarball)\n\nsha256 {tb.sha256}")
    return _finish_base(tree, want)


def from_checkout(layout: Layout, checkout: Path) -> Path:
    """The stock tree for --qemu-src: a shared clone of the checkout's HEAD.

    The developer's checkout is only read, never modified.
    """
    res = git(checkout, "rev-parse", "HEAD", check=False)
    if res.returncode != 0:
        raise SourceError(f"--qemu-src {checkout}: not a git checkout "
                          f"({res.stderr.strip()})")
    commit = res.stdout.strip()
    if git(checkout, "status", "--porcelain", "--untracked-files=no").stdout:
        warn(f"{checkout} has uncommitted changes; building its HEAD {commit[:12]}")
    tree = layout.source("stock")
    want = {"git": commit, "fixup": fixup_id()}
    if read_stamp(tree) == want:
        return tree
    clear_stamp(tree)
    sync_clone(checkout, tree, commit, "pyqemu")
    return _finish_base(tree, want)


def record_origin(layout: Layout, origin: Origin) -> None:
    path = layout.trees / "origin.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    # atomically: every flavour's source step records it, and the next
    # flavour's may run beside this one's (build.driver.Ahead)
    tmp = path.with_name(f".origin.{os.getpid()}.json")
    tmp.write_text(json.dumps(origin.__dict__))
    tmp.replace(path)


def read_origin(layout: Layout) -> Origin | None:
    try:
        return Origin(**json.loads((layout.trees / "origin.json").read_text()))
    except (OSError, ValueError, TypeError):
        return None


def prepare(layout: Layout) -> tuple[Path, Origin]:
    """Make (or reuse) the stock tree of *layout* and say what it was made
    from (its ``qemu_src`` checkout, else the pinned tarball)."""
    if layout.qemu_src is not None:
        tree = from_checkout(layout, layout.qemu_src)
        origin = Origin("git", head(tree), str(layout.qemu_src))
    else:
        tb = tarball.obtain(layout)
        tree = from_tarball(layout, tb)
        origin = Origin("debian", tb.version, tb.sha256)
    record_origin(layout, origin)
    return tree, origin
