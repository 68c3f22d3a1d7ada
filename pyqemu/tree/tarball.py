"""The pinned orig tarball: found in the cache or fetched through
:mod:`~pyqemu.tree.debsrc`, verified against ``qemu-versions.toml``, and
unpacked."""

from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
import tomllib
from dataclasses import dataclass
from pathlib import Path

from ..log import warn
from ..paths import VERSIONS_FILE, Layout
from . import debsrc
from .debsrc import SourceError


@dataclass(frozen=True)
class Tarball:
    path: Path
    version: str
    sha256: str
    known_good: bool


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def load_versions() -> dict:
    with open(VERSIONS_FILE, "rb") as f:
        return tomllib.load(f)["debian"]


def obtain(layout: Layout) -> Tarball:
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
        except SourceError as e:
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


#: The tarball's firmware sources (u-boot, skiboot, SLOF, ...): 246 of its
#: 334 MB.  Nothing here builds firmware (Debian's packages supply SeaBIOS
#: and the option ROMs), so they are left out of the tree and of its base
#: commit, which saves most of the unpacking and the ``git add``.
FIRMWARE_SOURCES = "roms"


def _firmware_source(member: tarfile.TarInfo) -> bool:
    """A directory under roms/, or anything in one; roms/'s own files
    (build configurations, scripts) are kept."""
    parts = member.name.split("/")     # top/roms/<dir>/...
    return len(parts) >= 3 and parts[1] == FIRMWARE_SOURCES and \
        (len(parts) > 3 or member.isdir())


def unpack(tarball: Path, dest: Path) -> None:
    """Replace *dest* with the tarball's top directory, owned by us,
    without the firmware sources (:data:`FIRMWARE_SOURCES`)."""
    tmp = dest.with_name(dest.name + ".unpacking")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    uid, gid = os.getuid(), os.getgid()

    def mine(member: tarfile.TarInfo, path: str) -> tarfile.TarInfo | None:
        if _firmware_source(member):
            return None
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
