"""Seeds: real migration streams captured from the patched QEMU with
``migrate`` to a file (live and not, one and two nodes)."""

from __future__ import annotations

from pathlib import Path

from ...machine import migration
from ...machine.vm import VM, Bitmap, Disk
from ...paths import Layout
from ...util.units import GiB, MiB
from .stream import strip_idle_ram_sections

#: Destination block nodes and RAM: the seeds are captured with the same.
NODES = (("disk0", GiB), ("disk1", 64 * MiB))
RAM_MB = 1


def disks(bitmaps: dict[str, tuple[Bitmap, ...]] | None = None) -> list[Disk]:
    """The fuzzing VMs' block nodes, with *bitmaps* on them."""
    return [Disk(name, size, bitmaps=(bitmaps or {}).get(name, ()))
            for name, size in NODES]


def capture(layout: Layout, workdir: Path) -> list[Path]:
    """Real streams from the patched QEMU, written with migrate to a file."""
    cases: dict[str, tuple[bool, dict[str, tuple[Bitmap, ...]]]] = {
        "live-one-node": (True, {"disk0": (Bitmap("b0", 65536),
                                            Bitmap("b1", 4096,
                                                   disabled=True))}),
        "stopcopy-two-nodes": (False, {"disk0": (Bitmap("b0", 65536),),
                                        "disk1": (Bitmap("c0", 512),
                                                  Bitmap("c1", MiB))}),
    }
    out = []
    for name, (live, bitmaps) in cases.items():
        path = workdir / f"seed-{name}.bin"
        with VM(layout, f"seed-{name}", disks(bitmaps), "patched", workdir,
                machine="none", memory_mb=RAM_MB) as vm:
            vm.add_bitmaps()
            for i in range(24):
                vm.write("disk0", i * 41 * MiB, 64 * 1024)
                vm.write("disk1", i * 2 * MiB + 4096, 512)
            caps = {"dirty-bitmaps": True, "dirty-bitmaps-live": live}
            migration.set_capabilities(vm, caps)
            # Switch over at once rather than after thousands of empty RAM
            # iterations that would bloat the seed (the bandwidth measured on
            # an idle source is near zero, so is the switchover threshold).
            migration.set_parameters(vm, {"avail-switchover-bandwidth": GiB})
            vm.cmd("migrate", uri=f"file:{path}")
            migration.wait(vm, ("completed",), 60)
        path.write_bytes(strip_idle_ram_sections(path.read_bytes()))
        out.append(path)
    return out
