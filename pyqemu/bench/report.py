"""Writing benchmark results: markdown tables, JSON, where they go."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

from ..paths import Layout


def out_dir(name: str) -> Path:
    d = Layout.default().root / "bench" / name
    d.mkdir(parents=True, exist_ok=True)
    return d


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[str(c) for c in header]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]

    def line(r: list[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |"

    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(cells[0]), sep] + [line(r) for r in cells[1:]])


def save(name: str, markdown: str, data: Any) -> Path:
    d = out_dir(name)
    (d / "results.md").write_text(markdown + "\n")
    (d / "results.json").write_text(json.dumps(data, indent=1) + "\n")
    return d


def fmt_bytes(n: float | None) -> str:
    if n is None:
        return "-"
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{int(n)} B"


def fmt_size(n: int) -> str:
    for unit, size in (("TiB", 1 << 40), ("GiB", 1 << 30)):
        if n >= size:
            return f"{n // size} {unit}"
    return fmt_bytes(n)
