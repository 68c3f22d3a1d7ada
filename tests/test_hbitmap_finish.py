"""Deserialization finished chunk by chunk (the series' range finish) must
give exactly the bitmap that deserializing everything and finishing once
gives: same bits, count, emptiness, iteration and dirty areas, for random
chunk orders, overlaps, fills and granularities.

Runs on both builds: on stock, finish=True repairs the whole bitmap each
time, so this also checks that the fast path changed no result.
"""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pyqemu.shim.hbitmap import HBitmap


def same(a: HBitmap, b: HBitmap) -> None:
    assert a.sha256() == b.sha256()
    assert a.count() == b.count()
    assert a.empty() == b.empty()
    assert list(a.dirty_areas()) == list(b.dirty_areas())
    if a.count() >> a.granularity < 5000:
        assert list(a.iter_dirty()) == list(b.iter_dirty())


chunk_op = st.tuples(st.sampled_from(["data", "zeroes", "ones"]),
                     st.integers(0, 10_000), st.integers(1, 4),
                     st.binary(min_size=0, max_size=64))


# The flavour fixture is a string chosen per test: nothing to reset.
@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(size=st.integers(1, 40_000), gran=st.integers(0, 4),
       initial=st.lists(st.tuples(st.integers(0, 39_999),
                                  st.integers(1, 3000)), max_size=5),
       ops=st.lists(chunk_op, min_size=1, max_size=30))
def test_range_finish_equals_full_finish(lib, size, gran, initial, ops):
    with HBitmap(size, gran, lib) as inc, HBitmap(size, gran, lib) \
            as full:
        for start, count in initial:          # both start from the same bits
            start %= size
            count = min(count, size - start)
            inc.set(start, count)
            full.set(start, count)
        align = inc.serialization_align()
        nchunks = (size + align - 1) // align
        for kind, first, n, payload in ops:
            start = (first % nchunks) * align
            count = min(n * align, size - start)
            if kind == "data":
                need = inc.serialization_size(start, count)
                data = (payload * (need // max(len(payload), 1) + 1))[:need] \
                    if payload else bytes(need)
                # no bits past the end: their meaning is not defined
                data = full_mask(full, start, count, data)
                inc.deserialize(data, start, count, finish=True)
                full.deserialize(data, start, count, finish=False)
            elif kind == "zeroes":
                inc.deserialize_zeroes(start, count, finish=True)
                full.deserialize_zeroes(start, count, finish=False)
            elif start + count < size or (size >> gran) % 64 == 0:
                inc.deserialize_ones(start, count, finish=True)
                full.deserialize_ones(start, count, finish=False)
            assert inc.sha256() == full.sha256()  # the bits, at every step
        full.deserialize_finish()
        same(inc, full)
        inc.deserialize_finish()                  # nothing left to do
        same(inc, full)


def full_mask(hb: HBitmap, start: int, count: int, data: bytes) -> bytes:
    """Clear the bits of *data* that lie past the end of the bitmap."""
    g = hb.granularity
    nbits = (hb.size + (1 << g) - 1) >> g
    first_bit = start >> g
    value = int.from_bytes(data, "little")
    keep = max(nbits - first_bit, 0)
    value &= (1 << keep) - 1
    return value.to_bytes(len(data), "little")
