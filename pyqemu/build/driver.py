"""Drive the project's meson build for each flavour.

``pyqemu build`` sets up the top-level meson project once per flavour in
the cache and runs ninja there; the chain of steps is in meson.build and
:mod:`pyqemu.build.steps`.  Flavours are compiled one after another, never
at once: QEMU builds are CPU-bound and this machine has two cores.  Only
the next flavour's source and configure steps, which are mostly serial,
run beside the current compile (:class:`Ahead`).
"""

from __future__ import annotations

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
        run(cmd, what=f"meson setup for {flavour}")
    except CommandError as e:
        raise BuildError(f"{e}\n{e.output[-3000:]}") from None
    record.write_text(json.dumps(want))
    return builddir


#: The top-level meson targets of a flavour's source and configure steps
#: (see meson.build).
SOURCE_TARGET = "qemu-source.h"
CONFIGURE_TARGET = "qemu-configure.stamp"


def _ninja(builddir: Path, *targets: str) -> None:
    # ninja's output goes to the terminal: it is the progress report
    res = subprocess.run(["ninja", "-C", str(builddir), *targets],
                         env=dict(os.environ, PYTHONPATH=str(REPO)),
                         check=False, preexec_fn=die_with_parent())
    if res.returncode != 0:
        raise BuildError(f"building {' '.join(targets) or 'everything'} in "
                         f"{builddir} failed (the first error is printed "
                         "above)")


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
        """Wait for the steps; replay their output; raise if they failed."""
        code = self.job.wait()
        log = self.job.log
        text = log.read_text(errors="replace")
        info(f"{self.flavour}: source and configure ran ahead, in "
             f"{self.job.seconds:.1f}s (log {log})")
        sys.stdout.write(text[-6000:] if code else text)
        sys.stdout.flush()
        if code != 0:
            raise BuildError(f"preparing the {self.flavour} flavour failed "
                             f"(exit {code}; log above, {log})")

    def stop(self) -> None:
        self.job.stop()


def build(layout: Layout,
          flavours: tuple[str, ...] = FLAVOURS) -> list[BuildResult]:
    """Build the given flavours of *layout* (stock before patched) and the
    shim."""
    deps.require(deps.BUILD + deps.FIRMWARE)
    order = [f for f in FLAVOURS + (SANITIZED,) if f in flavours]
    builddirs = {f: _setup(layout, f) for f in order}
    results = []
    ahead: Ahead | None = None
    try:
        for i, flavour in enumerate(order):
            start = time.monotonic()
            builddir = builddirs[flavour]
            info(f"building {flavour} QEMU and shim ({builddir})")
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

