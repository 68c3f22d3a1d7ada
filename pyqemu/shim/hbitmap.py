"""A Pythonic ``HBitmap`` over QEMU's own util/hbitmap.c.

The object owns its C bitmap: ``close()`` frees it, ``with`` closes it, and
``__del__`` frees it if nobody did -- except at interpreter shutdown
(an atexit hook sets a flag), when the library may already be gone.
Iterators over a bitmap own C iterators that point into it; ``close()``
frees them too, and a suspended iterator raises instead of reading freed
memory.

QEMU's hbitmap enforces its preconditions with ``assert()``, which would
abort the whole Python process.  Every method therefore checks the same
preconditions first and raises :class:`~.errors.PreconditionError` (a
``ValueError``) with the reason, so that a test or a user's typo gets an
error, not a core dump; a closed bitmap raises
:class:`~.errors.ClosedError`.

A meta bitmap belongs to the bitmap it watches, in C and here: the owner
frees it (``free_meta()``, or its own ``close()``), with
hbitmap_free_meta() before hbitmap_free(), whose ``assert(!hb->meta)``
would abort the process otherwise.  The Python :class:`MetaBitmap` is a
view that keeps its owner alive; the owner refers to its view only
weakly and never needs the view to free the C memory, so a reference
cycle, collected in any order, cannot lose it.
"""

from __future__ import annotations

import atexit
import ctypes
import weakref
from typing import Any, Iterator

from . import ffi
from .errors import (
    AllocationError,
    ClosedError,
    HashError,
    OutOfRangeError,
    PreconditionError,
)

INT64_MAX = (1 << 63) - 1
#: hbitmap.h: HBITMAP_LOG_MAX_SIZE on 64-bit hosts.
LOG_MAX_SIZE = 41


_shutting_down = False


@atexit.register
def _at_shutdown() -> None:
    """From here on, __del__ leaves C memory to the exiting process."""
    global _shutting_down
    _shutting_down = True


def _granules(size: int, granularity: int) -> int:
    return (size + (1 << granularity) - 1) >> granularity


