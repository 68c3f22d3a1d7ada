"""Sizes: the binary units every test and report uses, and their display."""

from __future__ import annotations

KiB, MiB, GiB, TiB = 1 << 10, 1 << 20, 1 << 30, 1 << 40


def fmt_bytes(n: float | None) -> str:
    """Bytes for a person: one decimal in the largest unit that fits."""
    if n is None:
        return "-"
    for unit, size in (("GiB", GiB), ("MiB", MiB), ("KiB", KiB)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{int(n)} B"


def fmt_size(n: int) -> str:
    """A disk size: whole TiB or GiB when it is one."""
    for unit, size in (("TiB", TiB), ("GiB", GiB)):
        if n >= size:
            return f"{n // size} {unit}"
    return fmt_bytes(n)
