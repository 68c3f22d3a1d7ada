"""Bitmap chunks as the migration stream carries them, in one place.

A bitmap travels in chunks of 1 KiB of bitmap (8192 granules).  A chunk
of zeroes goes out as its header only: flags (1 byte), start sector (8),
sector count (4).  A chunk with data adds its data size (8) and the
1 KiB itself.  The node and bitmap names ride on a bitmap's first chunk
only and are left out.  The benchmarks count bytes and predict resends
with these numbers; they must agree with each other and with QEMU's
counter (tests/test_bench_measures.py holds the trace count to it).
"""

from __future__ import annotations

from ..machine.vm import Disk
from ..util.units import KiB

#: granules (bits) per chunk
BITS = 8 * KiB
DATA = KiB
#: a chunk of zeroes on the wire
ZERO_WIRE = 13
#: a chunk with data on the wire
WIRE = ZERO_WIRE + 8 + DATA


def serialized_size(disk: Disk) -> int:
    """Bytes of *disk*'s bitmaps serialized: a bit per granule, in whole
    64-bit words, as the migration stream carries them."""
    total = 0
    for b in disk.bitmaps:
        bits = -(-disk.size // b.granularity)
        total += -(-bits // 64) * 8
    return total
