"""Who owns the C memory behind an HBitmap, and what happens when the
rules are broken: closed bitmaps, suspended iterators, NULL from C,
collected owners.  The shim must raise, never touch freed memory."""

from __future__ import annotations

import gc
import subprocess

import pytest

from pyqemu.shim import ffi
from pyqemu.shim import hbitmap as hbitmap_mod
from pyqemu.shim.errors import (
    AllocationError,
    ClosedError,
    HashError,
    OutOfRangeError,
    PreconditionError,
    ShimError,
)
from pyqemu.shim.hbitmap import HBitmap


class FakeLib:
    """A Library stand-in whose allocators return NULL, for the failure
    paths no real allocation reaches."""

    def __init__(self, alloc_null: bool, meta_null: bool) -> None:
        self.alloc_null, self.meta_null = alloc_null, meta_null
        self.freed: list[object] = []
        self._bitmap = ffi.HBitmapStruct()

    def hbitmap_alloc(self, size: int, granularity: int) -> object:
        return ffi.HBitmapPtr() if self.alloc_null else \
            ffi.HBitmapPtr(self._bitmap)

    def hbitmap_create_meta(self, hb: object, chunk: int) -> object:
        return ffi.HBitmapPtr() if self.meta_null else ffi.HBitmapPtr(
            ffi.HBitmapStruct())

    def hbitmap_granularity(self, hb: object) -> int:
        return 0

    def hbitmap_free(self, hb: object) -> None:
        self.freed.append(hb)


def test_null_from_hbitmap_alloc_is_a_memory_error():
    with pytest.raises(MemoryError, match="hbitmap_alloc"):
        HBitmap(100, 0, FakeLib(alloc_null=True, meta_null=False))


def test_null_from_create_meta_is_a_memory_error():
    lib = FakeLib(alloc_null=False, meta_null=True)
    hb = HBitmap(100, 0, lib)
    with pytest.raises(MemoryError, match="hbitmap_create_meta"):
        hb.create_meta(64)
    hb.close()
    assert len(lib.freed) == 1


def test_suspended_iterator_over_a_closed_bitmap_raises(lib):
    hb = HBitmap(1000, 0, lib)
    hb.set(10, 1)
    hb.set(500, 1)
    it = iter(hb)
    assert next(it) == 10
    hb.close()                          # frees the C iterator too
    with pytest.raises(ValueError, match="closed"):
        next(it)


def test_iterator_finished_or_dropped_frees_its_c_iterator(lib):
    with HBitmap(1000, 0, lib) as hb:
        hb.set(1, 1)
        assert list(hb.iter_dirty()) == [1]
        it = hb.iter_dirty()
        next(it)
        assert len(hb._iters) == 1
        del it
        gc.collect()
        assert hb._iters == {}


def test_closed_meta_iterator_raises(patched_lib):
    hb = HBitmap(1 << 20, 4, patched_lib)
    meta = hb.create_meta(1 << 16)
    hb.set(0, 1)
    hb.set(5 << 16, 1)
    it = iter(meta)
    next(it)
    hb.close()                          # closes the meta bitmap first
    with pytest.raises(ValueError, match="closed"):
        next(it)


def test_meta_bitmap_does_not_keep_its_owner_alive(patched_lib):
    hb = HBitmap(1 << 20, 4, patched_lib)
    meta = hb.create_meta(1 << 16)
    del hb
    gc.collect()
    assert meta._owner is None or meta._owner() is None
    with pytest.raises(ValueError, match="closed"):
        meta.count()
    meta.close()                        # nothing left to free: no crash


def test_every_prototype_is_bound_at_load(lib):
    lib.has("hbitmap_alloc")
    # bound as instance attributes: none may shadow the Library's own
    own = set(vars(ffi.Library)) | {"path", "flavour"}
    assert not set(ffi.PROTOTYPES) & own
    for name, (restype, argtypes) in ffi.PROTOTYPES.items():
        if name in ffi.OPTIONAL and not lib.has(name):
            continue
        fn = getattr(lib, name)
        assert fn.argtypes == argtypes, name
        assert fn.restype == restype, name


def test_errors_are_typed(lib):
    """A caller can catch the shim's errors as a family or by kind, or as
    the built-in error a Python caller expects."""
    hb = HBitmap(1000, 0, lib)
    with pytest.raises(PreconditionError):
        hb.set(999, 2)
    with pytest.raises(OutOfRangeError):
        hb.get(1000)
    hb.close()
    with pytest.raises(ClosedError):
        hb.count()
    for kind in (PreconditionError, OutOfRangeError, ClosedError,
                 AllocationError, HashError, ffi.LibraryError,
                 ffi.MissingSymbolError):
        assert issubclass(kind, ShimError), kind
    assert issubclass(OutOfRangeError, IndexError)
    assert issubclass(AllocationError, MemoryError)


def test_del_after_interpreter_shutdown_began_does_not_call_c(monkeypatch):
    lib = FakeLib(alloc_null=False, meta_null=False)
    hb = HBitmap(100, 0, lib)
    monkeypatch.setattr(hbitmap_mod, "_shutting_down", True)
    hb.__del__()
    assert lib.freed == []
    monkeypatch.setattr(hbitmap_mod, "_shutting_down", False)
    hb.close()


def test_library_exports_only_the_hbitmap_api(lib):
    """The version script keeps qom, crypto, io... local to the library."""
    out = subprocess.run(["nm", "-D", "--defined-only", str(lib.path)],
                         capture_output=True, text=True, check=True).stdout
    names = [ln.split()[-1] for ln in out.splitlines()
             if len(ln.split()) == 3 and ln.split()[1] in "TtDdBbRrVvWw"]
    foreign = [n for n in names if not n.startswith(("hbitmap_", "pyqemu_"))]
    assert not foreign, foreign[:20]
