"""ctypes declarations of QEMU's hbitmap API, in one place.

Modelled on llvmlite's ``binding/ffi.py``:

* handles are *opaque pointer types* (``HBitmapPtr``), so passing the wrong
  kind of object is a ``ctypes.ArgumentError`` instead of a segfault;
* every C function's ``argtypes``/``restype`` is declared once, in
  :data:`PROTOTYPES`, and all of them are bound when the library is first
  loaded (a call never reaches C through an unprototyped function);
* the library is found and checked once, with one error that names what is
  missing (the file, a symbol, or a stale shim ABI) or wrong (a library
  built from another QEMU tree than the one under test), and the command
  that fixes it.

Functions added by the patch series are *optional*: the stock library lacks
them, and asking for one raises :class:`MissingSymbolError` naming the
symbol and the library, so a test can tell "not in this build" from a bug.
"""

from __future__ import annotations

import ctypes
from ctypes import POINTER, c_bool, c_char_p, c_int, c_int64, c_uint64, c_void_p
from pathlib import Path
from typing import Any, Callable, TypeAlias

from ..errors import CommandError
from ..paths import FLAVOURS, Layout
from ..tree.git import head
from .errors import LibraryError, MissingSymbolError, TreeMismatchError

SHIM_ABI = 1


class HBitmapStruct(ctypes.Structure):
    """Opaque ``HBitmap``; only ever handled through :data:`HBitmapPtr`."""


class HBitmapIterStruct(ctypes.Structure):
    """Opaque ``HBitmapIter``; allocated by the shim, never by Python."""


HBitmapPtr = POINTER(HBitmapStruct)
HBitmapIterPtr = POINTER(HBitmapIterStruct)
#: The type of an HBitmap handle, for annotations.
HBitmapHandle: TypeAlias = "ctypes._Pointer[HBitmapStruct]"
c_uint8_p = POINTER(ctypes.c_uint8)
c_int64_p = POINTER(c_int64)

#: name -> (restype, argtypes).  The whole hbitmap API plus the shim helpers.
PROTOTYPES: dict[str, tuple[Any, list[Any]]] = {
    # lifetime
    "hbitmap_alloc": (HBitmapPtr, [c_uint64, c_int]),
    "hbitmap_free": (None, [HBitmapPtr]),
    "hbitmap_truncate": (None, [HBitmapPtr, c_uint64]),
    # bits
    "hbitmap_set": (None, [HBitmapPtr, c_uint64, c_uint64]),
    "hbitmap_reset": (None, [HBitmapPtr, c_uint64, c_uint64]),
    "hbitmap_reset_all": (None, [HBitmapPtr]),
    "hbitmap_get": (c_bool, [HBitmapPtr, c_uint64]),
    "hbitmap_merge": (None, [HBitmapPtr, HBitmapPtr, HBitmapPtr]),
    # queries
    "hbitmap_empty": (c_bool, [HBitmapPtr]),
    "hbitmap_granularity": (c_int, [HBitmapPtr]),
    "hbitmap_count": (c_uint64, [HBitmapPtr]),
    "hbitmap_next_dirty": (c_int64, [HBitmapPtr, c_int64, c_int64]),
    "hbitmap_next_zero": (c_int64, [HBitmapPtr, c_int64, c_int64]),
    "hbitmap_next_dirty_area": (c_bool, [HBitmapPtr, c_int64, c_int64, c_int64,
                                         c_int64_p, c_int64_p]),
    "hbitmap_status": (c_bool, [HBitmapPtr, c_int64, c_int64, c_int64_p]),
    # iteration (the iterator itself comes from the shim)
    "hbitmap_iter_next": (c_int64, [HBitmapIterPtr]),
    "pyqemu_hbitmap_iter_new": (HBitmapIterPtr, [HBitmapPtr, c_uint64]),
    "pyqemu_hbitmap_iter_free": (None, [HBitmapIterPtr]),
    # serialization
    "hbitmap_is_serializable": (c_bool, [HBitmapPtr]),
    "hbitmap_serialization_align": (c_uint64, [HBitmapPtr]),
    "hbitmap_serialization_size": (c_uint64, [HBitmapPtr, c_uint64, c_uint64]),
    "hbitmap_serialize_part": (None, [HBitmapPtr, c_uint8_p, c_uint64,
                                      c_uint64]),
    "hbitmap_deserialize_part": (None, [HBitmapPtr, c_uint8_p, c_uint64,
                                        c_uint64, c_bool]),
    "hbitmap_deserialize_zeroes": (None, [HBitmapPtr, c_uint64, c_uint64,
                                          c_bool]),
    "hbitmap_deserialize_ones": (None, [HBitmapPtr, c_uint64, c_uint64,
                                        c_bool]),
    "hbitmap_deserialize_finish": (None, [HBitmapPtr]),
    # hashing: the shim turns Error ** into a message
    "pyqemu_hbitmap_sha256": (c_void_p, [HBitmapPtr, POINTER(c_void_p)]),
    "pyqemu_free": (None, [c_void_p]),
    "pyqemu_shim_abi": (c_int, []),
    "pyqemu_shim_tree": (c_char_p, []),
    # meta bitmaps (added by the series)
    "hbitmap_create_meta": (HBitmapPtr, [HBitmapPtr, c_uint64]),
    "hbitmap_free_meta": (None, [HBitmapPtr]),
}

