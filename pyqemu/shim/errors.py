"""The shim's errors, one family (:class:`ShimError`) that a caller can
catch as a whole or by kind.

QEMU's hbitmap enforces its preconditions with ``assert()``, which would
abort the whole Python process, so the shim checks them first and raises
:class:`PreconditionError`.  Each error also derives from the built-in
exception a Python caller would expect there (``ValueError`` for a bad
argument, ``IndexError`` for an item outside the bitmap, ``MemoryError``
for an allocation that failed), so code written against those keeps
working.
"""

from __future__ import annotations

from ..errors import PyqemuError


class ShimError(PyqemuError):
    """Something the hbitmap shim could not do."""


class LibraryError(ShimError):
    """The shim library cannot be used: missing file, a symbol it must
    have, a stale shim ABI.  The message names the command that fixes
    it."""


class MissingSymbolError(LibraryError):
    """The library was built without this function (e.g. stock QEMU has
    no meta bitmaps): "not in this build", not a bug."""


class TreeMismatchError(LibraryError):
    """The library was built from another QEMU tree than the one it is
    loaded for: its hbitmap is not the one under test."""


class PreconditionError(ShimError, ValueError):
    """A call that hbitmap.c would ``assert()`` on: a range past the end,
    an unaligned reset, a granularity out of range..."""


class OutOfRangeError(PreconditionError, IndexError):
    """An item outside the bitmap."""


class ClosedError(ShimError, ValueError):
    """The bitmap (or the bitmap that owns this meta bitmap) was closed:
    its C memory is gone."""


class AllocationError(ShimError, MemoryError):
    """A C allocator of the shim returned NULL."""


class HashError(ShimError):
    """hbitmap_sha256 failed (its Error's message is the reason)."""
