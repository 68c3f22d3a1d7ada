"""QEMU's hbitmap through the ctypes shim: the behaviours upstream's
tests/unit/test-hbitmap.c checks, on both the stock and the patched build.

Each test exercises the real C code and compares it with the Python model
(tests/hbitmap_model.py) or with values the hbitmap contract fixes.
"""

from __future__ import annotations

import ctypes
import random

import pytest
from hbitmap_model import ModelHBitmap

from pyqemu.shim.hbitmap import INT64_MAX, HBitmap

L1 = 64
L2 = L1 * 64
L3 = L2 * 64


class Pair:
    """An HBitmap and its model, changed together and compared on demand."""

    def __init__(self, make, size: int, granularity: int = 0) -> None:
        self.hb: HBitmap = make(size, granularity)
        self.model = ModelHBitmap(size, granularity)

    def set(self, start: int, count: int) -> None:
        self.hb.set(start, count)
        self.model.set(start, count)
        self.check()

    def reset(self, start: int, count: int) -> None:
        self.hb.reset(start, count)
        self.model.reset(start, count)
        self.check()

    def reset_all(self) -> None:
        self.hb.reset_all()
        self.model.reset_all()
        self.check()

    def truncate(self, size: int) -> None:
        self.hb.truncate(size)
        self.model.truncate(size)
        self.check()

    def check(self, first: int = 0) -> None:
        assert self.hb.count() == self.model.count()
        assert self.hb.empty() == (self.model.count() == 0)
        if self.hb.size and self.model.count() >> self.model.g <= 20000:
            # item-by-item through ctypes; large sets are covered by sha256
            assert list(self.hb.iter_dirty(first)) == self.model.iter_dirty(first)
        assert self.hb.sha256() == self.model.sha256()


# -- sizes and iteration ------------------------------------------------------

def test_zero_sized_bitmap_is_empty_and_iterates_nothing(make_bitmap):
    hb = make_bitmap(0)
    assert hb.count() == 0 and hb.empty()
    assert hb.next_dirty(0) is None and hb.next_zero(0) is None
    assert hb.next_dirty_area(0, INT64_MAX) is None


def test_unaligned_size_tracks_the_last_partial_word(make_bitmap):
    p = Pair(make_bitmap, L3 + 23)
    p.set(0, L3 + 23)
    p.reset(0, L3 + 23)
    p.set(L3 + 22, 1)
    assert p.hb.get(L3 + 22)


def test_iteration_of_an_empty_bitmap_yields_nothing(make_bitmap):
    hb = make_bitmap(L3)
    assert list(hb.iter_dirty(0)) == []
    assert list(hb.iter_dirty(L3 - 1)) == []


def test_iteration_starts_where_asked(make_bitmap):
    p = Pair(make_bitmap, L3)
    p.set(0, 1)
    p.set(L1 - 1, 2)
    p.set(L2, L1)
    p.set(L3 - 1, 1)
    for first in (0, 1, L1 - 1, L1, L1 + 1, L2 - 1, L2 + 5, L3 - 1):
        p.check(first)


def test_iteration_at_granularity_7_returns_granule_starts(make_bitmap):
    size = 131072 << 7
    hb = make_bitmap(size, 7)
    assert list(hb.iter_dirty(0)) == []
    hb.set(((L2 + L1 + 1) << 7) + 8, 8)
    assert list(hb.iter_dirty(0)) == [(L2 + L1 + 1) << 7]
    assert list(hb.iter_dirty((L2 + L1 + 2) << 7)) == []
    hb.set(size - 8, 8)
    assert list(hb.iter_dirty(0)) == [(L2 + L1 + 1) << 7, 131071 << 7]
    assert list(hb.iter_dirty((L2 + L1 + 2) << 7)) == [131071 << 7]


def test_iterator_survives_reset_all_during_iteration(make_bitmap):
    hb = make_bitmap(L1 * 2)
    hb.set(0, L1 * 2)
    it = hb.iter_dirty(L1 - 1)
    assert next(it) == L1 - 1
    hb.reset_all()
    # upstream only requires that this neither crashes nor loops forever
    rest = list(it)
    assert len(rest) <= L1


# -- get / set / reset --------------------------------------------------------

def test_get_matches_model_for_every_bit(make_bitmap):
    p = Pair(make_bitmap, 2 * L2)
    for start, count in ((0, 1), (L1 - 1, 3), (L2 - 1, 2), (2 * L2 - 1, 1)):
        p.set(start, count)
    for i in range(2 * L2):
        assert p.hb.get(i) == p.model.get(i), i


