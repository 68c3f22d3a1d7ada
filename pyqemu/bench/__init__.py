"""Benchmarks: they measure and report, they never assert.

Each benchmark runs stock and patched in the same invocation, because
these machines are noisy: a ratio measured side by side means more than
two absolute numbers taken at different times.  Results go to stdout (a
markdown table) and to files under ``<cache>/bench/`` (markdown, JSON,
PNG).
"""

from __future__ import annotations

import argparse

from .. import build as buildmod


def main(args: argparse.Namespace) -> int:
    buildmod.build()
    if args.what == "migrate":
        from . import migrate
        return migrate.main(quick=args.quick)
    from . import hbitmap
    return hbitmap.main(quick=args.quick)
