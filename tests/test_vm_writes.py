"""The VM's write helpers, which nearly every migration test uses to
dirty bitmaps.  HMP qemu-io prints its result on QEMU's stdout, not in
the HMP reply, so a helper that trusted the reply would let a refused
write pass unnoticed, and with it every test built on its bits."""

from __future__ import annotations

import pytest

from pyqemu.machine.vm import VM, Bitmap, Disk
from pyqemu.util.units import GiB, KiB, TiB


def _vm(layout, workdir) -> VM:
    # disk0 has a guest device, which refuses a second writer on its node
    return VM(layout, "w", [
        Disk("disk0", TiB, bitmaps=(Bitmap("bm", 64 * KiB),),
             device="ide-hd,bus=ide.0,unit=1"),
        Disk("disk1", TiB, bitmaps=(Bitmap("bm", 64 * KiB),))],
        "patched", workdir)


def test_writes_set_the_bits_they_claim(layout, workdir):
    """Through a guest device or on a bare node, write and dirty set
    exactly their ranges (dirty in 1 GiB pieces)."""
    with _vm(layout, workdir) as vm:
        vm.add_bitmaps()
        vm.write("disk0", 0, 64 * KiB)
        vm.dirty("disk0", 512 * GiB, 2 * GiB + 64 * KiB)
        vm.write("disk1", 4 * GiB, 128 * KiB)
        counts = {node: b["count"] for (node, _), b in vm.bitmaps().items()}
        assert counts == {"disk0": 64 * KiB + 2 * GiB + 64 * KiB,
                          "disk1": 128 * KiB}


@pytest.mark.parametrize("node,offset", [("disk1", 2 * TiB),   # I/O error
                                         ("disk0", 2 * TiB),
                                         ("nosuch", 0)])      # HMP error
def test_a_refused_write_raises(layout, workdir, node, offset):
    with _vm(layout, workdir) as vm:
        with pytest.raises(RuntimeError, match="qemu-io write"):
            vm.write(node, offset, 4 * KiB)
