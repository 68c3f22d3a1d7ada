"""Drive the project's meson build for each flavour.

``pyqemu build`` sets up the top-level meson project once per flavour in
the cache and runs ninja there; the chain of steps is in meson.build and
:mod:`pyqemu.buildsteps`.  Flavours are built one after another, never at
once: QEMU builds are CPU-bound and this machine has two cores.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from . import deps
from .log import info
from .paths import FLAVOURS, REPO, SANITIZED, Layout


class BuildError(RuntimeError):
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


def layout_for(qemu_src: Path | None) -> Layout:
    """Debian-tarball builds live under 'debian'; a checkout gets its own tag."""
    if qemu_src is None:
        return Layout.default("debian")
    digest = hashlib.sha256(str(qemu_src.resolve()).encode()).hexdigest()[:10]
    return Layout.default(f"src-{qemu_src.resolve().name}-{digest}")


@dataclass(frozen=True)
class BuildResult:
    flavour: str
    seconds: float


def _meson_options(layout: Layout, flavour: str, qemu_src: Path | None) -> dict:
    return {"flavour": flavour, "cache_dir": str(layout.root), "tag": layout.tag,
            "qemu_src": str(qemu_src.resolve()) if qemu_src else "",
            "qemu_tree": str(layout.source(flavour)),
            "qemu_build": str(layout.qemu_build(flavour))}


def _setup(layout: Layout, flavour: str, qemu_src: Path | None) -> Path:
    """``meson setup`` the project for one flavour, unless already done."""
    builddir = layout.project_build(flavour)
    opts = _meson_options(layout, flavour, qemu_src)
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
    res = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if res.returncode != 0:
        raise BuildError(f"meson setup for {flavour} failed:\n{res.stdout[-3000:]}"
                         f"{res.stderr[-3000:]}")
    record.write_text(json.dumps(want))
    return builddir


def build(flavours: tuple[str, ...] = FLAVOURS,
          qemu_src: Path | None = None) -> list[BuildResult]:
    """Build the given flavours (stock before patched) and the shim."""
    deps.ensure(deps.BUILD + deps.FIRMWARE)
    layout = layout_for(qemu_src)
    results = []
    for flavour in [f for f in FLAVOURS + (SANITIZED,) if f in flavours]:
        start = time.monotonic()
        builddir = _setup(layout, flavour, qemu_src)
        info(f"building {flavour} QEMU and shim ({builddir})")
        env = dict(os.environ, PYTHONPATH=str(REPO))
        res = subprocess.run(["ninja", "-C", str(builddir)], env=env,
                             check=False)
        if res.returncode != 0:
            raise BuildError(f"building the {flavour} flavour failed "
                             "(the first error is printed above)")
        results.append(BuildResult(flavour, time.monotonic() - start))
        info(f"{flavour}: up to date after {results[-1].seconds:.1f}s")
    return results


def binary(name: str, flavour: str = "patched",
           layout: Layout | None = None) -> Path:
    """Absolute path of a built binary; BuildError if it is not built."""
    layout = layout or Layout.default()
    if name not in BINARIES:
        raise BuildError(f"unknown binary {name!r}; known: "
                         + ", ".join(sorted(BINARIES)))
    path = layout.qemu_build(flavour) / BINARIES[name]
    if not path.exists():
        raise BuildError(f"{name} ({flavour}) is not built yet: run "
                         f"'./run build --{flavour}'")
    return path
