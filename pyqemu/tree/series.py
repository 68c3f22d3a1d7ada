"""Apply the patch series in ``patches/qemu/`` to a QEMU tree with ``git am``.

The patched tree is a shared clone of the stock tree, so both start from
the same base commit.  When the series changes, the tree is reset to the
base and the series is applied again; ``git reset --hard`` rewrites only
the files that differ, so ninja rebuilds only what the series touches.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import PyqemuError
from ..log import info
from ..paths import REPO, Layout
from .git import clear_stamp, git, read_stamp, sync_clone, write_stamp
from .stock import BASE_TAG

PATCH_DIR = REPO / "patches" / "qemu"
#: The libvirt series, beside it (pyqemu.tree.libvirt applies it)
LIBVIRT_PATCH_DIR = REPO / "patches" / "libvirt"

#: The series starts with its fixes: patches 1 to FIXES, each usable on
#: its own, are what a distribution could carry without the live mode
#: (the "fixes" flavour builds them alone).  tests/test_series.py holds
#: the number to the patches: every patch that asks for qemu-stable is
#: among them, and the next one is the first of the feature.
FIXES = 11


class SeriesError(PyqemuError):
    """A patch of the series does not apply; the message names it."""


@dataclass(frozen=True)
class Patch:
    path: Path
    subject: str


def patches(directory: Path = PATCH_DIR) -> list[Patch]:
    """The series in order, without the cover letter."""
    return [Patch(p, subject_line(p) or p.name)
            for p in sorted(directory.glob("*.patch"))
            if not p.name.startswith("0000-")]


def fixes(series: list[Patch]) -> list[Patch]:
    """The patches that fix defects of stock QEMU: the series' prefix."""
    return series[:FIXES]


def subject_line(patch: Path) -> str:
    """The patch's Subject: header, unfolded ("" if it has none)."""
    m = re.search(r"^Subject: (.*(?:\n .*)*)",
                  patch.read_text(errors="replace"), re.M)
    return re.sub(r"\s*\n\s*", " ", m.group(1)) if m else ""


def series_hash(series: list[Patch]) -> str:
    h = hashlib.sha256()
    for p in series:
        h.update(p.path.name.encode() + b"\0" + p.path.read_bytes() + b"\0")
    return h.hexdigest()


def _failure_reason(output: str) -> str:
    """The lines of git-am output that say why a patch did not apply."""
    keep = [ln for ln in output.splitlines()
            if ln.startswith(("error:", "fatal:")) or "does not apply" in ln
            or "patch failed" in ln]
    return "; ".join(keep) or output.strip().splitlines()[-1]


def apply_series(tree: Path, series: list[Patch]) -> list[str]:
    """``git am`` each patch in turn; raise SeriesError naming failures.

    Patches are applied one at a time so that the error names the file and
    subject of every patch that fails, with git's reason.  After a failure
    the next patches are still tried (a rebase aid: against a newer QEMU,
    this lists everything that needs work, not just the first patch),
    though a patch that depends on a failed one will fail as well.
    """
    applied, failures = [], []
    for i, patch in enumerate(series, 1):
        res = git(tree, "am", "-q", "--keep-cr", str(patch.path), check=False)
        if res.returncode != 0:
            reason = _failure_reason(res.stdout + res.stderr)
            git(tree, "am", "--abort", check=False)
            failures.append(f"patch {i}/{len(series)} {patch.path.name} "
                            f"(\"{patch.subject}\") does not apply: {reason}")
            continue
        applied.append(patch.path.name)
    if failures:
        raise SeriesError("\n".join(failures))
    return applied


def prepare_patched(layout: Layout, stock: Path,
                    series: list[Patch] | None = None,
                    flavour: str = "patched") -> Path:
    """Make (or reuse) *flavour*'s tree: stock base + *series* (by
    default all of it)."""
    series = patches() if series is None else series
    tree = layout.source(flavour)
    base = git(stock, "rev-parse", BASE_TAG).stdout.strip()
    want = {"base": base, "series": series_hash(series)}
    if read_stamp(tree) == want:
        return tree
    clear_stamp(tree)
    sync_clone(stock, tree, BASE_TAG, "pyqemu-series")
    info(f"applying {len(series)} patches to {tree}")
    apply_series(tree, series)
    write_stamp(tree, want)
    return tree
