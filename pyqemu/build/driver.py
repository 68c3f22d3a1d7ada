"""Drive the project's meson build for each flavour.

``pyqemu build`` sets up the top-level meson project once per flavour in
the cache and runs ninja there; the chain of steps is in meson.build and
:mod:`pyqemu.build.steps`.  Flavours are compiled one after another, never
at once: QEMU builds are CPU-bound and this machine has two cores.  Only
the next flavour's source and configure steps, which are mostly serial,
run beside the current compile (:class:`Ahead`).

Two commands may share the cache: a build holds its flavours' locks
(:func:`lock_file`), so a second command waits, saying so in one line.
The build's own output goes to a log in each build directory and reaches
the terminal only when the build fails.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from ..errors import CommandError, PyqemuError
from ..log import info
from ..paths import FLAVOURS, REPO, SANITIZED, Layout
from ..util.lock import exclusive
from ..util.proc import Background, die_with_parent, run
from . import deps


class BuildError(PyqemuError):
    """The build failed; the message says which step and where to look."""


@dataclass(frozen=True)
class BuildResult:
    flavour: str
    seconds: float


def _meson_options(layout: Layout, flavour: str) -> dict:
    return {"flavour": flavour, "cache_dir": str(layout.root), "tag": layout.tag,
            "qemu_src": str(layout.qemu_src or ""),
            "qemu_tree": str(layout.source(flavour)),
            "qemu_build": str(layout.qemu_build(flavour))}


def _setup(layout: Layout, flavour: str) -> Path:
    """``meson setup`` the project for one flavour, unless already done."""
    builddir = layout.project_build(flavour)
    opts = _meson_options(layout, flavour)
    record = builddir / "pyqemu-setup.json"
    want = {"repo": str(REPO), "options": opts}
    try:
        if json.loads(record.read_text()) == want and \
                (builddir / "build.ninja").exists():
            return builddir
    except (OSError, ValueError):
        pass
    # A changed checkout path or option means a fresh setup; only this
    # small directory goes, QEMU's own build directory is kept.
    shutil.rmtree(builddir, ignore_errors=True)
    builddir.mkdir(parents=True)
    cmd = [sys.executable, "-m", "mesonbuild.mesonmain", "setup",
           str(builddir), str(REPO)] + [f"-D{k}={v}" for k, v in opts.items()]
    try:
        run(cmd, what=f"meson setup for {flavour}", merge=True)
    except CommandError as e:
        log = build_log(builddir)
        log.write_text(e.output)
        show_failure(log, e.output)
        raise BuildError(f"meson setup for {flavour} failed (exit "
                         f"{e.returncode}; the end of its log is above, all "
                         f"of it in {log})") from None
    record.write_text(json.dumps(want))
    return builddir


#: The top-level meson targets of a flavour's source and configure steps
#: (see meson.build).
SOURCE_TARGET = "qemu-source.h"
CONFIGURE_TARGET = "qemu-configure.stamp"


#: Lines of a failed build's log shown on stderr (all of it is in the log).
FAILED_TAIL = 60


def build_log(builddir: Path) -> Path:
    """Where a flavour's build output goes: ninja, configure and the
    steps print hundreds of lines, and on a warm cache only no-op lines,
    which belong neither in a command's results nor on its terminal."""
    return builddir / "pyqemu-build.log"


def show_failure(log: Path, text: str | None = None) -> None:
    """The end of a failed build's output, on stderr."""
    text = log.read_text(errors="replace") if text is None else text
    tail = text.splitlines()[-FAILED_TAIL:]
    sys.stderr.write("".join(f"{ln}\n" for ln in tail))
    sys.stderr.flush()


def _ninja(builddir: Path, *targets: str) -> None:
    """ninja in *builddir*, its output appended to the build log."""
    log = build_log(builddir)
    with log.open("a") as out:
        res = subprocess.run(["ninja", "-C", str(builddir), *targets],
                             env=dict(os.environ, PYTHONPATH=str(REPO)),
                             stdin=subprocess.DEVNULL, stdout=out,
                             stderr=subprocess.STDOUT, check=False,
                             preexec_fn=die_with_parent())
    if res.returncode != 0:
        show_failure(log)
        raise BuildError(f"building {' '.join(targets) or 'everything'} in "
                         f"{builddir} failed (the end of its log is above; "
                         f"all of it in {log})")


class Ahead:
    """The next flavour's source and configure steps, run in the
    background at nice 10 while this flavour compiles.

    Both steps are mostly one process on one core (git am, meson), and
    the first of them overlaps this flavour's own configure, which leaves
    the second core idle: on a cold cache, the patched tree is ready to
    compile when stock is done, instead of half a minute later.  Only the
    compile itself stays one flavour at a time."""

    def __init__(self, flavour: str, builddir: Path) -> None:
        self.flavour = flavour
        self.job = Background(["ninja", "-C", builddir, CONFIGURE_TARGET],
                              builddir / "pyqemu-ahead.log", nice=10,
                              env=dict(os.environ, PYTHONPATH=str(REPO)))

    def finish(self) -> None:
        """Wait for the steps; raise, with their output, if they failed."""
        code = self.job.wait()
        log = self.job.log
        if code != 0:
            show_failure(log)
            raise BuildError(f"preparing the {self.flavour} flavour failed "
                             f"(exit {code}; the end of its log is above, "
                             f"all of it in {log})")

    def stop(self) -> None:
        self.job.stop()


def lock_file(layout: Layout, flavour: str) -> Path:
    """The lock a build of *flavour* holds (see :mod:`pyqemu.util.lock`)."""
    return layout.flavour_root(flavour) / "build.lock"


def build(layout: Layout,
          flavours: tuple[str, ...] = FLAVOURS) -> list[BuildResult]:
    """Build the given flavours of *layout* (stock before patched) and the
    shim.

    Another command building one of them at the same time is waited for:
    each flavour's tree has a lock, and all of this build's locks are
    taken before anything runs, always in the same order, so two builds
    never wait for each other."""
    deps.require(deps.BUILD + deps.FIRMWARE)
    order = [f for f in FLAVOURS + (SANITIZED,) if f in flavours]
    with contextlib.ExitStack() as locks:
        for flavour in order:
            locks.enter_context(exclusive(lock_file(layout, flavour),
                                          f"building {flavour} QEMU"))
        return _build(layout, order)


def _build(layout: Layout, order: list[str]) -> list[BuildResult]:
    builddirs = {f: _setup(layout, f) for f in order}
    for builddir in builddirs.values():
        build_log(builddir).write_text("")
    results = []
    ahead: Ahead | None = None
    try:
        for i, flavour in enumerate(order):
            start = time.monotonic()
            builddir = builddirs[flavour]
            info(f"building {flavour} QEMU and shim (output in "
                 f"{build_log(builddir)})")
            if ahead is not None:
                ahead.finish()
                ahead = None
            if i + 1 < len(order):
                # the next tree is made from this one's source: that
                # step first, then the next flavour's steps beside ours
                _ninja(builddir, SOURCE_TARGET)
                ahead = Ahead(order[i + 1], builddirs[order[i + 1]])
            _ninja(builddir)
            results.append(BuildResult(flavour, time.monotonic() - start))
            info(f"{flavour}: up to date after {results[-1].seconds:.1f}s")
    finally:
        if ahead is not None:
            ahead.stop()
    return results