#: Added by the patch series; absent from the stock library.
OPTIONAL: frozenset[str] = frozenset({"hbitmap_create_meta",
                                      "hbitmap_free_meta"})


class Library:
    """The shim library of one flavour, loaded lazily and checked once.

    Loading binds every declared prototype; an optional function the
    build lacks is remembered as missing and raises MissingSymbolError
    when asked for.  *tree* is the QEMU source tree the library must have
    been built from (the commit it records, ``pyqemu_shim_tree``, must be
    that tree's HEAD), and *rebuild* the command that rebuilds it.
    """

    _dll: ctypes.CDLL | None = None

    def __init__(self, path: Path, flavour: str, tree: Path | None = None,
                 rebuild: str = "./run build") -> None:
        self.path = path
        self.flavour = flavour
        self.tree = tree
        self.rebuild = rebuild
        self._funcs: dict[str, Callable[..., Any]] = {}

    def _load(self) -> ctypes.CDLL:
        if self._dll is not None:
            return self._dll
        if not self.path.exists():
            raise LibraryError(
                f"hbitmap shim for the {self.flavour} flavour not found at "
                f"{self.path}: run '{self.rebuild}' first")
        try:
            dll = ctypes.CDLL(str(self.path))
        except OSError as e:
            raise LibraryError(f"cannot load {self.path}: {e}") from None
        missing = [n for n in PROTOTYPES
                   if n not in OPTIONAL and not hasattr(dll, n)]
        if missing:
            raise LibraryError(f"{self.path} lacks required symbols: "
                               + ", ".join(missing))
        funcs = {}
        for name, (restype, argtypes) in PROTOTYPES.items():
            if not hasattr(dll, name):
                continue                    # optional, reported on use
            fn = getattr(dll, name)
            fn.restype, fn.argtypes = restype, argtypes
            funcs[name] = fn
        abi = funcs["pyqemu_shim_abi"]()
        if abi != SHIM_ABI:
            raise LibraryError(f"{self.path} has shim ABI {abi}, this pyqemu "
                               f"needs {SHIM_ABI}: rebuild with "
                               f"'{self.rebuild}'")
        self._check_tree(funcs["pyqemu_shim_tree"]().decode())
        self._funcs = funcs
        # as instance attributes, later calls skip __getattr__ (it was
        # 1.7 M calls, a tenth of the hbitmap tests' time)
        self.__dict__.update(funcs)
        self._dll = dll
        return dll

    def _check_tree(self, built_from: str) -> None:
        """Refuse a library whose hbitmap.c is not the tree's: a test of
        the patched flavour would otherwise pass on a stale build of
        another commit (or of another checkout)."""
        if self.tree is None:
            return
        try:
            want = head(self.tree)
        except CommandError as e:
            raise LibraryError(f"cannot tell which commit {self.tree} is "
                               f"at ({e}): run '{self.rebuild}'") from None
        if built_from != want:
            raise TreeMismatchError(
                f"{self.path} was built from QEMU commit {built_from[:12]}, "
                f"but the {self.flavour} tree {self.tree} is at "
                f"{want[:12]}: rebuild with '{self.rebuild}'")

    def has(self, name: str) -> bool:
        """Whether this build exports *name* (optional functions vary)."""
        self._load()
        return name in self._funcs

    def __getattr__(self, name: str) -> Callable[..., Any]:
        if name.startswith("_"):
            raise AttributeError(name)
        if name not in PROTOTYPES:
            raise AttributeError(f"{name} is not declared in pyqemu.shim.ffi")
        self._load()
        try:
            return self._funcs[name]
        except KeyError:
            raise MissingSymbolError(
                f"{name} is not in the {self.flavour} library {self.path} "
                "(it is added by the patch series)") from None


_LIBS: dict[Path, Library] = {}


def library(layout: Layout, flavour: str = "patched") -> Library:
    """The shared Library object of one flavour of *layout*: the file the
    layout names, checked against the layout's source tree."""
    if flavour not in FLAVOURS:
        raise ValueError(f"flavour must be one of {FLAVOURS}, not {flavour!r}")
    path = layout.shim_library(flavour)
    lib = _LIBS.get(path)
    if lib is None:
        lib = _LIBS[path] = Library(path, flavour, layout.source(flavour),
                                    layout.build_command(flavour))
    return lib
