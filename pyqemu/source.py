"""The pinned QEMU source: tarball, unpacked git trees, firmware fixup.

Each flavour gets a git work tree in the cache.  The tree's first commit
is the pristine source, the second the build fixup for Debian's stripped
tarball; the patched flavour then gets the series on top (see
:mod:`pyqemu.series`).  A stamp in ``.git`` records what the tree was made
from, so an unchanged input leaves every file (and its mtime) alone and
QEMU's ninja has nothing to rebuild.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tarfile
import tomllib
from dataclasses import dataclass
from pathlib import Path

from . import debsrc
from .log import info, warn
from .paths import Layout

VERSIONS_FILE = Path(__file__).with_name("qemu-versions.toml")
GIT_ID = ["-c", "user.name=pyqemu", "-c", "user.email=pyqemu@localhost",
          "-c", "commit.gpgsign=false", "-c", "core.autocrlf=false"]
FIXUP_SUBJECT = "pyqemu: skip the edk2 firmware unpack (blobs stripped by Debian)"
DEVICES_FILE = Path(__file__).with_name("qemu-devices.mak")
#: Where the device list goes in a QEMU tree (configure's
#: --with-devices-x86_64=pyqemu reads it from there).
DEVICES_IN_TREE = "configs/devices/x86_64-softmmu/pyqemu.mak"
DEVICES_SUBJECT = "pyqemu: the x86_64 device list this project builds"


class SourceError(debsrc.SourceError):
    """Raised when no usable QEMU source can be prepared."""


@dataclass(frozen=True)
class Tarball:
    path: Path
    version: str
    sha256: str
    known_good: bool


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


def git(tree: Path, *args: str, check: bool = True,
        capture: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["git", *GIT_ID, "-C", str(tree), *args],
                          check=check, capture_output=capture, text=True)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def load_versions() -> dict:
    with open(VERSIONS_FILE, "rb") as f:
        return tomllib.load(f)["debian"]


def obtain_tarball(layout: Layout) -> Tarball:
    """Return the pinned orig tarball, verified, downloading it only if needed.

    The pin is the newest entry of ``qemu-versions.toml``.  A cached copy
    with the right sha256 needs no network; otherwise the first suite
    whose source index lists exactly that version serves it.
    """
    conf = load_versions()
    pin = conf["known"][-1]
    cached = layout.downloads / pin["orig"]
    if cached.exists():
        if sha256_file(cached) == pin["sha256"]:
            return Tarball(cached, pin["version"], pin["sha256"], True)
        warn(f"{cached} does not match its known sha256; downloading again")
        cached.unlink()
    errors = []
    for suite in conf["suites"]:
        apt = debsrc.PrivateApt(layout.apt / suite, conf["package"], suite)
        try:
            apt.update()
            offer = apt.offer(pin["version"])
            path = apt.download(layout.downloads, offer)
        except debsrc.SourceError as e:
            errors.append(str(e))
            continue
        sha = sha256_file(path)
        if sha != pin["sha256"]:
            path.unlink()
            raise SourceError(f"{pin['orig']}: sha256 {sha} does not match the "
                              f"pinned {pin['sha256']}")
        return Tarball(path, pin["version"], sha, True)
    raise SourceError(f"no Debian suite serves qemu {pin['version']}: "
                      + "; ".join(errors) + ". Use --qemu-src with a QEMU "
                      f"{conf['series']} checkout instead")


def _unpack(tarball: Path, dest: Path) -> None:
    tmp = dest.with_name(dest.name + ".unpacking")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    uid, gid = os.getuid(), os.getgid()

    def mine(member: tarfile.TarInfo, path: str) -> tarfile.TarInfo:
        # Owned by us, not by the tarball's uid: git refuses to work in a
        # tree owned by someone else ("dubious ownership").
        member = tarfile.tar_filter(member, path)
        return member.replace(uid=uid, gid=gid, uname="", gname="")

    with tarfile.open(tarball) as tf:
        tf.extractall(tmp, filter=mine)
    (top,) = list(tmp.iterdir())
    shutil.rmtree(dest, ignore_errors=True)
    top.rename(dest)
    tmp.rmdir()


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


def read_stamp(tree: Path) -> dict | None:
    try:
        return json.loads((tree / ".git" / "pyqemu-stamp.json").read_text())
    except (OSError, ValueError):
        return None


def clear_stamp(tree: Path) -> None:
    """Forget what a tree was made from, before changing it."""
    (tree / ".git" / "pyqemu-stamp.json").unlink(missing_ok=True)


def write_stamp(tree: Path, stamp: dict) -> None:
    (tree / ".git" / "pyqemu-stamp.json").write_text(json.dumps(stamp, indent=1))


def sync_clone(origin: Path, tree: Path, ref: str, branch: str) -> None:
    """Make *tree* a shared clone of *origin*, checked out on *branch* at
    *ref* of *origin*: created if missing, else updated in place (so that
    unchanged files keep their mtimes), with no am session or untracked
    file left over.  *origin* itself is only read."""
    if not (tree / ".git").is_dir():
        shutil.rmtree(tree, ignore_errors=True)
        tree.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(["git", "clone", "-q", "--shared", "--no-checkout",
                        str(origin), str(tree)], check=True)
    else:
        git(tree, "am", "--abort", check=False)
    git(tree, "fetch", "-q", str(origin), ref)
    git(tree, "checkout", "-q", "-f", "-B", branch, "FETCH_HEAD")
    git(tree, "clean", "-q", "-f", "-d")


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


def base_tree_from_tarball(layout: Layout, tarball: Tarball) -> Path:
    """The stock tree: pristine tarball commit plus the firmware fixup."""
    tree = layout.source("stock")
    want = {"tarball": tarball.sha256, "fixup": fixup_id()}
    if read_stamp(tree) == want:
        return tree
    info(f"unpacking {tarball.path.name} into {tree}")
    _unpack(tarball.path, tree)
    git(tree, "init", "-q", "-b", "pyqemu")
    git(tree, "add", "-A", "-f")
    git(tree, "commit", "-q", "-m",
        f"QEMU {tarball.version} (Debian orig tarball)\n\nsha256 {tarball.sha256}")
    return _finish_base(tree, want)


def base_tree_from_git(layout: Layout, checkout: Path) -> Path:
    """The stock tree for --qemu-src: a shared clone of the checkout's HEAD.

    The developer's checkout is only read, never modified.
    """
    res = git(checkout, "rev-parse", "HEAD", check=False)
    if res.returncode != 0:
        raise SourceError(f"--qemu-src {checkout}: not a git checkout "
                          f"({res.stderr.strip()})")
    head = res.stdout.strip()
    if git(checkout, "status", "--porcelain", "--untracked-files=no").stdout:
        warn(f"{checkout} has uncommitted changes; building its HEAD {head[:12]}")
    tree = layout.source("stock")
    want = {"git": head, "fixup": fixup_id()}
    if read_stamp(tree) == want:
        return tree
    clear_stamp(tree)
    sync_clone(checkout, tree, head, "pyqemu")
    return _finish_base(tree, want)


def record_origin(layout: Layout, origin: Origin) -> None:
    path = layout.root / "tree" / layout.tag / "origin.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(origin.__dict__))


def read_origin(layout: Layout) -> Origin | None:
    try:
        data = json.loads((layout.root / "tree" / layout.tag /
                           "origin.json").read_text())
        return Origin(**data)
    except (OSError, ValueError, TypeError):
        return None


def prepare_stock(layout: Layout, qemu_src: Path | None) -> tuple[Path, Origin]:
    """Make (or reuse) the stock tree and say what it was made from."""
    if qemu_src is not None:
        tree = base_tree_from_git(layout, qemu_src)
        origin = Origin("git", git(tree, "rev-parse", "HEAD").stdout.strip(),
                        str(qemu_src))
    else:
        tarball = obtain_tarball(layout)
        tree = base_tree_from_tarball(layout, tarball)
        origin = Origin("debian", tarball.version, tarball.sha256)
    record_origin(layout, origin)
    return tree, origin
