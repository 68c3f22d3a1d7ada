"""Files written whole or not at all.

The cache is shared by concurrent pytest workers and commands: two of
them may make the same file at once, and a reader must never see half of
one.  A private temporary name beside the target, then a rename, which
replaces the target atomically (last writer wins; both wrote valid
bytes)."""

from __future__ import annotations

import os
from pathlib import Path


def write_atomic(path: Path, data: bytes, mode: int | None = None) -> None:
    """*data* into *path*, which readers see either as before or whole
    (with permission bits *mode* if given)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_bytes(data)
        if mode is not None:
            tmp.chmod(mode)
        tmp.rename(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