@pytest.mark.parametrize("start,count", [
    (0, L3 * 2),                       # all
    (L2 + 1, 1),                       # one
    (L1 - 1, 2),                       # two elements across a word
    (L1 - 1, L1 + 2), (L1 * 2 - 1, L1 * 4 + 1), (L2 - 1, L2 + 2),
    (L3 - 1, 3),
])
def test_set_marks_exactly_the_range(make_bitmap, start, count):
    p = Pair(make_bitmap, L3 * 2)
    p.set(start, count)
    p.set(start, count)                # twice: count unchanged
    assert p.hb.count() == count


def test_overlapping_sets_count_once(make_bitmap):
    p = Pair(make_bitmap, L3 * 2)
    p.set(L1 - 1, L1 + 2)
    p.set(L1, L1)
    p.set(L2 - 1, L3 - L2 + 2)
    p.set(L2, L1)
    assert p.hb.count() == (L1 + 2) + (L3 - L2 + 2)


def test_reset_of_an_empty_bitmap_changes_nothing(make_bitmap):
    p = Pair(make_bitmap, L3)
    p.reset(0, L3)
    p.reset(L1, L1)


@pytest.mark.parametrize("ops", [
    [("set", L1 - 1, L1 + 2), ("reset", 0, L1 * 5)],
    [("set", 3 * L1, L1), ("reset", 3 * L1, L1)],
    [("set", L2, L1), ("reset", L2, L1)],
    [("set", L2, L3 - L2 + 1), ("reset", L2, L1)],
    [("set", L3 - 1, 3), ("reset", L3 - 1, L1)],
    [("set", 0, L3 * 2), ("reset", L3, L1), ("reset", L3 / 2, L3)],
])
def test_reset_clears_exactly_the_range(make_bitmap, ops):
    p = Pair(make_bitmap, L3 * 2)
    for op, start, count in ops:
        getattr(p, op)(int(start), int(count))


