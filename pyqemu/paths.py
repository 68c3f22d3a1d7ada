"""Where things live on disk.

Everything expensive (downloads, unpacked trees, build directories, the
ccache) lives in one cache directory *outside* the checkout, so that a fresh
clone of the repository -- which is what CI runs -- reuses the previous
build instead of starting from nothing.  The location is
``$PYQEMU_CACHE``, else ``$XDG_CACHE_HOME/pyqemu``, else ``~/.cache/pyqemu``.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from .errors import PyqemuError

#: The build flavours, in build order.  They share every configure flag;
#: only the source differs: stock is the pristine tree, fixes the tree
#: with the series' fixes only (pyqemu.tree.series.FIXES: what a
#: distribution could carry without live bitmap migration, the fair
#: baseline for the feature), patched the tree with all of patches/qemu/.
#: fixes differs from stock in a few files, so ccache makes it cheap
#: after stock.
FLAVOURS = ("stock", "fixes", "patched")

#: Built on demand: the patched source with AddressSanitizer and
#: UndefinedBehaviorSanitizer, for the migration stream fuzzer.
SANITIZED = "asan"

PACKAGE = Path(__file__).resolve().parent
REPO = PACKAGE.parent
#: Known-good QEMU versions and their sha256 (read by pyqemu.tree).
VERSIONS_FILE = PACKAGE / "build" / "qemu-versions.toml"
#: The device list QEMU is configured with (put into the tree by
#: pyqemu.tree.stock, read by configure's --with-devices-x86_64).
DEVICES_FILE = PACKAGE / "build" / "qemu-devices.mak"
#: The tag of the pinned Debian source's trees.
PINNED = "debian"

#: Binaries `pyqemu which` knows, relative to QEMU's build directory.
BINARIES = {
    "qemu-system-x86_64": "qemu-system-x86_64",
    "qemu-img": "qemu-img",
    "qemu-io": "qemu-io",
    "qemu-nbd": "qemu-nbd",
    "qemu-storage-daemon": "storage-daemon/qemu-storage-daemon",
    "test-hbitmap": "tests/unit/test-hbitmap",
}


class NotBuiltError(PyqemuError):
    """A file the build makes is not there; the message names the
    command that makes it."""


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
    """Paths of one source configuration: the pinned Debian tarball, or a
    developer's checkout (``--qemu-src``).

    Chosen once by the CLI (or the test session) and passed down, so every
    step -- build, shim, VMs, fuzzer -- uses the same trees.  ``tag``
    names the configuration so that a developer's own QEMU tree gets build
    directories of its own and never clobbers the pinned ones.
    """

    root: Path
    tag: str = PINNED
    qemu_src: Path | None = None

    @classmethod
    def pinned(cls) -> "Layout":
        """The trees of the pinned Debian source."""
        return cls(cache_root(), PINNED)


    @property
    def downloads(self) -> Path:
        return self.root / "downloads"

    @property
    def apt(self) -> Path:
        return self.root / "apt"

    @property
    def ccache(self) -> Path:
        return self.root / "ccache"

    @property
    def trees(self) -> Path:
        """Every flavour of this configuration, plus its origin.json."""
        return self.root / "tree" / self.tag

    def flavour_root(self, flavour: str) -> Path:
        """Everything of one flavour: ``src/``, ``qemu/`` and ``meson/``.

        Source and build directories sit side by side in the same shape
        for every flavour, so the relative paths in compile commands are
        identical and ccache (with CCACHE_BASEDIR) shares objects between
        stock and patched: the second tree costs only what the series
        changes.
        """
        return self.trees / flavour

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

    def build_command(self, flavour: str) -> str:
        """The command that builds *flavour* of this configuration: what an
        error about a missing build tells the user to run."""
        src = f" --qemu-src {self.qemu_src}" if self.qemu_src else ""
        return f"./run build --{flavour}{src}"

    def binary(self, name: str, flavour: str = "patched") -> Path:
        """Absolute path of a built binary (:data:`BINARIES`);
        NotBuiltError naming the build command if it is not there."""
        if name not in BINARIES:
            raise ValueError(f"unknown binary {name!r}; known: "
                             + ", ".join(sorted(BINARIES)))
        path = self.qemu_build(flavour) / BINARIES[name]
        if not path.exists():
            raise NotBuiltError(f"{name} ({flavour}) is not built yet: run "
                                f"'{self.build_command(flavour)}'")
        return path

    def qemu_python(self) -> Path:
        """QEMU's own Python packages (``qemu.machine``) in the stock
        tree: the launcher the VMs use."""
        path = self.source("stock") / "python"
        if not (path / "qemu" / "machine").is_dir():
            raise NotBuiltError(f"{path} has no qemu.machine: run "
                                f"'{self.build_command('stock')}' first")
        return path

    def firmware(self) -> Path:
        """Directory of BIOS/option ROM links for ``-machine pc``."""
        return self.root / "firmware"

    def results(self, name: str) -> Path:
        """Where a benchmark or check writes its results (markdown, JSON,
        plots): ``<cache>/bench/<name>``, shared by every source choice
        (a result names what it measured)."""
        return self.root / "bench" / name

    def work(self) -> Path:
        """Scratch space for tests and benchmarks (images, sockets, logs)."""
        return self.root / "work"


def layout_for(qemu_src: Path | None) -> Layout:
    """The layout of a source choice: the pinned Debian tarball for None,
    else trees of the checkout's own, tagged by its resolved path."""
    if qemu_src is None:
        return Layout.pinned()
    src = qemu_src.expanduser().resolve()
    digest = hashlib.sha256(str(src).encode()).hexdigest()[:10]
    return Layout(cache_root(), f"src-{src.name}-{digest}", src)
