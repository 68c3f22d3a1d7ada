"""Benchmarks: they measure and report, they never assert.

Each benchmark runs stock and patched in the same invocation, because
these machines are noisy: a ratio measured side by side means more than
two absolute numbers taken at different times.  Results go to stdout (a
markdown table) and to files under ``<cache>/bench/`` (markdown, JSON,
PNG).
"""

from __future__ import annotations

from ..build.driver import build
from ..paths import Layout


def main(layout: Layout, what: str, quick: bool) -> int:
    build(layout)
    if what == "migrate":
        from . import migrate
        return migrate.main(layout, quick=quick)
    from . import hbitmap
    return hbitmap.main(layout, quick=quick)
