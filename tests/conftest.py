"""Shared fixtures.

The suite runs against what ``pyqemu build`` produced in the cache; a
missing build is a test *failure* with the command to run, never a skip,
so a broken build can never pass CI quietly.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pyqemu import ffi  # noqa: E402
from pyqemu.hbitmap import HBitmap  # noqa: E402


@pytest.fixture(params=["stock", "patched"])
def flavour(request: pytest.FixtureRequest) -> str:
    """Behaviour both builds must share: the series must not change it."""
    lib = ffi.library(request.param)
    lib.has("hbitmap_alloc")    # raises LibraryError with the fix if unbuilt
    return request.param


@pytest.fixture
def make_bitmap(flavour: str):
    """Allocate HBitmaps of the current flavour; all freed after the test."""
    made: list[HBitmap] = []

    def make(size: int, granularity: int = 0) -> HBitmap:
        hb = HBitmap(size, granularity, flavour=flavour)
        made.append(hb)
        return hb

    yield make
    for hb in made:
        hb.close()
