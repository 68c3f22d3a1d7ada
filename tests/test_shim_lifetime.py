"""Who owns the C memory behind an HBitmap, and what happens when the
rules are broken: closed bitmaps, suspended iterators, NULL from C,
owners in reference cycles, a library that is not the one under test.
The shim must raise a typed error, never touch freed memory, and match
the C declarations it binds."""

from __future__ import annotations

import ctypes
import gc
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from pyqemu.paths import REPO
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
    """A Library stand-in: allocators that may return NULL, for the
    failure paths no real allocation reaches, and a record of what was
    freed, held to hbitmap.c's rules (hbitmap_free asserts that no meta
    bitmap is attached; here a broken rule goes on a list)."""

    def __init__(self, alloc_null: bool = False,
                 meta_null: bool = False) -> None:
        self.alloc_null, self.meta_null = alloc_null, meta_null
        self.freed: list[object] = []
        self.metas_freed = 0
        self.broken: list[str] = []
        self._structs: list[ffi.HBitmapStruct] = []
        self._with_meta: set[int] = set()

    def _new(self) -> object:
        self._structs.append(ffi.HBitmapStruct())
        return ffi.HBitmapPtr(self._structs[-1])

    @staticmethod
    def _addr(hb: Any) -> int:
        return ctypes.addressof(hb.contents)

    def hbitmap_alloc(self, size: int, granularity: int) -> object:
        return ffi.HBitmapPtr() if self.alloc_null else self._new()

    def hbitmap_create_meta(self, hb: object, chunk: int) -> object:
        if self.meta_null:
            return ffi.HBitmapPtr()
        self._with_meta.add(self._addr(hb))
        return self._new()

    def hbitmap_free_meta(self, hb: object) -> None:
        if self._addr(hb) not in self._with_meta:
            self.broken.append("hbitmap_free_meta without a meta bitmap")
        self._with_meta.discard(self._addr(hb))
        self.metas_freed += 1

    def hbitmap_granularity(self, hb: object) -> int:
        return 0

    def hbitmap_free(self, hb: object) -> None:
        if self._addr(hb) in self._with_meta:
            self.broken.append("hbitmap_free with a meta bitmap attached")
        self.freed.append(hb)


def fake(lib: FakeLib, size: int = 100) -> HBitmap:
    return HBitmap(size, 0, lib)  # type: ignore[arg-type]


def test_null_from_hbitmap_alloc_is_a_memory_error():
    with pytest.raises(AllocationError, match="hbitmap_alloc"):
        fake(FakeLib(alloc_null=True))


def test_null_from_create_meta_is_a_memory_error():
    lib = FakeLib(meta_null=True)
    hb = fake(lib)
    with pytest.raises(MemoryError, match="hbitmap_create_meta"):
        hb.create_meta(64)
    hb.close()
    assert len(lib.freed) == 1 and lib.metas_freed == 0


def test_suspended_iterator_over_a_closed_bitmap_raises(lib):
    hb = HBitmap(1000, 0, lib)
    hb.set(10, 1)
    hb.set(500, 1)
    it = iter(hb)
    assert next(it) == 10
    hb.close()                          # frees the C iterator too
    with pytest.raises(ClosedError, match="closed"):
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
    with pytest.raises(ClosedError, match="closed"):
        next(it)


def test_an_owner_in_a_reference_cycle_frees_its_meta_bitmap():
    """The collector clears weak references before it finalizes a cycle:
    an owner that had to reach its meta bitmap through one lost it, freed
    itself with the meta bitmap still attached (hbitmap.c's assert aborts
    the process there) and leaked the meta bitmap."""
    lib = FakeLib()
    gc.disable()
    try:
        hb = fake(lib)
        meta = hb.create_meta(64)
        hb.cycle = [hb, meta]           # type: ignore[attr-defined]
        del hb, meta
        gc.collect()
    finally:
        gc.enable()
    assert lib.broken == [], lib.broken
    assert lib.metas_freed == 1 and len(lib.freed) == 1


def test_an_owner_in_a_cycle_does_not_abort_the_real_library(layout):
    """The same cycle on the patched library, in a process of its own:
    there a lost meta bitmap is hbitmap.c's assert, an abort."""
    script = """
import gc, sys
from pathlib import Path
from pyqemu.paths import layout_for
from pyqemu.shim import ffi
from pyqemu.shim.hbitmap import HBitmap
src = Path(sys.argv[1]) if len(sys.argv) > 1 else None
lib = ffi.library(layout_for(src), "patched")
gc.disable()
hb = HBitmap(1 << 20, 4, lib)
meta = hb.create_meta(1 << 16)
hb.set(0, 1)
hb.cycle = [hb, meta]
del hb, meta
gc.collect()
print("collected")
"""
    argv = [sys.executable, "-c", script]
    if layout.qemu_src is not None:
        argv.append(str(layout.qemu_src))
    res = subprocess.run(argv, capture_output=True, text=True, timeout=60,
                         cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)),
                         check=False)
    assert res.returncode == 0 and "collected" in res.stdout, \
        (res.returncode, res.stderr[-2000:])


