"""A small, obviously-correct Python model of QEMU's HBitmap.

It mirrors the *contract* of util/hbitmap.c, not its data structure: the
bottom level is one Python int holding ``words * 64`` bits, and every
operation is the few lines its documentation describes.  The hypothesis
state machine in test_hbitmap_model.py feeds the same operations to this
model and to the real C code and compares every observable result.
"""

from __future__ import annotations

import hashlib

BITS_PER_LONG = 64


class ModelHBitmap:
    def __init__(self, size: int, granularity: int) -> None:
        self.size = size
        self.g = granularity
        self.bits = 0   # bottom level, including bits past nbits in the last word

    # geometry --------------------------------------------------------------
    @property
    def nbits(self) -> int:
        return (self.size + (1 << self.g) - 1) >> self.g

    @property
    def nwords(self) -> int:
        return max((self.nbits + BITS_PER_LONG - 1) // BITS_PER_LONG, 1)

    def _mask(self, first: int, last: int) -> int:
        return ((1 << (last - first + 1)) - 1) << first

    # bits ------------------------------------------------------------------
    def set(self, start: int, count: int) -> None:
        if count:
            self.bits |= self._mask(start >> self.g, (start + count - 1) >> self.g)

    def reset(self, start: int, count: int) -> None:
        if count:
            self.bits &= ~self._mask(start >> self.g,
                                     (start + count - 1) >> self.g)

    def reset_all(self) -> None:
        self.bits = 0

    def get(self, item: int) -> bool:
        return bool(self.bits >> (item >> self.g) & 1)

    def count(self) -> int:
        return bin(self.bits & ((1 << self.nbits) - 1)).count("1") << self.g

    def dirty_bits(self) -> list[int]:
        """Indices of the set bits, in order (linear in the bitmap size)."""
        text = bin(self.bits)[:1:-1]
        return [i for i, c in enumerate(text) if c == "1"]

    def iter_dirty(self, first: int) -> list[int]:
        return [b << self.g for b in self.dirty_bits() if b >= first >> self.g]

    # searching (the documented semantics of hbitmap.h) ---------------------
    def next_dirty(self, start: int, count: int) -> int:
        if start >= self.size or count == 0:
            return -1
        end = min(self.size, start + count)
        rest = self.bits >> (start >> self.g)   # bit 0: start's granule
        if not rest:
            return -1
        lowest_set = (rest & -rest).bit_length() - 1
        off = ((start >> self.g) + lowest_set) << self.g
        return max(start, off) if off < end else -1

    def next_zero(self, start: int, count: int) -> int:
        if start >= self.size or count == 0:
            return -1
        if count > self.size - start:
            end_bit = self.nbits
        else:
            end_bit = ((start + count - 1) >> self.g) + 1
        rest = self.bits >> (start >> self.g)   # bit 0: start's granule
        # adding 1 carries through the trailing ones into the lowest zero
        b = (start >> self.g) + ((rest + 1) & ~rest).bit_length() - 1
        return max(b << self.g, start) if b < end_bit else -1

    def next_dirty_area(self, start: int, end: int, max_count: int):
        end = min(end, self.size)
        if start >= end:
            return None
        s = self.next_dirty(start, end - start)
        if s < 0:
            return None
        e = s + min(end - s, max_count)
        nz = self.next_zero(s, e - s)
        if nz >= 0:
            e = nz
        return s, e - s

    def status(self, start: int, count: int) -> tuple[bool, int]:
        nd = self.next_dirty(start, count)
        if nd == -1:
            return False, count
        if nd > start:
            return False, nd - start
        nz = self.next_zero(start, count)
        return True, count if nz == -1 else nz - start

    # whole-bitmap operations -----------------------------------------------
    def truncate(self, size: int) -> None:
        old_nbits = self.nbits
        self.size = size
        if self.nbits < old_nbits:
            self.bits &= (1 << self.nbits) - 1 | ~((1 << old_nbits) - 1)
        self.bits &= (1 << (self.nwords * BITS_PER_LONG)) - 1

    def merge_from(self, other: "ModelHBitmap") -> None:
        """self |= other, via items, as hbitmap_merge does across granularities."""
        if other.g == self.g:
            self.bits |= other.bits & ((1 << (self.nwords * BITS_PER_LONG)) - 1)
            return
        start = 0
        while (area := other.next_dirty_area(start, other.size, 1 << 62)):
            self.set(*area)
            start = area[0] + area[1]

    # serialization ---------------------------------------------------------
    def _words(self, start: int, count: int) -> tuple[int, int]:
        first = (start >> self.g) // BITS_PER_LONG
        last = ((start + count - 1) >> self.g) // BITS_PER_LONG
        return first, last

    def serialize(self, start: int, count: int) -> bytes:
        if not count:
            return b""
        first, last = self._words(start, count)
        n = (last - first + 1) * BITS_PER_LONG
        return ((self.bits >> (first * BITS_PER_LONG)) & ((1 << n) - 1)
                ).to_bytes(n // 8, "little")

    def deserialize(self, data: bytes, start: int, count: int) -> None:
        if not count:
            return
        first, last = self._words(start, count)
        n = (last - first + 1) * BITS_PER_LONG
        value = int.from_bytes(data[: n // 8], "little")
        shift = first * BITS_PER_LONG
        self.bits = (self.bits & ~(((1 << n) - 1) << shift)) | (value << shift)

    def deserialize_fill(self, start: int, count: int, ones: bool) -> None:
        if not count:
            return
        first, last = self._words(start, count)
        n = (last - first + 1) * BITS_PER_LONG
        self.deserialize(((1 << n) - 1 if ones else 0).to_bytes(n // 8, "little"),
                         start, count)

    def sha256(self) -> str:
        return hashlib.sha256(self.bits.to_bytes(self.nwords * 8, "little")
                              ).hexdigest()