class HBitmap:
    """A hierarchical bitmap of *size* items, one bit per 2**granularity,
    allocated by the shim library *lib* (``pyqemu.shim.ffi.library``)."""

    # Class-level defaults: a half-constructed object (a ValueError in
    # __init__) is still safe to close() and to collect.
    _ptr: ffi.HBitmapHandle | None = None
    #: the C meta bitmap, owned (and freed) by this object
    _meta_ptr: ffi.HBitmapHandle | None = None
    #: the Python view of it, if one is alive (weak: the view holds us)
    _meta_view: "weakref.ref[MetaBitmap] | None" = None
    _size = 0
    #: live C iterators over this bitmap, freed by close()
    _iters: dict[int, Any]

    def __init__(self, size: int, granularity: int, lib: ffi.Library) -> None:
        self._iters = {}
        if not 0 <= size <= INT64_MAX:
            raise PreconditionError(f"size {size} out of range 0..INT64_MAX")
        if not 0 <= granularity < 64:
            raise PreconditionError(f"granularity {granularity} out of range 0..63")
        if _granules(size, granularity) > 1 << LOG_MAX_SIZE:
            raise PreconditionError(f"size {size} at granularity {granularity} needs "
                             f"more than 2**{LOG_MAX_SIZE} bits")
        self._lib = lib
        self._size = size
        ptr = lib.hbitmap_alloc(size, granularity)
        if not ptr:
            raise AllocationError(f"hbitmap_alloc({size}, {granularity}) "
                              "returned NULL")
        self._ptr = ptr

    # -- lifetime ----------------------------------------------------------

    def _free_iters(self) -> None:
        iters, self._iters = self._iters, {}
        for it in iters.values():
            self._lib.pyqemu_hbitmap_iter_free(it)

    def close(self) -> None:
        """Free the C bitmap now, its meta bitmap first; the object is
        unusable afterwards, and so is every iterator over it and its
        meta bitmap's view."""
        self.free_meta()
        self._free_iters()
        ptr, self._ptr = self._ptr, None
        if ptr:
            self._lib.hbitmap_free(ptr)

    def __enter__(self) -> "HBitmap":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        if not _shutting_down:
            self.close()

    @property
    def ptr(self) -> ffi.HBitmapHandle:
        if not self._ptr:
            raise ClosedError("HBitmap is closed")
        return self._ptr

    # -- geometry ----------------------------------------------------------

    @property
    def size(self) -> int:
        """Number of items (what hbitmap calls orig_size)."""
        return self._size

    @property
    def granularity(self) -> int:
        return self._lib.hbitmap_granularity(self.ptr)

    @property
    def granule(self) -> int:
        return 1 << self.granularity

    def _bits(self) -> int:
        return _granules(self._size, self.granularity)

    def _check_range(self, start: int, count: int) -> None:
        if start < 0 or count < 0:
            raise PreconditionError(f"negative range start={start} count={count}")
        if count and (start + count - 1) >> self.granularity >= self._bits():
            raise PreconditionError(f"range [{start}, {start + count}) is past the "
                             f"end of a {self._size}-item bitmap")

    # -- bits --------------------------------------------------------------

    def set(self, start: int, count: int) -> None:
        """Mark every granule touching [start, start+count) dirty."""
        self._check_range(start, count)
        self._lib.hbitmap_set(self.ptr, start, count)

    def reset(self, start: int, count: int) -> None:
        """Clear [start, start+count); both ends must be granule-aligned
        (the end may instead be the end of the bitmap)."""
        self._check_range(start, count)
        g = self.granule
        if start % g:
            raise PreconditionError(f"reset start {start} not aligned to granule {g}")
        if count % g and start + count != self._size:
            raise PreconditionError(f"reset count {count} not aligned to granule {g} "
                             "and not reaching the end of the bitmap")
        self._lib.hbitmap_reset(self.ptr, start, count)

    def reset_all(self) -> None:
        self._lib.hbitmap_reset_all(self.ptr)

    def get(self, item: int) -> bool:
        if item < 0 or item >> self.granularity >= self._bits():
            raise OutOfRangeError(f"item {item} outside a {self._size}-item bitmap")
        return bool(self._lib.hbitmap_get(self.ptr, item))

    __getitem__ = get

    def count(self) -> int:
        """Number of dirty items (dirty granules times the granule size)."""
        return int(self._lib.hbitmap_count(self.ptr))

    def empty(self) -> bool:
        return bool(self._lib.hbitmap_empty(self.ptr))

    def merge(self, other: "HBitmap") -> None:
        """self |= other (granularities may differ, sizes must not)."""
        if other.size != self.size:
            raise PreconditionError(f"cannot merge a {other.size}-item bitmap into "
                             f"a {self.size}-item one")
        self._lib.hbitmap_merge(self.ptr, other.ptr, self.ptr)

    def create_meta(self, chunk_size: int) -> "MetaBitmap":
        """Attach a meta bitmap: one bit per *chunk_size* items, set by every
        change of this bitmap (patched builds only).  It lives until
        :meth:`free_meta` or :meth:`close`, whether or not its view is
        kept."""
        if self._meta_ptr:
            raise PreconditionError("this bitmap already has a meta bitmap")
        if chunk_size <= 0 or chunk_size & (chunk_size - 1) or \
                chunk_size < self.granule:
            raise PreconditionError(
                f"chunk size {chunk_size} must be a power of two of at least "
                f"the granule ({self.granule})")
        ptr = self._lib.hbitmap_create_meta(self.ptr, chunk_size)
        if not ptr:
            raise AllocationError(f"hbitmap_create_meta({chunk_size}) "
                                  "returned NULL")
        self._meta_ptr = ptr
        meta = self.meta
        assert meta is not None
        return meta

    @property
    def meta(self) -> "MetaBitmap | None":
        """The meta bitmap's view (a new one if the last was dropped), or
        None without a meta bitmap."""
        view = self._meta_view() if self._meta_view is not None else None
        if view is None and self._meta_ptr:
            view = MetaBitmap(self, self._meta_ptr)
            self._meta_view = weakref.ref(view)
        return view

    def free_meta(self) -> None:
        """Detach and free the meta bitmap (no-op without one); its view
        is closed.  The owner does this itself, from its own record of
        the C pointer: it never depends on the view still being there."""
        ptr, self._meta_ptr = self._meta_ptr, None
        ref, self._meta_view = self._meta_view, None
        view = ref() if ref is not None else None
        if view is not None:
            view._detach()
        if ptr and self._ptr:
            self._lib.hbitmap_free_meta(self._ptr)

    def truncate(self, size: int) -> None:
        """Grow (new items clean) or shrink (dropped items forgotten)."""
        if not 0 <= size <= INT64_MAX:
            raise PreconditionError(f"size {size} out of range")
        if _granules(size, self.granularity) > 1 << LOG_MAX_SIZE:
            raise PreconditionError(f"size {size} too large for this granularity")
        self._lib.hbitmap_truncate(self.ptr, size)
        self._size = size
        meta = self._meta_view() if self._meta_view is not None else None
        if meta is not None:
            meta._size = size       # hbitmap_truncate resizes it too

    # -- searching ---------------------------------------------------------

    def next_dirty(self, start: int, count: int | None = None) -> int | None:
        """First dirty item in [start, start+count), or None."""
        if start < 0 or (count is not None and count < 0):
            raise PreconditionError("next_dirty needs start >= 0 and count >= 0")
        if start >= self._size:
            return None
        count = INT64_MAX if count is None else count
        res = self._lib.hbitmap_next_dirty(self.ptr, start, count)
        return None if res < 0 else res

    def next_zero(self, start: int, count: int | None = None) -> int | None:
        """First clean item in [start, start+count), or None."""
        if start < 0 or (count is not None and count < 0):
            raise PreconditionError("next_zero needs start >= 0 and count >= 0")
        if start >= self._size:   # hbitmap would read past its array
            return None
        count = INT64_MAX if count is None else count
        res = self._lib.hbitmap_next_zero(self.ptr, start, count)
        return None if res < 0 else res

    def next_dirty_area(self, start: int, end: int,
                        max_count: int = INT64_MAX) -> tuple[int, int] | None:
        """First dirty (offset, length) in [start, end), length <= max_count."""
        if start < 0 or end < 0 or max_count <= 0:
            raise PreconditionError("next_dirty_area needs start, end >= 0 and "
                             "max_count > 0")
        off, cnt = ctypes.c_int64(), ctypes.c_int64()
        if self._lib.hbitmap_next_dirty_area(self.ptr, start, end, max_count,
                                             ctypes.byref(off),
                                             ctypes.byref(cnt)):
            return off.value, cnt.value
        return None

    def dirty_areas(self, start: int = 0, end: int | None = None,
                    max_count: int = INT64_MAX) -> Iterator[tuple[int, int]]:
        """Every dirty (offset, length) in [start, end), in order."""
        end = self._size if end is None else end
        while True:
            area = self.next_dirty_area(start, end, max_count)
            if area is None:
                return
            yield area
            start = area[0] + area[1]

    def status(self, start: int, count: int) -> tuple[bool, int]:
        """(dirty?, length of the run of that state starting at start)."""
        if start < 0 or count <= 0 or start + count > self._size:
            raise PreconditionError(f"status range [{start}, {start + count}) invalid "
                             f"for a {self._size}-item bitmap")
        pnum = ctypes.c_int64()
        dirty = self._lib.hbitmap_status(self.ptr, start, count,
                                         ctypes.byref(pnum))
        return bool(dirty), pnum.value

    def iter_dirty(self, first: int = 0) -> Iterator[int]:
        """First item of each dirty granule from *first* on (HBitmapIter)."""
        if first < 0 or first >> self.granularity >= self._bits():
            raise PreconditionError(f"iteration start {first} outside the bitmap")
        return self._iterate(first)

    def _iterate(self, first: int) -> Iterator[int]:
        # The C iterator points into the bitmap: it is registered so that
        # close() frees it, and every step checks it is still registered.
        it = self._lib.pyqemu_hbitmap_iter_new(self.ptr, first)
        if not it:
            raise AllocationError("pyqemu_hbitmap_iter_new returned NULL")
        key = id(it)
        self._iters[key] = it
        try:
            while True:
                if key not in self._iters:
                    raise ClosedError("HBitmap closed during iteration")
                item = self._lib.hbitmap_iter_next(it)
                if item < 0:
                    return
                yield item
        finally:
            if self._iters.pop(key, None) is not None:
                self._lib.pyqemu_hbitmap_iter_free(it)

    __iter__ = iter_dirty

    # -- serialization -----------------------------------------------------

    def is_serializable(self) -> bool:
        return bool(self._lib.hbitmap_is_serializable(self.ptr))

    def serialization_align(self) -> int:
        if not self.is_serializable():
            raise PreconditionError("granularity >= 58 cannot be serialized")
        return int(self._lib.hbitmap_serialization_align(self.ptr))

    def _check_chunk(self, start: int, count: int) -> None:
        align = self.serialization_align()
        self._check_range(start, count)
        if start % align:
            raise PreconditionError(f"chunk start {start} not aligned to {align}")
        last = (start + count - 1) >> self.granularity
        if count and last != self._bits() - 1 and count % align:
            raise PreconditionError(f"chunk length {count} not aligned to {align} and "
                             "not the last chunk")

    def serialization_size(self, start: int, count: int) -> int:
        self._check_chunk(start, count)
        return int(self._lib.hbitmap_serialization_size(self.ptr, start, count))

    def serialize(self, start: int = 0, count: int | None = None) -> bytes:
        """The little-endian words covering [start, start+count)."""
        count = self._size - start if count is None else count
        n = self.serialization_size(start, count)
        buf = (ctypes.c_uint8 * max(n, 1))()
        self._lib.hbitmap_serialize_part(self.ptr, buf, start, count)
        return bytes(buf)[:n]

    def deserialize(self, data: bytes, start: int = 0,
                    count: int | None = None, finish: bool = True) -> None:
        count = self._size - start if count is None else count
        n = self.serialization_size(start, count)
        if len(data) < n:
            raise PreconditionError(f"{len(data)} bytes given, the chunk needs {n}")
        buf = (ctypes.c_uint8 * max(n, 1)).from_buffer_copy(
            data[:n] if n else b"\0")
        self._lib.hbitmap_deserialize_part(self.ptr, buf, start, count, finish)

    def deserialize_zeroes(self, start: int, count: int,
                           finish: bool = True) -> None:
        self._check_chunk(start, count)
        self._lib.hbitmap_deserialize_zeroes(self.ptr, start, count, finish)

    def deserialize_ones(self, start: int, count: int,
                         finish: bool = True) -> None:
        self._check_chunk(start, count)
        self._lib.hbitmap_deserialize_ones(self.ptr, start, count, finish)

    def deserialize_finish(self) -> None:
        self._lib.hbitmap_deserialize_finish(self.ptr)

    def sha256(self) -> str:
        """hbitmap_sha256: SHA-256 of the bottom level's words, hex."""
        err = ctypes.c_void_p()
        res = self._lib.pyqemu_hbitmap_sha256(self.ptr, ctypes.byref(err))
        if not res:
            msg = ctypes.string_at(err.value).decode() if err.value else "?"
            self._lib.pyqemu_free(err)
            raise HashError(f"hbitmap_sha256 failed: {msg}")
        try:
            return ctypes.string_at(res).decode()
        finally:
            self._lib.pyqemu_free(res)

    def __repr__(self) -> str:
        if not self._ptr:
            return "<HBitmap closed>"
        return (f"<HBitmap size={self._size} granularity={self.granularity} "
                f"count={self.count()}>")