def test_reset_all_empties_every_level(make_bitmap):
    p = Pair(make_bitmap, L3 * 2)
    for start, count in ((L1 - 1, L1 + 2), (0, L1 * 3), (L2, L1),
                         (L2, L3 - L2 + 1), (L3 - 1, 3), (0, L3 * 2),
                         (L3 // 2, L3)):
        p.set(start, count)
        p.reset_all()
        assert p.hb.next_dirty(0) is None


def test_granularity_counts_whole_granules(make_bitmap):
    hb = make_bitmap(L1, 1)
    hb.set(0, 1)
    assert hb.count() == 2
    hb.set(2, 1)
    assert hb.count() == 4
    hb.set(0, 3)
    assert hb.count() == 4
    hb.reset(0, 2)
    assert hb.count() == 2
    assert hb.granularity == 1


def test_misaligned_reset_is_refused_not_aborted(make_bitmap):
    hb = make_bitmap(L1, 2)
    with pytest.raises(ValueError, match="aligned"):
        hb.reset(1, 4)
    with pytest.raises(ValueError, match="aligned"):
        hb.reset(0, 3)
    hb.set(L1 - 4, 4)
    hb.reset(L1 - 4, 4)                # ends at the bitmap's end: allowed
    assert hb.empty()


def test_out_of_range_arguments_raise(make_bitmap):
    hb = make_bitmap(100)
    with pytest.raises(ValueError):
        hb.set(99, 2)
    with pytest.raises(IndexError):
        hb.get(100)
    with pytest.raises(ValueError):
        hb.status(0, 101)
    with pytest.raises(ValueError):
        hb.next_dirty_area(0, 10, 0)
    with pytest.raises(ValueError):
        make_bitmap(10, 64)
    with pytest.raises(ValueError):
        make_bitmap(-1)


# -- truncate -----------------------------------------------------------------

@pytest.mark.parametrize("size,diff,gran", [
    (L2, 0, 0),                        # nop
    (L2 - 1, 1, 1),                    # grow, negligible
    (L2, -1, 1),                       # shrink, negligible
    (L2 - 2, 1, 1),                    # grow, tiny (crosses a granule)
    (L2 - 1, -1, 1),                   # shrink, tiny
    (L2 + 1, 4, 0),                    # grow, small
    (L2, -4, 0),                       # shrink, small
    (L2 - 1, 4, 0),                    # grow, medium (crosses a word)
    (L2 + 1, -4, 0),                   # shrink, medium
    (L2, 8 * 8, 0),                    # grow, large
    (L2, -8 * 8, 0),                   # shrink, large
])
def test_truncate_keeps_the_boundary_bits(make_bitmap, size, diff, gran):
    p = Pair(make_bitmap, size, gran)
    p.set(0, 1)
    if diff < 0:
        p.set(size + diff - 1, 1)      # last bit of the shrunk map
        p.set(size + diff, 1)          # first bit truncated away
    p.set(size - 1, 1)
    p.truncate(size + diff)
    new = min(size, size + diff)
    assert p.hb.get(0) and p.hb.get(new - 1)
    if gran:
        assert p.hb.count() == 2 << gran


# -- searching ----------------------------------------------------------------

def _check_next(p: Pair, start: int, count: int = INT64_MAX) -> None:
    nz = p.hb.next_zero(start, count)
    assert (-1 if nz is None else nz) == p.model.next_zero(start, count)
    nd = p.hb.next_dirty(start, count)
    assert (-1 if nd is None else nd) == p.model.next_dirty(start, count)


@pytest.mark.parametrize("gran", [0, 4])
def test_next_dirty_and_next_zero(make_bitmap, gran):
    p = Pair(make_bitmap, L3, gran)
    probes = [(0, INT64_MAX), (L3 - 1, INT64_MAX), (0, 1), (L3 - 1, 1)]
    for s, c in probes:
        _check_next(p, s, c)
    p.set(L2, 1)
    for s, c in probes + [(L2 - 1, INT64_MAX), (L2, INT64_MAX), (L2 + 1, 1),
                          (0, L2), (L2 - 1, 1), (L2 - 1, 2), (L2, 1)]:
        _check_next(p, s, c)
    p.set(L2 + 5, L1)
    for s, c in [(0, INT64_MAX), (L2 - L1, INT64_MAX), (L2 + 1, INT64_MAX),
                 (L2 + 2, INT64_MAX), (L2 + 5, INT64_MAX), (L2 + L1, INT64_MAX),
                 (L2 - 2, L1), (L2, 4), (L2, 6), (L2 + 1, 3), (L2 + 4, L1),
                 (L2 + 5, L1), (L2 + 5 + L1 - 1, 1), (L2 + 5 + L1, 1)]:
        _check_next(p, s, c)
    p.set(L2 * 2, L3 - L2 * 2)
    for s, c in [(L2 * 2 - L1, INT64_MAX), (L2 * 2 - 1, INT64_MAX),
                 (L2 * 2, INT64_MAX), (L3 - 1, INT64_MAX),
                 (L2 * 2 - L1, L1 + 1), (L2 * 2, L2)]:
        _check_next(p, s, c)
    p.set(0, L3)
    _check_next(p, 0)


def test_next_zero_after_truncate_grow(make_bitmap):
    p = Pair(make_bitmap, L1)
    p.truncate(L1 * 2)
    p.set(0, L1)
    assert p.hb.next_zero(0) == L1
    assert p.hb.next_dirty(L1) is None


def _check_area(p: Pair, start: int, count: int, max_count: int = INT64_MAX):
    end = INT64_MAX if count == INT64_MAX else start + count
    got = p.hb.next_dirty_area(start, end, max_count)
    assert got == p.model.next_dirty_area(start, end, max_count), \
        (start, count, max_count)


@pytest.mark.parametrize("gran", [0, 1, 4])
def test_next_dirty_area_windows(make_bitmap, gran):
    p = Pair(make_bitmap, L3, gran)
    M = INT64_MAX
    for args in [(0, M), (0, 1), (L3 - 1, 1), (0, M, 1)]:
        _check_area(p, *args)
    p.set(L2, 1)
    for args in [(0, 1), (0, L2), (0, M), (L2 - 1, M), (L2 - 1, 1), (L2 - 1, 2),
                 (L2 - 1, 3), (L2, M), (L2, 1), (L2 + 1, 1), (0, M, 1),
                 (L2 - 1, 2, 1)]:
        _check_area(p, *args)
    p.set(L2 + 5, L1)
    for args in [(0, M), (L2 - 2, 8), (L2 + 1, 5), (L2 + 1, 3), (L2 + 4, L1),
                 (L2 + 5, L1), (L2 + 7, L1), (L2 + L1, L1), (L2, 0), (L2 + 1, 0),
                 (L2 + 3, M, 3), (L2 + 3, 7, 10)]:
        _check_area(p, *args)
    p.set(L2 * 2, L3 - L2 * 2)
    for args in [(0, M), (L2, M), (L2 + 1, M), (L2 + 5 + L1 - 1, M),
                 (L2 + 5 + L1, 5), (L2 * 2 - L1, L1 + 1), (L2 * 2, L2),
                 (L2 * 2 + 1, M, 5), (L2 * 2 + 1, 10, 5), (L2 * 2 + 1, 2, 5)]:
        _check_area(p, *args)
    p.set(0, L3)
    _check_area(p, 0, M)


def test_next_dirty_area_after_truncate_grow(make_bitmap):
    p = Pair(make_bitmap, L1)
    p.truncate(L1 * 2)
    p.set(L1, L1)
    _check_area(p, 0, INT64_MAX)
    assert p.hb.next_dirty_area(0, INT64_MAX) == (L1, L1)


def test_dirty_areas_cover_every_run_and_clip_to_the_window(make_bitmap):
    hb = make_bitmap(10_000, 2)
    hb.set(0, 3)
    hb.set(100, 50)
    hb.set(9_998, 2)
    assert list(hb.dirty_areas()) == [(0, 4), (100, 52), (9_996, 4)]
    assert list(hb.dirty_areas(101, 9_997)) == [(101, 51), (9_996, 1)]


def test_status_reports_runs(make_bitmap):
    p = Pair(make_bitmap, L2, 0)
    p.set(10, 20)
    for start, count in ((0, L2), (10, 5), (10, L2 - 10), (29, 2), (30, 100)):
        assert p.hb.status(start, count) == p.model.status(start, count)


# -- merge --------------------------------------------------------------------

@pytest.mark.parametrize("ga,gb", [(0, 0), (0, 3), (4, 1)])
def test_merge_is_a_bitwise_or(make_bitmap, ga, gb):
    a, b = Pair(make_bitmap, L3, ga), Pair(make_bitmap, L3, gb)
    a.set(5, 100)
    b.set(L2 - 3, 7)
    b.set(L3 - 10, 10)
    a.hb.merge(b.hb)
    a.model.merge_from(b.model)
    a.check()
    assert b.hb.count() == b.model.count()   # the source is unchanged


def test_merge_of_different_sizes_is_refused(make_bitmap):
    with pytest.raises(ValueError):
        make_bitmap(L1).merge(make_bitmap(L1 + 1))


# -- serialization ------------------------------------------------------------

def test_serialization_align(make_bitmap):
    hb = make_bitmap(L3 * 2, 3)
    assert hb.is_serializable()
    assert hb.serialization_align() == 64 << 3


@pytest.mark.parametrize("pos", [0, 1, L1 - 1, L1, L2 - 1, L2, L2 + 1, L3 - 1])
def test_serialize_whole_bitmap_round_trip(make_bitmap, pos):
    for count in (0, 1, L1 - 1, L1, L2 - 1, L2, L2 + 1, L3 - 1):
        count = min(count, L3 - pos)
        p = Pair(make_bitmap, L3)
        if count:
            p.set(pos, count)
        data = p.hb.serialize(0, L3)
        assert data == p.model.serialize(0, L3)
        p.hb.reset_all()
        p.hb.deserialize(data, 0, L3, finish=True)
        p.check()


def test_serialize_part_in_fixed_chunks(make_bitmap):
    hb = make_bitmap(L3)
    positions = [0, 1, L1 - 1, L1, L2 - 1, L2, L2 + 1, L3 - 1]
    for pos in positions:
        hb.set(pos, 1)
    chunk = L2
    seen = []
    for start in range(0, L3, chunk):
        value = int.from_bytes(hb.serialize(start, chunk), "little")
        seen += [start + i for i in range(chunk) if value >> i & 1]
    assert seen == positions


def test_deserialize_zeroes_clears_granules(make_bitmap):
    hb = make_bitmap(L3)
    min_l1 = max(L1, 64)
    positions = [0, min_l1, L2, L3 - min_l1]
    for pos in positions:
        hb.set(pos, L1)
    for i, pos in enumerate(positions):
        hb.deserialize_zeroes(pos, min_l1, finish=True)
        nxt = next(iter(hb.iter_dirty(0)), None)
        assert nxt == (positions[i + 1] if i + 1 < len(positions) else None)


def test_deserialize_ones_marks_whole_words(make_bitmap):
    p = Pair(make_bitmap, L2 * 2)
    p.hb.deserialize_ones(L2, L2, finish=True)
    p.model.deserialize_fill(L2, L2, True)
    p.check()


@pytest.mark.parametrize("gran", range(0, 21))
def test_serialization_round_trips_at_every_granularity(make_bitmap, gran):
    """Chunked serialize on one bitmap, chunked deserialize on another."""
    rng = random.Random(gran)
    size = (L2 << gran) + rng.randrange(1 << gran)   # a partial last granule
    src = make_bitmap(size, gran)
    for _ in range(40):
        start = rng.randrange(size)
        src.set(start, min(rng.randrange(1, 64 << gran), size - start))
    align = src.serialization_align()
    chunk = align * rng.choice([1, 3, 8])
    dst = make_bitmap(size, gran)
    for start in range(0, size, chunk):
        count = min(chunk, size - start)
        dst.deserialize(src.serialize(start, count), start, count, finish=False)
    dst.deserialize_finish()
    assert dst.sha256() == src.sha256()
    assert dst.count() == src.count()
    assert list(dst.iter_dirty()) == list(src.iter_dirty())


def test_misaligned_chunk_is_refused(make_bitmap):
    hb = make_bitmap(L3, 2)
    with pytest.raises(ValueError, match="aligned"):
        hb.serialize(64, L2)
    with pytest.raises(ValueError, match="aligned"):
        hb.serialize(0, 100)


def test_sha256_is_of_the_bottom_level(make_bitmap):
    p = Pair(make_bitmap, 1000, 0)
    empty = p.hb.sha256()
    p.set(999, 1)
    assert p.hb.sha256() != empty
    p.reset(999, 1)
    assert p.hb.sha256() == empty


# -- ownership ----------------------------------------------------------------

def test_closed_bitmap_refuses_use_and_close_is_idempotent(lib):
    with HBitmap(100, 0, lib) as hb:
        hb.set(1, 1)
    with pytest.raises(ValueError, match="closed"):
        hb.count()
    hb.close()
    assert repr(hb) == "<HBitmap closed>"


def test_wrong_handle_type_is_a_type_error_not_a_crash(lib):
    with pytest.raises(ctypes.ArgumentError):
        lib.hbitmap_count(ctypes.c_void_p(1234))


# -- the region walk (x-debug-block-dirty-bitmap-regions is built on it) -----

def test_region_walk_at_granularity_above_zero(make_bitmap):
    hb = make_bitmap(1 << 20, 12)                # 4 KiB granules
    hb.set(5000, 1)                              # granule 1
    hb.set(8192, 4096)                           # granule 2: joins granule 1
    hb.set(40960, 10)                            # granule 10
    assert list(hb.dirty_areas()) == [(4096, 8192), (40960, 4096)]


def test_region_walk_clips_to_window_edges(make_bitmap):
    hb = make_bitmap(1 << 20, 12)
    hb.set(16384, 4 * 4096)                      # [16384, 32768)
    assert list(hb.dirty_areas(20480, 24576)) == [(20480, 4096)]
    # windows that end where the region starts, or start where it ends
    assert list(hb.dirty_areas(0, 16384)) == []
    assert list(hb.dirty_areas(32768, 1 << 20)) == []
    # one granule either side of the edges
    assert list(hb.dirty_areas(12288, 20480)) == [(16384, 4096)]
    assert list(hb.dirty_areas(28672, 36864)) == [(28672, 4096)]


def test_region_walk_last_partial_granule(make_bitmap):
    size = (1 << 20) + 100                       # 100 bytes of a last granule
    hb = make_bitmap(size, 12)
    hb.set(size - 1, 1)
    assert list(hb.dirty_areas()) == [(1 << 20, 100)]
    hb.set((1 << 20) - 4096, 1)
    assert list(hb.dirty_areas()) == [((1 << 20) - 4096, 4196)]
    assert hb.count() == 2 * 4096                # count is in whole granules


def test_region_walk_respects_max_count(make_bitmap):
    hb = make_bitmap(1 << 16)
    hb.set(100, 1000)
    assert list(hb.dirty_areas(0, 1 << 16, 300)) == \
        [(100, 300), (400, 300), (700, 300), (1000, 100)]
