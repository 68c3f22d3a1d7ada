"""``pyqemu``: build, locate, demonstrate and test the bitmap migration series.

The CLI only parses arguments and dispatches; each command's work lives in
its own module so it can be used from tests and benchmarks too.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from . import build as buildmod
from .log import info


def _flavours(args: argparse.Namespace) -> tuple[str, ...]:
    chosen = tuple(f for f in ("stock", "patched", "asan")
                   if getattr(args, f))
    return chosen or ("stock", "patched")


def _select_source(args: argparse.Namespace) -> None:
    """With --qemu-src, make that tree's builds the ones every later step
    (tests run in a subprocess included) uses."""
    if getattr(args, "qemu_src", None) is not None:
        os.environ["PYQEMU_TAG"] = buildmod.layout_for(args.qemu_src).tag


def cmd_build(args: argparse.Namespace) -> int:
    results = buildmod.build(_flavours(args), args.qemu_src)
    for r in results:
        info(f"{r.flavour}: {r.seconds:.1f}s")
    return 0


def cmd_which(args: argparse.Namespace) -> int:
    layout = buildmod.layout_for(args.qemu_src)
    flavour = "stock" if args.stock else "patched"
    print(buildmod.binary(args.binary, flavour, layout))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from . import demo
    return demo.main(args)


def cmd_test(args: argparse.Namespace) -> int:
    from . import testrunner
    return testrunner.main(args)


def cmd_check(args: argparse.Namespace) -> int:
    from . import check
    return check.main(args)


def cmd_series(args: argparse.Namespace) -> int:
    if args.what == "check":
        from . import seriescheck
        return seriescheck.main(args.quick)
    from . import coverletter
    buildmod.build()
    print(coverletter.write(reuse=args.reuse))
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from .bench import main as bench_main
    return bench_main(args)


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="pyqemu",
        description="Live migration of QEMU dirty bitmaps: build the stock "
                    "and patched QEMU, run them, test and measure them.")
    sub = ap.add_subparsers(dest="command", required=True)

    def src_opt(p: argparse.ArgumentParser) -> None:
        p.add_argument("--qemu-src", type=Path, metavar="DIR",
                       help="your own QEMU git checkout instead of the pinned "
                            "Debian tarball (its HEAD is used, never modified)")

    p = sub.add_parser("build", help="build stock and/or patched QEMU + shim")
    p.add_argument("--stock", action="store_true", help="only the stock tree")
    p.add_argument("--patched", action="store_true",
                   help="only the patched tree")
    p.add_argument("--asan", action="store_true",
                   help="the patched tree with ASan and UBSan (for fuzzing)")
    p.add_argument("--all", action="store_true", help="both (the default)")
    src_opt(p)
    p.set_defaults(func=cmd_build)

    p = sub.add_parser("which", help="print the absolute path of a built binary")
    p.add_argument("binary", choices=sorted(buildmod.BINARIES))
    p.add_argument("--stock", action="store_true",
                   help="the stock build (default: patched)")
    src_opt(p)
    p.set_defaults(func=cmd_which)

    p = sub.add_parser("demo", help="the main job: build both trees and "
                                    "migrate a VM with dirty bitmaps")
    src_opt(p)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("test", help="build if needed, then run the test suite")
    src_opt(p)
    p.add_argument("pytest_args", nargs=argparse.REMAINDER,
                   help="extra arguments for pytest (after --)")
    p.set_defaults(func=cmd_test)

    p = sub.add_parser("check", help="fault scenarios and stream fuzzing")
    p.add_argument("what", choices=("faults", "fuzz"))
    p.add_argument("--inputs", type=int, default=10_000,
                   help="fuzz: how many mutated streams to try")
    p.add_argument("--seed", type=int, default=1, help="fuzz: random seed")
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("series", help="check the patch series, or write its "
                                      "cover letter")
    p.add_argument("what", choices=("check", "cover-letter"))
    p.add_argument("--quick", action="store_true",
                   help="check: checkpatch, metadata and apply only")
    p.add_argument("--reuse", action="store_true",
                   help="cover-letter: use the last benchmark results "
                        "instead of measuring again")
    p.set_defaults(func=cmd_series)

    p = sub.add_parser("bench", help="benchmarks (measure, never assert)")
    p.add_argument("what", choices=("migrate", "hbitmap"))
    p.add_argument("--quick", action="store_true",
                   help="a smaller sweep, for a first look")
    p.set_defaults(func=cmd_bench)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    _select_source(args)
    try:
        return int(args.func(args) or 0)
    except (buildmod.BuildError, RuntimeError, OSError) as e:
        print(f"pyqemu: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
