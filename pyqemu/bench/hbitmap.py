"""``pyqemu bench hbitmap``: hbitmap costs, stock vs patched.

Two measurements, both with plugin/hbitmap-bench (QEMU's own hbitmap.c
linked into a small C program, so no Python overhead is measured):

* instructions per single-item ``hbitmap_set()`` with and without a meta
  bitmap, counted by callgrind (repeatable whatever the machine does);
* GiB/s of serialization and deserialization of a 128 MiB bitmap, each
  next to a ``memcpy`` of the same size measured in the same run.
"""

from __future__ import annotations

import json
import re
import tempfile
from pathlib import Path

from ..build import deps
from ..errors import CommandError
from ..paths import Layout
from ..util.proc import run
from ..util.results import save
from ..util.table import markdown_table

SET_CALLS = 1_000_000


def bench_binary(layout: Layout, flavour: str) -> Path:
    return layout.project_build(flavour) / "plugin" / "hbitmap-bench"


def instructions_per_set(layout: Layout, flavour: str, pattern: str,
                         meta: bool) -> float | None:
    """callgrind's count of instructions inside hbitmap_set(), per call
    (None if this build cannot do it: stock has no meta bitmaps)."""
    with tempfile.TemporaryDirectory(prefix="pq-cg-") as tmp:
        out = Path(tmp) / "cg.out"
        try:
            run(["valgrind", "--tool=callgrind", "--toggle-collect=hbitmap_set",
                 f"--callgrind-out-file={out}", bench_binary(layout, flavour),
                 "set", pattern, str(int(meta)), str(SET_CALLS)],
                what=f"valgrind on hbitmap-bench ({flavour})")
        except CommandError:
            if meta and flavour == "stock":
                return None
            raise
        m = re.search(r"^summary: (\d+)", out.read_text(), re.M)
        return int(m.group(1)) / SET_CALLS if m else None


def serial_speeds(layout: Layout, flavour: str, mib: int, chunk_kib: int,
                  ops: str | None = None) -> dict[str, dict]:
    cmd: list[str | Path] = [bench_binary(layout, flavour), "serial", str(mib),
                             str(chunk_kib)]
    if ops:
        cmd.append(ops)
    res = run(cmd, what=f"hbitmap-bench serial ({flavour})")
    rows = [json.loads(line) for line in res.stdout.splitlines() if line]
    return {r["op"]: r for r in rows}


def meta_overhead(layout: Layout) -> tuple[str, list[dict]]:
    rows, data = [], []
    for pattern, what in (("new", "sets a clear bit"),
                          ("seq", "sets consecutive granules"),
                          ("same", "re-sets a set bit")):
        stock = instructions_per_set(layout, "stock", pattern, False)
        plain = instructions_per_set(layout, "patched", pattern, False)
        meta = instructions_per_set(layout, "patched", pattern, True)
        ratio = meta / plain - 1 if meta and plain else None
        data.append({"pattern": pattern, "stock": stock, "patched": plain,
                     "patched_meta": meta, "meta_overhead": ratio})

        def num(x: float | None) -> str:
            return "n/a" if x is None else f"{x:.1f}"

        rows.append((f"{pattern} ({what})", num(stock), num(plain), num(meta),
                     "n/a" if ratio is None else f"{ratio * 100:+.1f} %"))
    md = markdown_table(("hbitmap_set pattern", "stock instr/call",
                         "patched instr/call", "patched + meta instr/call",
                         "meta overhead"), rows)
    return md, data


def serial_table(layout: Layout, quick: bool) -> tuple[str, list[dict]]:
    mib = 32 if quick else 128
    rows, data = [], []
    for flavour in ("stock", "patched"):
        # Stock finishes the whole bitmap on every finish=true chunk: that
        # is quadratic, so its chunked run uses a small bitmap.
        r = serial_speeds(layout, flavour, mib, 1,
                          "memcpy,serialize_part,deserialize_part,"
                          "deserialize_finish")
        chunked = serial_speeds(layout, flavour, mib if flavour == "patched" else 1,
                                1, "memcpy,deserialize_chunked_nofinish,"
                                   "deserialize_chunked_finish")
        memcpy = r["memcpy"]["gib_per_s"]
        for op in ("serialize_part", "deserialize_part", "deserialize_finish"):
            v = r[op]
            rows.append((flavour, op, f"{v['gib_per_s']:.2f} GiB/s",
                         f"{v['seconds'] * 1e3:.1f} ms",
                         f"{v['gib_per_s'] / memcpy:.2f}x"))
            data.append({"flavour": flavour, "op": op, "mib": mib, **v,
                         "memcpy_gib_per_s": memcpy})
        c = chunked["deserialize_chunked_finish"]
        cm = chunked["memcpy"]["gib_per_s"]
        rows.append((flavour, f"deserialize, finish per 1 KiB chunk "
                              f"({c['mib']} MiB)",
                     f"{c['gib_per_s']:.2f} GiB/s",
                     f"{c['seconds'] * 1e3:.1f} ms",
                     f"{c['gib_per_s'] / cm:.2f}x"))
        nofinish = chunked["deserialize_chunked_nofinish"]
        finishing = c["seconds"] - nofinish["seconds"]
        one_pass = r["deserialize_part"]["seconds"] * c["mib"] / mib
        rows.append((flavour, "  of which finishing (vs the same chunks "
                              "unfinished)", "-",
                     f"{finishing * 1e3:.1f} ms",
                     f"{finishing / one_pass:.2f}x one deserialize pass"))
        rows.append((flavour, "COMPLETE (final finish) after that", "-",
                     f"{chunked['complete']['seconds'] * 1e3:.3f} ms", "-"))
        data.append({"flavour": flavour, "op": "chunked", **c,
                     "memcpy_gib_per_s": cm,
                     "finishing_seconds": finishing,
                     "finishing_vs_one_pass": finishing / one_pass,
                     "complete_seconds": chunked["complete"]["seconds"]})
        rows.append((flavour, f"memcpy ({mib} MiB)", f"{memcpy:.2f} GiB/s",
                     f"{r['memcpy']['seconds'] * 1e3:.1f} ms", "1.00x"))
    md = markdown_table(("build", "operation", "speed", "time", "vs memcpy"),
                        rows)
    return md, data


def main(layout: Layout, quick: bool = False) -> int:
    deps.require(deps.CALLGRIND)
    meta_md, meta_data = meta_overhead(layout)
    serial_md, serial_data = serial_table(layout, quick)
    md = ("hbitmap_set, 1 TiB bitmap at 64 KiB granularity, meta bitmap with "
          f"one bit per 1 KiB migration chunk, {SET_CALLS} calls "
          "(callgrind instruction counts):\n\n" + meta_md +
          "\n\nSerialization of a bitmap with every third bit set, best of 5"
          " (memcpy measured in the same run):\n\n" + serial_md)
    d = save(layout, "hbitmap", md, {"meta": meta_data, "serial": serial_data})
    print(md)
    print(f"\n(written to {d}/results.md and results.json)")
    return 0
