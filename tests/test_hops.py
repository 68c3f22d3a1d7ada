"""End to end: :class:`pyqemu.machine.hops.Hops` moves one guest through a
chain of QEMUs (A -> B -> A'), its bitmaps with it, and a hop that does
not complete leaves the guest where it was.  Benchmarks build on this to
migrate a guest several times per boot."""

from __future__ import annotations

from pyqemu.machine.hops import Hops
from pyqemu.machine.vm import VM, Bitmap, Disk
from pyqemu.util.units import GiB, KiB

LIVE = {"dirty-bitmaps": True, "dirty-bitmaps-live": True}
PARAMS = {"max-bandwidth": 1 << 30, "downtime-limit": 300}


def test_bitmaps_follow_the_guest_across_hops(layout, workdir):
    disks = [Disk("disk0", 64 * GiB,
                  bitmaps=(Bitmap("bm-4k", 4 * KiB),
                           Bitmap("bm-64k", 64 * KiB)))]
    with Hops(VM(layout, "hop0", disks, "patched", workdir), workdir) as h:
        h.vm.add_bitmaps()
        h.vm.write("disk0", 5 * GiB, 64 * KiB)
        before = h.vm.all_sha256()
        seen = [h.vm]
        for n in range(1, 4):
            res = h.migrate(LIVE, PARAMS, 60)
            assert res.converged, res.error
            assert h.vm.name == f"hop{n}"
            assert h.vm.all_sha256() == before
            # the one left behind is gone, and was checked on the way
            assert not seen[-1].is_running()
            assert seen[-1].exit is not None
            seen.append(h.vm)
            h.vm.write("disk0", n * GiB, 4 * KiB)
            before = h.vm.all_sha256()
        # a hop that does not complete (it waits at pre-switchover until
        # the timeout cancels it): the guest stays, with its bitmaps
        res = h.migrate(dict(LIVE, **{"pause-before-switchover": True}),
                        PARAMS, 2)
        assert res.status == "timeout"
        assert h.vm is seen[-1] and h.vm.is_running()
        assert h.vm.all_sha256() == before
        res = h.migrate(dict(LIVE, **{"pause-before-switchover": False}),
                        PARAMS, 60)
        assert res.converged, res.error
        assert h.vm.name == "hop5"
        assert h.vm.all_sha256() == before
