"""Where things live on disk.

Everything expensive (downloads, unpacked trees, build directories, the
ccache) lives in one cache directory *outside* the checkout, so that a fresh
clone of the repository -- which is what CI runs -- reuses the previous
build instead of starting from nothing.  The location is
``$PYQEMU_CACHE``, else ``$XDG_CACHE_HOME/pyqemu``, else ``~/.cache/pyqemu``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

#: The two build flavours.  They share every configure flag; only the
#: source differs (stock = pristine tree, patched = tree + patches/).
FLAVOURS = ("stock", "patched")

#: Built on demand: the patched source with AddressSanitizer and
#: UndefinedBehaviorSanitizer, for the migration stream fuzzer.
SANITIZED = "asan"

REPO = Path(__file__).resolve().parent.parent


def cache_root() -> Path:
    """Return the cache directory, honouring the environment overrides."""
    env = os.environ.get("PYQEMU_CACHE")
    if env:
        return Path(env).expanduser().resolve()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return (base / "pyqemu").resolve()


@dataclass(frozen=True)
class Layout:
    """Paths of one source configuration (Debian tarball or --qemu-src).

    ``tag`` names the configuration so that a developer's own QEMU tree
    gets build directories of its own and never clobbers the pinned ones.
    """

    root: Path
    tag: str = "debian"

    @classmethod
    def default(cls, tag: str | None = None) -> "Layout":
        """The layout in use: ``$PYQEMU_TAG`` (set by ``--qemu-src``) selects
        a developer's tree for everything run from this process down."""
        return cls(cache_root(), tag or os.environ.get("PYQEMU_TAG") or "debian")

    @property
    def downloads(self) -> Path:
        return self.root / "downloads"

    @property
    def apt(self) -> Path:
        return self.root / "apt"

    @property
    def ccache(self) -> Path:
        return self.root / "ccache"

    def flavour_root(self, flavour: str) -> Path:
        """Everything of one flavour: ``src/``, ``qemu/`` and ``meson/``.

        Source and build directories sit side by side in the same shape
        for every flavour, so the relative paths in compile commands are
        identical and ccache (with CCACHE_BASEDIR) shares objects between
        stock and patched: the second tree costs only what the series
        changes.
        """
        return self.root / "tree" / self.tag / flavour

    def source(self, flavour: str) -> Path:
        """Git work tree holding the QEMU source of one flavour."""
        if flavour == SANITIZED:
            return self.flavour_root("patched") / "src"
        return self.flavour_root(flavour) / "src"

    def qemu_build(self, flavour: str) -> Path:
        """QEMU's own build directory (configure + ninja) of one flavour."""
        return self.flavour_root(flavour) / "qemu"

    def project_build(self, flavour: str) -> Path:
        """Build directory of this project's top-level meson.build."""
        return self.flavour_root(flavour) / "meson"

    def shim_library(self, flavour: str) -> Path:
        """The shared library the ctypes hbitmap shim loads."""
        return self.project_build(flavour) / "plugin" / "libpyqemu-hbitmap.so"

    def firmware(self) -> Path:
        """Directory of BIOS/option ROM links for ``-machine pc``."""
        return self.root / "firmware"

    def work(self) -> Path:
        """Scratch space for tests and benchmarks (images, sockets, logs)."""
        return self.root / "work"
