"""``pyqemu demo``: the main job.

Builds both trees, then migrates a running ``-machine pc`` VM (TCG) that
carries dirty bitmaps, and prints a short report: the bitmaps, their
sha256 on both sides, total time and downtime.
"""

from __future__ import annotations

import argparse
import time

from . import build as buildmod
from . import migration, source
from .log import info
from .paths import Layout
from .vm import VM, Bitmap, Disk

GiB = 1 << 30


def demo_disks(size: int) -> list[Disk]:
    return [Disk("disk0", size, bitmaps=(
        Bitmap("bm-64k", 64 << 10),
        Bitmap("bm-1m", 1 << 20),
        Bitmap("bm-4k-disabled", 4 << 10, disabled=True),
    ))]


def dirty(vm: VM, size: int) -> None:
    """A spread of writes so that every bitmap has several dirty regions."""
    step = size // 16
    for i in range(16):
        vm.write("disk0", i * step + (i * 4096) % step, 64 << 10)


def migrate_once(flavour: str, size: int, caps: dict[str, bool],
                 params: dict, timeout: float, label: str) -> dict:
    work = Layout.default().work() / f"demo-{flavour}"
    work.mkdir(parents=True, exist_ok=True)
    disks = demo_disks(size)
    sock = work / "migrate.sock"
    sock.unlink(missing_ok=True)
    with VM(f"src-{flavour}", disks, flavour, work) as src, \
            VM(f"dst-{flavour}", disks, flavour, work, incoming=True) as dst:
        src.add_bitmaps()
        for d, b in src.named_bitmaps():
            if b.disabled:
                src.cmd("block-dirty-bitmap-enable", node=d.node, name=b.name)
        dirty(src, size)
        for d, b in src.named_bitmaps():
            if b.disabled:
                src.cmd("block-dirty-bitmap-disable", node=d.node, name=b.name)
        before = src.all_sha256()
        counts = {k: v["count"] for k, v in src.bitmaps().items()}
        grans = {k: v["granularity"] for k, v in src.bitmaps().items()}
        t0 = time.monotonic()
        res = migration.run(src, dst, f"unix:{sock}", caps, params, timeout,
                            on_poll=migration.progress_printer(label))
        wall = time.monotonic() - t0
        after = dst.all_sha256() if res.converged else {}
    return {"result": res, "before": before, "after": after, "counts": counts,
            "granularities": grans, "wall": wall}


def report(title: str, run: dict) -> None:
    res: migration.MigrationResult = run["result"]
    print(f"\n== {title}")
    print(f"   status {res.status}, total {res.total_ms} ms, downtime "
          f"{res.downtime_ms} ms (wall {run['wall']:.1f} s)")
    if res.error:
        print(f"   {res.error}")
    print(f"   {'node/bitmap':<24} {'gran':>7} {'dirty':>12}  "
          f"{'sha256 source':<16}  {'sha256 dest':<16}  equal")
    for key, sha in run["before"].items():
        dst = run["after"].get(key)
        name = "/".join(key)
        print(f"   {name:<24} {run['granularities'][key]:>7} "
              f"{run['counts'][key]:>12}  {sha[:16]}  "
              f"{(dst or '-')[:16]:<16}  {'yes' if dst == sha else 'NO'}")


def main(args: argparse.Namespace) -> int:
    buildmod.build()
    origin = source.read_origin(Layout.default())
    info("QEMU source: " + (origin.describe() if origin else "?"))
    caps = {"dirty-bitmaps": True, "events": True}
    params = {"max-bandwidth": 100 << 20, "downtime-limit": 300}
    run = migrate_once("patched", 64 * GiB, caps, params, 60,
                       "patched 64 GiB")
    report("patched QEMU, 64 GiB disk, 3 bitmaps, dirty-bitmaps capability",
           run)
    ok = run["result"].converged and run["before"] == run["after"]
    print("\nresult:", "bitmaps migrated intact" if ok else "FAILED")
    return 0 if ok else 1
