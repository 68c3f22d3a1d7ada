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
import shutil
import subprocess
import tempfile
from pathlib import Path

from .. import deps
from ..paths import Layout
from .report import markdown_table, save

SET_CALLS = 1_000_000


def bench_binary(flavour: str) -> Path:
    return Layout.default().project_build(flavour) / "plugin" / "hbitmap-bench"


def instructions_per_set(flavour: str, pattern: str, meta: bool) -> float | None:
    """callgrind's count of instructions inside hbitmap_set(), per call."""
    out = Path(tempfile.mkdtemp(prefix="pq-cg-")) / "cg.out"
    try:
        res = subprocess.run(
            ["valgrind", "--tool=callgrind", "--toggle-collect=hbitmap_set",
             f"--callgrind-out-file={out}", str(bench_binary(flavour)), "set",
             pattern, str(int(meta)), str(SET_CALLS)],
            capture_output=True, text=True, check=False)
        if res.returncode != 0 or "error" in res.stdout:
            return None
        m = re.search(r"^summary: (\d+)", out.read_text(), re.M)
        return int(m.group(1)) / SET_CALLS if m else None
    finally:
        shutil.rmtree(out.parent, ignore_errors=True)


def serial_speeds(flavour: str, mib: int, chunk_kib: int,
                  ops: str | None = None) -> dict[str, dict]:
    cmd = [str(bench_binary(flavour)), "serial", str(mib), str(chunk_kib)]
    if ops:
        cmd.append(ops)
    res = subprocess.run(cmd, capture_output=True, text=True, check=False)
    rows = [json.loads(line) for line in res.stdout.splitlines() if line]
    if res.returncode != 0:
        raise RuntimeError(f"hbitmap-bench failed: {res.stdout}{res.stderr}")
    return {r["op"]: r for r in rows}


def meta_overhead() -> tuple[str, list[dict]]:
    rows, data = [], []
    for pattern, what in (("new", "sets a clear bit"),
                          ("seq", "sets consecutive granules"),
                          ("same", "re-sets a set bit")):
        stock = instructions_per_set("stock", pattern, False)
        plain = instructions_per_set("patched", pattern, False)
        meta = instructions_per_set("patched", pattern, True)
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


def serial_table(quick: bool) -> tuple[str, list[dict]]:
    mib = 32 if quick else 128
    rows, data = [], []
    for flavour in ("stock", "patched"):
        # Stock finishes the whole bitmap on every finish=true chunk: that
        # is quadratic, so its chunked run uses a small bitmap.
        r = serial_speeds(flavour, mib, 1,
                          "memcpy,serialize_part,deserialize_part,"
                          "deserialize_finish")
        chunked = serial_speeds(flavour, mib if flavour == "patched" else 1,
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


def main(quick: bool = False) -> int:
    deps.ensure(deps.TEST)
    meta_md, meta_data = meta_overhead()
    serial_md, serial_data = serial_table(quick)
    md = ("hbitmap_set, 1 TiB bitmap at 64 KiB granularity, meta bitmap with "
          f"one bit per 1 KiB migration chunk, {SET_CALLS} calls "
          "(callgrind instruction counts):\n\n" + meta_md +
          "\n\nSerialization of a bitmap with every third bit set, best of 5"
          " (memcpy measured in the same run):\n\n" + serial_md)
    d = save("hbitmap", md, {"meta": meta_data, "serial": serial_data})
    print(md)
    print(f"\n(written to {d}/results.md and results.json)")
    return 0
