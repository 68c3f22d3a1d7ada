"""Disk images compared, and damaged on purpose, with QEMU's own tools.

Checks that restore a backup compare the result with the disk; a
comparison that cannot fail proves nothing, so they also compare copies
they damaged on purpose (:func:`misplace`).  The tools are the build under
test's ``qemu-img`` and ``qemu-io``, given by path.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..errors import CommandError
from ..util.poll import until
from ..util.proc import run

SECTOR = 512


def holders(image: Path) -> list[int]:
    """Pids of the processes that have *image* open (in any mount
    namespace: the file is matched by device and inode, not by path)."""
    want = image.stat()
    out = []
    for fd_dir in Path("/proc").glob("[0-9]*/fd"):
        try:
            fds = list(fd_dir.iterdir())
        except OSError:         # gone, or not ours to look at
            continue
        for fd in fds:
            try:
                st = os.stat(fd)
            except OSError:
                continue
            if (st.st_dev, st.st_ino) == (want.st_dev, want.st_ino):
                out.append(int(fd_dir.parent.name))
                break
    return out


def wait_closed(image: Path, timeout: float = 60) -> None:
    """Wait until no process has *image* open.

    virtnbdrestore writes through a qemu-nbd it daemonizes, and ends it
    with SIGTERM without waiting: it returns while qemu-nbd may still hold
    the image and its lock, and a ``qemu-img compare`` right after fails
    ("Failed to get shared "write" lock"; seen under load)."""
    until(lambda: holders(image), lambda pids: not pids, timeout,
          f"the processes holding {image} to close it")


def compare(qemu_img: Path, a: Path, b: Path, shared: bool = False) -> str:
    """'identical', or what ``qemu-img compare`` said of two qcow2 images
    (a difference is a check's result, not an error); an image qemu-img
    cannot read raises CommandError, so that it never passes for a
    difference.

    *shared* (``-U``): read images that a paused QEMU still holds open,
    e.g. a libvirt domain's disk between two migrations.  Pausing flushed
    QEMU's caches (``stop`` drains and flushes every block device), so
    the file is what the guest wrote."""
    res = run([qemu_img, "compare", *(["-U"] if shared else []), "-f",
               "qcow2", "-F", "qcow2", a, b], check=False)
    if res.returncode == 0:
        return "identical"
    if res.returncode != 1:     # 2: qemu-img could not read them at all
        raise CommandError(res.args, res.returncode, res.stderr or res.stdout,
                           "qemu-img compare")
    return f"differ: {(res.stdout + res.stderr).strip()}"


def overlay(qemu_img: Path, image: Path, out: Path) -> Path:
    """A qcow2 overlay *out* over qcow2 *image*: a copy to damage that
    leaves *image* untouched and costs nothing."""
    run([qemu_img, "create", "-q", "-f", "qcow2", "-b", image, "-F", "qcow2",
         out], what=f"qemu-img create an overlay of {image.name}")
    return out


def write(qemu_io: Path, image: Path, data_file: Path, offset: int,
          length: int) -> None:
    """Write *length* bytes of *data_file* at *offset* into qcow2 *image*."""
    run([qemu_io, "-f", "qcow2", "-c",
         f"write -s {data_file} {offset} {length}", image],
        what=f"qemu-io write into {image.name}")


def read(qemu_img: Path, image: Path, offset: int, length: int,
         out: Path) -> Path:
    """*length* bytes of qcow2 *image* from *offset* into the file *out*.

    Through QEMU's raw driver, whose ``offset`` and ``size`` options make
    a window on the image (``qemu-img dd skip=`` writes an empty file
    here)."""
    window = {"driver": "raw", "offset": offset, "size": length,
              "file": {"driver": "qcow2",
                       "file": {"driver": "file", "filename": str(image)}}}
    run([qemu_img, "convert", "-O", "raw", f"json:{json.dumps(window)}",
         out], what=f"qemu-img convert a window of {image.name}")
    return out


def misplace(qemu_img: Path, qemu_io: Path, image: Path, out: Path,
             src_lba: int, dst_lba: int, sectors: int) -> Path:
    """A copy of qcow2 *image* whose *sectors* sectors at *dst_lba* hold
    those at *src_lba*: a block restored at the wrong place.  The copy is
    an overlay (*out*.qcow2); the block passes through *out*.block."""
    copy, block = out.with_suffix(".qcow2"), out.with_suffix(".block")
    overlay(qemu_img, image, copy)
    read(qemu_img, image, src_lba * SECTOR, sectors * SECTOR, block)
    write(qemu_io, copy, block, dst_lba * SECTOR, sectors * SECTOR)
    return copy