class MetaBitmap(HBitmap):
    """The view of an HBitmap's meta bitmap.

    An ordinary hbitmap to query and reset, whose C memory belongs to the
    owner: the view keeps its owner alive, ``close()`` asks the owner to
    free the meta bitmap (:meth:`HBitmap.free_meta`), and dropping the
    view frees nothing but its own iterators (the owner's :attr:`meta`
    makes a new view).  Once the owner freed the meta bitmap, the view
    raises ClosedError.
    """

    _owner: HBitmap | None = None

    def __init__(self, owner: HBitmap, ptr: ffi.HBitmapHandle) -> None:
        # No allocation: the C object belongs to owner's HBitmap.
        self._iters = {}
        self._lib = owner._lib
        self._size = owner.size
        self._owner = owner
        self._ptr = ptr

    def _detach(self) -> None:
        """The owner freed the meta bitmap: forget it, and the iterators
        that point into it."""
        self._free_iters()
        self._ptr = None
        self._owner = None

    def close(self) -> None:
        """Detach and free the meta bitmap, through its owner."""
        owner = self._owner
        if owner is not None and owner._meta_ptr is self._ptr:
            owner.free_meta()
        self._detach()

    def __del__(self) -> None:
        # only the view goes: the meta bitmap stays with its owner
        if not _shutting_down:
            self._free_iters()

    def create_meta(self, chunk_size: int) -> "MetaBitmap":
        raise PreconditionError("a meta bitmap has no meta bitmap of its own")