def test_a_meta_view_keeps_its_owner_and_the_owner_keeps_the_meta_bitmap():
    """Dropping the view frees nothing; the owner frees the meta bitmap
    when it goes, and without waiting for the collector."""
    lib = FakeLib()
    hb = fake(lib)
    meta = hb.create_meta(64)
    del meta
    assert lib.metas_freed == 0
    again = hb.meta
    assert again is not None and again.size == 100
    del hb                      # the view holds the owner
    assert lib.freed == []
    gc.disable()
    try:
        del again               # no cycle: both go at once
        assert lib.metas_freed == 1 and len(lib.freed) == 1
    finally:
        gc.enable()
    assert lib.broken == []


def test_a_closed_owner_closes_its_meta_view(patched_lib):
    hb = HBitmap(1 << 20, 4, patched_lib)
    meta = hb.create_meta(1 << 16)
    hb.close()
    with pytest.raises(ClosedError, match="closed"):
        meta.count()
    meta.close()                        # nothing left to free: no crash


#: C type -> the ctypes type ffi.PROTOTYPES must use for it.  ``char *``
#: results are freed by the caller, so they are void pointers (c_char_p
#: would copy the string and lose the pointer).
C_TYPES: dict[str, Any] = {
    "void": None, "bool": ctypes.c_bool, "int": ctypes.c_int,
    "int64_t": ctypes.c_int64, "uint64_t": ctypes.c_uint64,
    "HBitmap *": ffi.HBitmapPtr, "HBitmapIter *": ffi.HBitmapIterPtr,
    "int64_t *": ffi.c_int64_p, "uint8_t *": ffi.c_uint8_p,
    "char *": ctypes.c_void_p, "char **": ctypes.POINTER(ctypes.c_void_p),
    "void *": ctypes.c_void_p,
}
_DECL = re.compile(r"^((?:const\s+)?\w+[\s*]+?)((?:hbitmap|pyqemu)_\w+)"
                   r"\(([^)]*)\)", re.M)


def _c_type(decl: str) -> Any:
    """The ctypes type of one C type, or of one parameter with its name."""
    decl = re.sub(r"\bconst\s+", "", decl).strip()
    m = re.fullmatch(r"(\w+)\s*(\**)\s*\w*", decl)
    assert m, decl
    return C_TYPES[m.group(1) + (" " + m.group(2) if m.group(2) else "")]


def c_prototypes(names: Any, *sources: Path
                 ) -> dict[str, tuple[Any, list[Any]]]:
    """name -> (restype, argtypes) of the functions *names* that are
    declared or defined in *sources*."""
    out = {}
    for source in sources:
        for m in _DECL.finditer(source.read_text()):
            restype, name, args = m.groups()
            if name not in names:
                continue
            params = " ".join(args.split())
            argv = [] if params in ("", "void") else \
                [_c_type(a) for a in params.split(",")]
            out[name] = (_c_type(restype), argv)
    return out


def test_every_prototype_matches_the_c_declaration(layout, flavour):
    """ffi.PROTOTYPES against QEMU's include/qemu/hbitmap.h (of the
    flavour under test) and the shim's own C file: a wrong integer width
    or a missing argument is silent memory corruption, not an error."""
    header = layout.source(flavour) / "include" / "qemu" / "hbitmap.h"
    declared = c_prototypes(ffi.PROTOTYPES, header,
                            REPO / "plugin" / "hbitmap-shim.c")
    for name, (restype, argtypes) in ffi.PROTOTYPES.items():
        if name in ffi.OPTIONAL and flavour == "stock":
            assert name not in declared, f"{name} is in stock's header"
            continue
        assert name in declared, f"{name} is declared nowhere in C"
        want = declared[name]
        if name == "pyqemu_shim_tree":
            # a string the shim keeps: copied by c_char_p, never freed
            want = (ctypes.c_char_p, want[1])
        assert (restype, argtypes) == want, name


def test_calls_go_through_the_prototypes(lib):
    """The bound prototypes are what calls use: a handle of the wrong
    type is refused before C, and 64-bit items come back whole."""
    with pytest.raises(ctypes.ArgumentError):
        lib.hbitmap_count(ffi.HBitmapIterPtr())
    with HBitmap(1 << 40, 16, lib) as hb:      # 2 MiB of bits
        hb.set((1 << 40) - 1, 1)
        assert hb.next_dirty(0) == (1 << 40) - (1 << 16)
        hb.set(0, 1 << 33)
        assert hb.count() == (1 << 33) + (1 << 16)


def test_a_library_built_from_another_tree_is_refused(layout):
    """The stock library, loaded as if it were built from the patched
    tree, is refused; against its own tree it loads."""
    wrong = ffi.Library(layout.shim_library("stock"), "stock",
                        layout.source("patched"), "./run build --stock")
    with pytest.raises(ffi.TreeMismatchError,
                       match="built from QEMU commit .* './run build --stock'"):
        wrong.has("hbitmap_alloc")
    right = ffi.Library(layout.shim_library("stock"), "stock",
                        layout.source("stock"), "./run build --stock")
    assert right.has("hbitmap_alloc")


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
                 ffi.MissingSymbolError, ffi.TreeMismatchError):
        assert issubclass(kind, ShimError), kind
    assert issubclass(OutOfRangeError, IndexError)
    assert issubclass(AllocationError, MemoryError)


def test_del_after_interpreter_shutdown_began_does_not_call_c(monkeypatch):
    lib = FakeLib()
    hb = fake(lib)
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
