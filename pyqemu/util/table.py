"""The one table formatter: markdown for files, plain columns for a
terminal (the demo), from the same rows."""

from __future__ import annotations

from typing import Any, Sequence


def table(header: Sequence[Any], rows: Sequence[Sequence[Any]],
          markdown: bool = True) -> str:
    """Columns padded to line up; with *markdown*, pipes and a rule."""
    cells = [[str(c) for c in header]] + [[str(c) for c in r] for r in rows]
    for r in cells[1:]:
        if len(r) != len(header):
            raise ValueError(f"a row of {len(r)} cells under {len(header)} "
                             f"headers: {r}")
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]

    def line(r: list[str]) -> str:
        padded = [c.ljust(w) for c, w in zip(r, widths, strict=True)]
        return ("| " + " | ".join(padded) + " |") if markdown \
            else "  ".join(padded).rstrip()

    lines = [line(r) for r in cells]
    if markdown:
        lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def markdown_table(header: Sequence[Any], rows: Sequence[Sequence[Any]]) -> str:
    return table(header, rows, markdown=True)
