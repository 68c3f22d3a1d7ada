"""Bitmap inspection (the series' x-debug-block-dirty-bitmap-regions and
HMP info dirty-bitmap-regions) against the ctypes HBitmap fed the same
writes, and the regions form of the migration test."""

from __future__ import annotations

import random

import pytest
from qemu.qmp import ExecuteError

from pyqemu.machine import migration
from pyqemu.machine.vm import VM, Bitmap, Disk, Pair
from pyqemu.shim.hbitmap import HBitmap
from pyqemu.util.units import GiB, KiB, MiB, TiB

LIVE = {"dirty-bitmaps": True, "dirty-bitmaps-live": True, "events": True}


@pytest.mark.parametrize("granularity", [4 * KiB, 64 * KiB, 2 * MiB])
def test_regions_match_the_hbitmap_model(layout, workdir, patched_lib,
                                        granularity):
    """Random writes on a disk whose size is not a multiple of the
    granularity; QEMU's regions equal the model's dirty areas, in every
    window too."""
    size = 3 * GiB + 5 * KiB
    rng = random.Random(granularity)
    writes = [(rng.randrange(0, size - 1), rng.randrange(1, 256 * KiB))
              for _ in range(120)] + [(size - 1, 1), (0, 1)]
    disks = [Disk("disk0", size, bitmaps=(Bitmap("bm", granularity),))]
    with VM(layout, "vm", disks, "patched", workdir) as vm, \
            HBitmap(size, granularity.bit_length() - 1, patched_lib) as model:
        vm.add_bitmaps()
        for off, n in writes:
            n = min(n, size - off)
            vm.write("disk0", off, n)
            model.set(off, n)
        assert vm.regions("disk0", "bm") == list(model.dirty_areas())
        assert vm.regions("disk0", "bm", max_regions=7) == \
            list(model.dirty_areas())
        info = vm.cmd("x-debug-block-dirty-bitmap-regions", node="disk0",
                      name="bm", **{"max-regions": 1})
        assert info["count"] == model.count()
        assert info["granularity"] == granularity
        for _ in range(20):
            start = rng.randrange(0, size // granularity) * granularity
            length = rng.randrange(1, (size - start) // granularity + 2) * \
                granularity
            length = min(length, size - start)
            assert vm.regions("disk0", "bm", start, length) == \
                list(model.dirty_areas(start, start + length))


def test_regions_errors_change_nothing(layout, workdir):
    disks = [Disk("disk0", GiB, bitmaps=(Bitmap("bm", 64 * KiB),))]
    with VM(layout, "vm", disks, "patched", workdir) as vm:
        vm.add_bitmaps()
        vm.write("disk0", 0, 4 * KiB)
        before = vm.all_regions()
        for args, message in [
            ({"node": "x", "name": "bm"}, "Node 'x' not found"),
            ({"node": "disk0", "name": "x"}, "Dirty bitmap 'x' not found"),
            ({"node": "disk0", "name": "bm", "offset": GiB}, "is not before"),
            ({"node": "disk0", "name": "bm", "length": 0}, "must be positive"),
            ({"node": "disk0", "name": "bm", "offset": 100}, "multiples"),
            ({"node": "disk0", "name": "bm", "offset": 64 * KiB,
              "length": GiB}, "ends past the end"),
            ({"node": "disk0", "name": "bm", "max-regions": 0}, "between 1"),
            ({"node": "disk0", "name": "bm", "max-regions": 1 << 20},
             "between 1"),
        ]:
            with pytest.raises(ExecuteError, match=message):
                vm.cmd("x-debug-block-dirty-bitmap-regions", **args)
        assert vm.all_regions() == before
        hmp = vm.hmp("info dirty-bitmap-regions disk0 bm")
        assert hmp.splitlines()[1].split() == ["0x0000000000000000", "+0x10000"]


def test_regions_equal_after_live_migration(layout, workdir):
    size = 2 * TiB
    disks = [Disk("disk0", size, bitmaps=(
        Bitmap("bm-64k", 64 * KiB), Bitmap("bm-1m", MiB),
        Bitmap("bm-16k", 16 * KiB)))]
    rng = random.Random(7)
    with Pair(layout, disks, workdir) as p:
        p.src.add_bitmaps()
        for _ in range(200):
            p.src.write("disk0", rng.randrange(0, size - MiB), rng.randrange(
                1, MiB))
        before = p.src.all_regions()
        res = migration.run(p.src, p.dst, p.uri, LIVE, {"downtime-limit": 300},
                            timeout=60)
        assert res.converged, res.error
        migration.wait_destination_running(p.dst)
        assert p.dst.all_regions() == before
        assert all(len(r) > 100 for r in before.values())
