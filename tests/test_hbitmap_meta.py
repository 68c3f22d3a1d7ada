"""Meta bitmaps (patched build): every change of a bitmap marks the meta
bit of its chunk, and operations that change nothing mark nothing.

Random operation sequences are applied to the C bitmap and to the Python
model; after each one, the chunks whose bits differ in the model must all
be marked in the C meta bitmap.  This is the invariant live migration
relies on: a chunk that changed after it was sent is sent again.
"""

from __future__ import annotations

import pytest
from hbitmap_model import ModelHBitmap
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pyqemu.shim import ffi
from pyqemu.shim.hbitmap import HBitmap


def changed_chunks(before: int, after: int, g: int, chunk: int) -> set[int]:
    diff, bit, out = before ^ after, 0, set()
    while diff:
        if diff & 1:
            out.add((bit << g) // chunk)
        diff >>= 1
        bit += 1
    return out


def marked_chunks(meta: HBitmap, chunk: int) -> set[int]:
    return {off // chunk for off, n in meta.dirty_areas()
            for off in range(off, off + n, chunk)}


op = st.tuples(st.sampled_from(["set", "reset", "reset_all", "merge",
                                "deserialize_zeroes"]),
               st.integers(0, 4095), st.integers(0, 600))


# patched_lib is the same Library object for every example
@settings(max_examples=200, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(gran=st.integers(0, 3), chunk_log=st.integers(6, 9),
       ops=st.lists(op, min_size=1, max_size=25))
def test_meta_marks_every_changed_chunk(patched_lib, gran, chunk_log, ops):
    size = 4096
    chunk = max(1 << chunk_log, 1 << gran)
    with HBitmap(size, gran, patched_lib) as hb:
        meta = hb.create_meta(chunk)
        model = ModelHBitmap(size, gran)
        for name, start, count in ops:
            count = min(count, size - start)
            before = model.bits
            meta.reset_all()
            if name == "set":
                hb.set(start, count)
                model.set(start, count)
            elif name == "reset":
                g = 1 << gran
                start -= start % g
                count = min(count - count % g, size - start)
                hb.reset(start, count)
                model.reset(start, count)
            elif name == "reset_all":
                hb.reset_all()
                model.reset_all()
            elif name == "merge":
                with HBitmap(size, gran, patched_lib) as other:
                    other.set(start, count)
                    om = ModelHBitmap(size, gran)
                    om.set(start, count)
                    hb.merge(other)
                    model.merge_from(om)
            else:
                align = 64 << gran
                start -= start % align
                count = min(align, size - start)
                hb.deserialize_zeroes(start, count, finish=True)
                model.deserialize_fill(start, count, False)
            want = changed_chunks(before, model.bits, gran, chunk)
            got = marked_chunks(meta, chunk)
            assert want <= got, (name, start, count, want - got)
            if name in ("set", "reset", "reset_all") and not want:
                assert not got, f"{name} changed nothing but marked {got}"


def test_meta_on_stock_build_is_a_clear_error(layout):
    lib = ffi.library(layout, "stock")
    with pytest.raises(ffi.MissingSymbolError, match="hbitmap_create_meta"):
        _ = lib.hbitmap_create_meta


def test_meta_bitmap_is_owned_by_its_bitmap(patched_lib):
    hb = HBitmap(1 << 20, 4, patched_lib)
    meta = hb.create_meta(1 << 16)
    with pytest.raises(ValueError, match="already"):
        hb.create_meta(1 << 16)
    hb.set(5 << 16, 1)
    assert list(meta.dirty_areas()) == [(5 << 16, 1 << 16)]
    meta.close()
    meta2 = hb.create_meta(1 << 12)      # can be created again
    hb.close()                           # frees the meta bitmap first
    with pytest.raises(ValueError, match="closed"):
        meta2.count()
    with pytest.raises(ValueError, match="power of two"):
        HBitmap(100, 0, patched_lib).create_meta(3)
