"""Model-based test: random operation sequences on the C HBitmap and on the
Python model must agree on every observable result.

hypothesis shrinks any divergence to a minimal sequence of operations, so a
failure here reads as a small reproducer for tests/unit/test-hbitmap.c.
Runs on both flavours: the series must not change any of this behaviour.
"""

from __future__ import annotations

import pytest
from hbitmap_model import ModelHBitmap
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from pyqemu.shim import ffi
from pyqemu.shim.hbitmap import INT64_MAX, HBitmap

MAX_SIZE = 5000


def machine_for(lib: ffi.Library) -> type[RuleBasedStateMachine]:
    class HBitmapMachine(RuleBasedStateMachine):
        hb: HBitmap
        model: ModelHBitmap

        @initialize(size=st.integers(1, MAX_SIZE), gran=st.integers(0, 6))
        def alloc(self, size: int, gran: int) -> None:
            self.hb = HBitmap(size, gran, lib)
            self.model = ModelHBitmap(size, gran)

        def teardown(self) -> None:
            if hasattr(self, "hb"):
                self.hb.close()

        # ranges strictly inside the bitmap, as real callers use them
        def _range(self, data: st.DataObject) -> tuple[int, int]:
            start = data.draw(st.integers(0, self.model.size - 1))
            count = data.draw(st.integers(0, self.model.size - start))
            return start, count

        @rule(data=st.data())
        def set(self, data: st.DataObject) -> None:
            start, count = self._range(data)
            self.hb.set(start, count)
            self.model.set(start, count)

        @rule(data=st.data())
        def reset(self, data: st.DataObject) -> None:
            g = 1 << self.model.g
            start, count = self._range(data)
            start -= start % g
            if start + count != self.model.size:
                count -= count % g
            count = min(count, self.model.size - start)
            self.hb.reset(start, count)
            self.model.reset(start, count)

        @rule()
        def reset_all(self) -> None:
            self.hb.reset_all()
            self.model.reset_all()

        @rule(size=st.integers(1, MAX_SIZE))
        def truncate(self, size: int) -> None:
            self.hb.truncate(size)
            self.model.truncate(size)

        @rule(data=st.data(), gran=st.integers(0, 6))
        def merge(self, data: st.DataObject, gran: int) -> None:
            with HBitmap(self.model.size, gran, lib) as other:
                om = ModelHBitmap(self.model.size, gran)
                for _ in range(data.draw(st.integers(0, 3))):
                    start, count = self._range(data)
                    other.set(start, count)
                    om.set(start, count)
                self.hb.merge(other)
                self.model.merge_from(om)

        @rule(data=st.data())
        def deserialize_chunk(self, data: st.DataObject) -> None:
            """Overwrite one aligned chunk with random bits (no bits past
            the end: the serialization contract leaves those undefined)."""
            align = 64 << self.model.g
            nchunks = (self.model.size + align - 1) // align
            first = data.draw(st.integers(0, nchunks - 1))
            n = data.draw(st.integers(1, nchunks - first))
            start = first * align
            count = min(n * align, self.model.size - start)
            words = n * 64
            value = data.draw(st.integers(0, (1 << words) - 1))
            base = start >> self.model.g
            value &= (1 << max(self.model.nbits - base, 0)) - 1
            payload = value.to_bytes(words // 8, "little")
            finish = data.draw(st.booleans())
            self.hb.deserialize(payload, start, count, finish=finish)
            self.model.deserialize(payload, start, count)
            if not finish:
                self.hb.deserialize_finish()

        @rule(data=st.data())
        def queries(self, data: st.DataObject) -> None:
            size = self.model.size
            item = data.draw(st.integers(0, size - 1))
            assert self.hb.get(item) == self.model.get(item)
            start = data.draw(st.integers(0, size + 10))
            count = data.draw(st.one_of(st.just(INT64_MAX),
                                        st.integers(0, size + 10)))
            nd = self.hb.next_dirty(start, count)
            assert (-1 if nd is None else nd) == self.model.next_dirty(start, count)
            nz = self.hb.next_zero(start, count)
            assert (-1 if nz is None else nz) == self.model.next_zero(start, count)
            end = data.draw(st.integers(0, size + 10))
            mx = data.draw(st.one_of(st.just(INT64_MAX), st.integers(1, 100)))
            assert self.hb.next_dirty_area(start, end, mx) == \
                self.model.next_dirty_area(start, end, mx)
            if start < size and count and start + count <= size:
                assert self.hb.status(start, count) == \
                    self.model.status(start, count)

        @rule(data=st.data())
        def serialize_chunk(self, data: st.DataObject) -> None:
            align = 64 << self.model.g
            nchunks = (self.model.size + align - 1) // align
            first = data.draw(st.integers(0, nchunks - 1))
            start = first * align
            count = min(data.draw(st.integers(1, nchunks - first)) * align,
                        self.model.size - start)
            assert self.hb.serialize(start, count) == \
                self.model.serialize(start, count)

        @invariant()
        def agree(self) -> None:
            assert self.hb.count() == self.model.count()
            assert self.hb.empty() == (self.model.count() == 0)
            assert list(self.hb.iter_dirty()) == self.model.iter_dirty(0)
            assert self.hb.sha256() == self.model.sha256()

    return HBitmapMachine


def test_hbitmap_agrees_with_model(lib: ffi.Library) -> None:
    machine = machine_for(lib)
    machine.TestCase.settings = settings(
        max_examples=200, stateful_step_count=40, deadline=None,
        suppress_health_check=[HealthCheck.too_slow])
    machine.TestCase().runTest()


@pytest.mark.parametrize("size,gran", [(1, 0), (63, 0), (64, 0), (65, 3),
                                       (4097, 6)])
def test_model_is_self_consistent(size: int, gran: int) -> None:
    """The oracle itself: a serialize/deserialize round trip is identity."""
    m = ModelHBitmap(size, gran)
    m.set(0, 1)
    m.set(size - 1, 1)
    data = m.serialize(0, size)
    n = ModelHBitmap(size, gran)
    n.deserialize(data, 0, size)
    assert n.bits == m.bits and n.count() == m.count() and n.sha256() == m.sha256()


def _scan_next_dirty(m: ModelHBitmap, start: int, count: int) -> int:
    """hbitmap.h's next_dirty, granule by granule."""
    if start >= m.size or count == 0:
        return -1
    end = min(m.size, start + count)
    for b in range(start >> m.g, m.nwords * 64):
        if m.bits >> b & 1:
            return max(start, b << m.g) if b << m.g < end else -1
    return -1


def _scan_next_zero(m: ModelHBitmap, start: int, count: int) -> int:
    """hbitmap.h's next_zero, granule by granule."""
    if start >= m.size or count == 0:
        return -1
    end_bit = m.nbits if count > m.size - start else \
        ((start + count - 1) >> m.g) + 1
    for b in range(start >> m.g, end_bit):
        if not m.bits >> b & 1:
            return max(b << m.g, start)
    return -1


@given(size=st.integers(1, 700), gran=st.integers(0, 4),
       runs=st.lists(st.tuples(st.integers(0, 699), st.integers(0, 80)),
                     max_size=6),
       start=st.integers(0, 720), count=st.integers(0, 800))
@settings(max_examples=300, deadline=None)
def test_model_searches_equal_plain_scans(size: int, gran: int,
                                          runs: list[tuple[int, int]],
                                          start: int, count: int) -> None:
    """The oracle's searches use bit tricks on one int (scanning made the
    hbitmap tests twice as slow, 29 s against 15 s): they must answer
    like plain granule-by-granule scans of the documented semantics."""
    m = ModelHBitmap(size, gran)
    for s, c in runs:
        if s < size:
            m.set(s, min(c, size - s))
    assert m.next_dirty(start, count) == _scan_next_dirty(m, start, count)
    assert m.next_zero(start, count) == _scan_next_zero(m, start, count)
