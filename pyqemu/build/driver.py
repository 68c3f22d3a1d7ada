"""Drive the project's meson build for each flavour.

``pyqemu build`` sets up the top-level meson project once per flavour in
the cache and runs ninja there; the chain of steps is in meson.build and
:mod:`pyqemu.build.steps`.  Flavours are built one after another, never at
once: QEMU builds are CPU-bound and this machine has two cores.
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
from ..util.proc import die_with_parent, run
from . import deps


class BuildError(PyqemuError):
    """The build failed; the message says which step and where to look."""


#: Binaries `pyqemu which` knows, relative to QEMU's build directory.
BINARIES = {
    "qemu-system-x86_64": "qemu-system-x86_64",
    "qemu-img": "qemu-img",
    "qemu-io": "qemu-io",
    "qemu-nbd": "qemu-nbd",
    "qemu-storage-daemon": "storage-daemon/qemu-storage-daemon",
    "test-hbitmap": "tests/unit/test-hbitmap",
}


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


def build(layout: Layout,
          flavours: tuple[str, ...] = FLAVOURS) -> list[BuildResult]:
    """Build the given flavours of *layout* (stock before patched) and the
    shim."""
    deps.ensure(deps.BUILD + deps.FIRMWARE)
    results = []
    for flavour in [f for f in FLAVOURS + (SANITIZED,) if f in flavours]:
        start = time.monotonic()
        builddir = _setup(layout, flavour)
        info(f"building {flavour} QEMU and shim ({builddir})")
        env = dict(os.environ, PYTHONPATH=str(REPO))
        # ninja's output goes to the terminal: it is the progress report
        res = subprocess.run(["ninja", "-C", str(builddir)], env=env,
                             check=False, preexec_fn=die_with_parent())
        if res.returncode != 0:
            raise BuildError(f"building the {flavour} flavour failed "
                             "(the first error is printed above)")
        results.append(BuildResult(flavour, time.monotonic() - start))
        info(f"{flavour}: up to date after {results[-1].seconds:.1f}s")
    return results


def binary(layout: Layout, name: str, flavour: str = "patched") -> Path:
    """Absolute path of a built binary; BuildError if it is not built."""
    if name not in BINARIES:
        raise BuildError(f"unknown binary {name!r}; known: "
                         + ", ".join(sorted(BINARIES)))
    path = layout.qemu_build(flavour) / BINARIES[name]
    if not path.exists():
        raise BuildError(f"{name} ({flavour}) is not built yet: run "
                         f"'./run build --{flavour}"
                         + (f" --qemu-src {layout.qemu_src}'" if layout.qemu_src
                            else "'"))
    return path
