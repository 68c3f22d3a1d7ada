"""Shared fixtures.

The suite runs against what ``pyqemu build`` produced in the cache; a
missing build is a test *failure* with the command to run, never a skip,
so a broken build can never pass CI quietly.  Which trees: the pinned
Debian source, or ``--qemu-src DIR`` (``./run test --qemu-src DIR``
passes it on), as one :class:`~pyqemu.paths.Layout` for the session.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from typing import Callable, Iterator

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pyqemu.checks import suite  # noqa: E402
from pyqemu.errors import PyqemuError  # noqa: E402
from pyqemu.paths import SANITIZED, Layout, layout_for  # noqa: E402
from pyqemu.shim import ffi  # noqa: E402
from pyqemu.shim.hbitmap import HBitmap  # noqa: E402
from pyqemu.tree.libvirt import LibvirtTree  # noqa: E402


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--qemu-src", type=Path, default=None, metavar="DIR",
                     help="test the builds of this QEMU checkout instead of "
                          "the pinned Debian source")
    parser.addoption("--sanitized-status", type=Path, default=None,
                     metavar="FILE",
                     help="the sanitized tree is being built in the "
                          "background and writes its exit status to FILE: "
                          "the tests that need it wait for that (./run test "
                          "passes it; without it the tree must be built)")
    parser.addoption("--libvirt-status", type=Path, default=None,
                     metavar="FILE",
                     help="the patched libvirt is being built in the "
                          "background, as --sanitized-status")


#: Run first: the two longest modules (82 and 100 s of a warm run of
#: README's timings), and test_backup, the third when this order was
#: chosen (32 s now that its Linux guests boot faster; README's runs had
#: this order, and their workers ended within 9 s of each other)
LONGEST_FIRST = ("test_libvirt", "test_upstream", "test_backup")
#: seconds a test waits for the background build of the sanitized tree:
#: about 5 minutes from a cold ccache, longer while the tests run
SANITIZED_BUILD_TIMEOUT = 1800
#: The modules that need the sanitized tree, which ``./run test`` builds in
#: the background meanwhile (see the ``sanitized`` fixture)
SANITIZED_LAST = ("test_quit_live", "test_fuzz")


def pytest_collection_modifyitems(config: pytest.Config,
                                   items: list[pytest.Item]) -> None:
    """The longest modules first, the ones that need the sanitized tree
    last.  This is the order of a serial run (``-n 0``).  ``./run test``
    runs three pytest-xdist workers with ``--dist loadfile``: a module
    stays on one worker, since its tests may share a fixture that does a
    whole module's work once (all iotests in one ``check``).  xdist 3
    hands the modules out by their number of tests, most first, and this
    order only breaks ties; kept by ``--no-loadscope-reorder`` (with
    test_operator put first), it ran the longest modules side by side,
    which slowed each of them (250 s against 242 s for the suite, three
    workers).  The fuzzer's tests wait for the sanitized tree
    wherever they land (the ``sanitized`` fixture)."""
    def rank(item: pytest.Item) -> int:
        stem = item.path.stem
        if stem in LONGEST_FIRST:
            return LONGEST_FIRST.index(stem)
        if stem in SANITIZED_LAST:
            return len(LONGEST_FIRST) + 1 + SANITIZED_LAST.index(stem)
        return len(LONGEST_FIRST)
    items.sort(key=rank)


@pytest.fixture(scope="session")
def layout(request: pytest.FixtureRequest) -> Layout:
    """The trees under test, chosen once for the session."""
    return layout_for(request.config.getoption("qemu_src"))


@pytest.fixture(scope="session")
def sanitized(request: pytest.FixtureRequest, layout: Layout) -> Path:
    """The sanitized binary, which ``./run test`` builds in the background
    while the other modules run: wait for that build to end.  A failed
    build fails the test; run directly, pytest expects the tree built.
    A binary without its sanitizers fails too: the tests that use it
    would find nothing and pass."""
    try:
        suite.wait_sanitized(request.config.getoption("sanitized_status"),
                             SANITIZED_BUILD_TIMEOUT)
        binary = layout.binary("qemu-system-x86_64", SANITIZED)
    except PyqemuError as e:
        pytest.fail(str(e))
    found = suite.sanitizers(binary)
    assert found == list(suite.SANITIZERS), \
        f"{binary} runs with {found or 'no sanitizer'}, not with " \
        f"{', '.join(suite.SANITIZERS)}: rebuild with " \
        f"'{layout.build_command(SANITIZED)}'"
    return binary


@pytest.fixture(scope="session")
def libvirtd(request: pytest.FixtureRequest, layout: Layout) -> Path:
    """The patched libvirt's daemon, which ``./run test`` builds in the
    background first (about 80 s cold): wait for that build."""
    try:
        suite.wait_built(request.config.getoption("libvirt_status"),
                         "patched libvirt", SANITIZED_BUILD_TIMEOUT)
    except PyqemuError as e:
        pytest.fail(str(e))
    binary = LibvirtTree.of(layout).libvirtd
    assert binary.exists(), \
        f"{binary} is missing: run './run build --libvirt'"
    return binary


@pytest.fixture
def workdir() -> Iterator[Path]:
    """A short private directory: unix socket paths must stay < 108 bytes."""
    with tempfile.TemporaryDirectory(prefix="pq-", dir="/tmp") as d:
        yield Path(d)


@pytest.fixture(params=["stock", "patched"])
def flavour(request: pytest.FixtureRequest) -> str:
    """Behaviour both builds must share: the series must not change it."""
    return str(request.param)


@pytest.fixture
def lib(layout: Layout, flavour: str) -> ffi.Library:
    """The shim library of the flavour under test."""
    library = ffi.library(layout, flavour)
    library.has("hbitmap_alloc")  # raises LibraryError with the fix if unbuilt
    return library


@pytest.fixture
def patched_lib(layout: Layout) -> ffi.Library:
    """The patched shim (meta bitmaps exist only there)."""
    return ffi.library(layout, "patched")


@pytest.fixture
def make_bitmap(lib: ffi.Library) -> Iterator[Callable[..., HBitmap]]:
    """Allocate HBitmaps of the current flavour; all freed after the test."""
    made: list[HBitmap] = []

    def make(size: int, granularity: int = 0) -> HBitmap:
        hb = HBitmap(size, granularity, lib)
        made.append(hb)
        return hb

    yield make
    for hb in made:
        hb.close()
