"""The git operations the trees are made of, and the stamps that let an
unchanged input leave a tree (and its mtimes) alone."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

from ..util.proc import run

#: Commits made by pyqemu never depend on the user's git configuration.
GIT_ID = ("-c", "user.name=pyqemu", "-c", "user.email=pyqemu@localhost",
          "-c", "commit.gpgsign=false", "-c", "core.autocrlf=false")
STAMP = "pyqemu-stamp.json"


def git(tree: Path, *args: str,
        check: bool = True) -> subprocess.CompletedProcess[str]:
    """``git -C tree ARGS``; CommandError with git's message on failure."""
    return run(["git", *GIT_ID, "-C", str(tree), *args], check=check,
               what=f"git {args[0] if args else ''} in {tree}")


def head(tree: Path) -> str:
    return git(tree, "rev-parse", "HEAD").stdout.strip()


def read_stamp(tree: Path) -> dict | None:
    """What the tree was made from, or None if unknown or half-made."""
    try:
        return json.loads((tree / ".git" / STAMP).read_text())
    except (OSError, ValueError):
        return None


def clear_stamp(tree: Path) -> None:
    """Forget what a tree was made from, before changing it."""
    (tree / ".git" / STAMP).unlink(missing_ok=True)


def write_stamp(tree: Path, stamp: dict) -> None:
    (tree / ".git" / STAMP).write_text(json.dumps(stamp, indent=1))


def sync_clone(origin: Path, tree: Path, ref: str, branch: str) -> None:
    """Make *tree* a shared clone of *origin*, checked out on *branch* at
    *ref* of *origin*: created if missing, else updated in place (so that
    unchanged files keep their mtimes), with no am session or untracked
    file left over.  *origin* itself is only read."""
    if not (tree / ".git").is_dir():
        shutil.rmtree(tree, ignore_errors=True)
        tree.parent.mkdir(parents=True, exist_ok=True)
        run(["git", "clone", "-q", "--shared", "--no-checkout", str(origin),
             str(tree)], what=f"git clone of {origin}")
    else:
        git(tree, "am", "--abort", check=False)
    git(tree, "fetch", "-q", str(origin), ref)
    git(tree, "checkout", "-q", "-f", "-B", branch, "FETCH_HEAD")
    git(tree, "clean", "-q", "-f", "-d")
