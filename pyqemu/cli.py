"""``pyqemu``: build, locate, demonstrate and test the bitmap migration series.

The CLI only parses arguments, chooses the source tree once (a
:class:`~pyqemu.paths.Layout`, passed down to every command) and
dispatches; each command's work lives in its own module so it can be used
from tests and benchmarks too.  :func:`main` is the one error boundary:
what goes wrong below it becomes one line on stderr and exit status 1, a
Ctrl-C becomes ``pyqemu: interrupted`` and exit status 130.
"""

from __future__ import annotations

import argparse
import logging
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import FrameType

from .build import deps
from .errors import PyqemuError
from .log import info
from .paths import BINARIES, FLAVOURS, SANITIZED, Layout, layout_for
from .util.proc import run

#: The program name in usage lines: the README's entry point, which runs
#: ``python -m pyqemu``.  The ``pyqemu`` console script says ``pyqemu``.
PROG = "./run"

#: Exit status after Ctrl-C, as a shell reports a process killed by SIGINT.
INTERRUPTED = 130

#: What a QEMU checkout has at its HEAD, and the build relies on: the
#: device list goes into configs/devices/x86_64-softmmu, the shim is
#: util/hbitmap.c, the series changes migration/block-dirty-bitmap.c, and
#: the VMs are launched by the tree's own python/qemu/machine.
QEMU_MARKERS = ("VERSION", "configure", "util/hbitmap.c",
                "migration/block-dirty-bitmap.c",
                "configs/devices/x86_64-softmmu", "python/qemu/machine")

#: ``check backup --size``: spelled out here, not imported, so that
#: ``--help`` needs no QEMU tree (checks.backup imports qemu.qmp).
SIZES = {"small": "64 GiB at 64 KiB granularity",
         "large": "4 TiB at 4 KiB granularity"}


def cmd_build(args: argparse.Namespace, layout: Layout) -> int:
    from .build.driver import build
    chosen = tuple(f for f in (*FLAVOURS, SANITIZED)
                   if getattr(args, f))
    if chosen or not args.libvirt:
        for r in build(layout, chosen or FLAVOURS):
            info(f"{r.flavour}: {r.seconds:.1f}s")
    if args.libvirt:
        from .build import libvirt
        start = time.monotonic()
        tree = libvirt.build(layout)
        info(f"libvirt: {tree.libvirtd} ({time.monotonic() - start:.1f}s)")
    return 0


def cmd_which(args: argparse.Namespace, layout: Layout) -> int:
    flavour = "stock" if args.stock else "fixes" if args.fixes else "patched"
    print(layout.binary(args.binary, flavour))
    return 0


def cmd_demo(args: argparse.Namespace, layout: Layout) -> int:
    from .report import demo
    return demo.main(layout)


def cmd_test(args: argparse.Namespace, layout: Layout) -> int:
    from .checks import suite
    return suite.main(layout, args.pytest_args)


def cmd_check_faults(args: argparse.Namespace, layout: Layout) -> int:
    from .checks import faults
    return faults.main(layout)


def cmd_check_libvirt(args: argparse.Namespace, layout: Layout) -> int:
    from .checks import libvirt
    return libvirt.main(layout)


def cmd_check_operator(args: argparse.Namespace, layout: Layout) -> int:
    from .checks import operator
    return operator.main(layout, args.runs, args.concurrency)


def cmd_check_fuzz(args: argparse.Namespace, layout: Layout) -> int:
    from .checks.fuzz import report
    return report.main(layout, args.inputs, args.seed)


def cmd_check_backup(args: argparse.Namespace, layout: Layout) -> int:
    from .checks import backup
    # in the order given, each once
    return backup.main(layout, tuple(dict.fromkeys(args.size or SIZES)))


def cmd_check_upstream(args: argparse.Namespace, layout: Layout) -> int:
    from .checks import reproducers
    return reproducers.main(layout)


def cmd_series_check(args: argparse.Namespace, layout: Layout) -> int:
    from .checks import seriescheck
    return seriescheck.main(layout, args.quick)


def cmd_cover_letter(args: argparse.Namespace, layout: Layout) -> int:
    from .build.driver import build
    from .report import coverletter
    if args.reuse:
        coverletter.require_saved(layout)   # before any build
    build(layout)
    print(coverletter.write(layout, reuse=args.reuse))
    return 0


def cmd_bench(args: argparse.Namespace, layout: Layout) -> int:
    from .bench import main as bench_main
    return bench_main(layout, args.what, args.quick)


def _count(text: str) -> int:
    """argparse type: a whole number of at least 0."""
    n = int(text)
    if n < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, not {n}")
    return n


QEMU_SRC_HELP = ("your own QEMU git checkout instead of the pinned Debian "
                 "tarball (its HEAD is used, never modified)")


def parser(prog: str = PROG) -> argparse.ArgumentParser:
    """Every command with only the flags that mean something to it.

    ``--qemu-src`` is every command's, so it is also accepted before the
    command (``./run --qemu-src DIR build``)."""
    ap = argparse.ArgumentParser(
        prog=prog,
        description="Live migration of QEMU dirty bitmaps: build the stock "
                    "and patched QEMU, run them, test and measure them.")
    ap.add_argument("--qemu-src", dest="qemu_src_first", metavar="DIR",
                    help=QEMU_SRC_HELP)
    sub = ap.add_subparsers(dest="command", required=True)

    def command(parent: argparse._SubParsersAction, name: str, func, help: str
                ) -> argparse.ArgumentParser:
        p = parent.add_parser(name, help=help, description=help)
        p.add_argument("--qemu-src", metavar="DIR", help=QEMU_SRC_HELP)
        # "check libvirt" for ``pyqemu check libvirt``: its deps.COMMANDS key
        p.set_defaults(func=func, needs=p.prog.split(" ", 1)[1])
        return p

    p = command(sub, "build", cmd_build, "build stock, fixes-only and/or "
                                         "patched QEMU + shim (default: all "
                                         "three)")
    p.add_argument("--stock", action="store_true", help="the stock tree")
    p.add_argument("--fixes", action="store_true",
                   help="the tree with the series' fixes only")
    p.add_argument("--patched", action="store_true", help="the patched tree")
    p.add_argument("--libvirt", action="store_true",
                   help="bookworm's libvirt with patches/libvirt (alone "
                        "unless a QEMU tree is named too)")
    p.add_argument("--asan", action="store_true",
                   help="the patched tree with ASan and UBSan (for fuzzing)")

    p = command(sub, "which", cmd_which,
                "print the absolute path of a built binary")
    p.add_argument("binary", choices=sorted(BINARIES))
    p.add_argument("--stock", action="store_true",
                   help="the stock build (default: patched)")
    p.add_argument("--fixes", action="store_true",
                   help="the build with the series' fixes only")

    command(sub, "demo", cmd_demo, "the main job: build both trees and "
                                   "migrate a VM with dirty bitmaps")

    p = command(sub, "test", cmd_test,
                "build if needed, then run the test suite")
    p.add_argument("pytest_args", nargs=argparse.REMAINDER,
                   help="extra arguments for pytest (after --)")

    check = sub.add_parser("check", help="fault scenarios, stream fuzzing, "
                                         "backup chain across a migration, "
                                         "libvirt")
    what = check.add_subparsers(dest="what", required=True)
    command(what, "faults", cmd_check_faults,
            "cancel / kill / cut the link during a live migration; table")
    command(what, "libvirt", cmd_check_libvirt,
            "virsh migrate --live between two private libvirt 9.0 hosts "
            "(shared storage, --copy-storage-all) with a virtnbdbackup chain "
            "restored and compared with the disk, stock vs patched")
    p = command(what, "operator", cmd_check_operator,
                "virsh migrate --live over shared storage of a Linux guest "
                "writing to a 16 TiB qcow2 with 8 fully dirty checkpoints: "
                "guest-visible downtime (source STOP to destination RESUME) "
                "of Debian's libvirt + stock QEMU against ours, the "
                "checkpoints and a virtnbdbackup chain checked after each; "
                "concurrent and mixed hosts")
    p.add_argument("--runs", type=_count, default=5,
                   help="migrations per configuration (default 5)")
    p.add_argument("--concurrency", type=_count, default=4,
                   help="domains migrated at once afterwards (default 4; "
                        "0: none)")
    p = command(what, "fuzz", cmd_check_fuzz,
                "mutated migration streams on the ASan+UBSan build")
    p.add_argument("--inputs", type=_count, default=10_000,
                   help="how many mutated streams to try (default 10000)")
    p.add_argument("--seed", type=int, default=1, help="random seed")
    p = command(what, "backup", cmd_check_backup,
                "full backup, live migration with a Linux guest writing, "
                "incremental backup on the destination, restored chain "
                "compared with the disk; table")
    p.add_argument("--size", action="append", choices=tuple(SIZES),
                   help="only this size (repeatable; default: both): "
                        + "; ".join(f"{k} = {v}" for k, v in SIZES.items()))
    command(what, "upstream", cmd_check_upstream,
            "the upstream/ reproducers against Debian's QEMU 7.2, stock "
            "and patched; table")

    series = sub.add_parser("series", help="check the patch series, or write "
                                           "its cover letter")
    what = series.add_subparsers(dest="what", required=True)
    p = command(what, "check", cmd_series_check,
                "checkpatch, sign-off, subjects; every prefix applies, "
                "builds and passes test-hbitmap")
    p.add_argument("--quick", action="store_true",
                   help="checkpatch, metadata and apply only")
    p = command(what, "cover-letter", cmd_cover_letter,
                "write patches/qemu/0000-cover-letter.patch")
    p.add_argument("--reuse", action="store_true",
                   help="use the last benchmark results instead of "
                        "measuring again")

    p = command(sub, "bench", cmd_bench, "benchmarks (measure, never assert)")
    p.add_argument("what", choices=("migrate", "hbitmap"))
    p.add_argument("--quick", action="store_true",
                   help="a smaller sweep, for a first look")
    return ap


def _is_expected(e: BaseException) -> bool:
    """Failures of the outside world (a command, QEMU, QMP, the disk)
    rather than bugs of pyqemu: those get one line, bugs a traceback."""
    if isinstance(e, (PyqemuError, subprocess.SubprocessError, OSError)):
        return True
    # qemu.qmp's and qemu.machine's errors (the latter is imported from
    # the built tree, so it is recognised by its package)
    return type(e).__module__.split(".")[0] == "qemu"


def one_line(e: BaseException) -> str:
    text = " / ".join(ln.strip() for ln in str(e).splitlines() if ln.strip())
    text = text or type(e).__name__
    return text if len(text) <= 600 else text[:600] + " ..."


def checkout(text: str) -> Path:
    """The ``--qemu-src`` directory, checked before anything is built or
    created in the cache: it exists, is the top of a git checkout with a
    commit, and that commit looks like QEMU (:data:`QEMU_MARKERS`)."""
    if not text.strip():
        raise PyqemuError("--qemu-src is empty: give the top directory of a "
                          "QEMU git checkout")
    path = Path(text).expanduser()
    if not path.exists():
        raise PyqemuError(f"--qemu-src {text}: no such directory")
    if not path.is_dir():
        raise PyqemuError(f"--qemu-src {text}: not a directory")
    path = path.resolve()
    res = run(["git", "-C", path, "rev-parse", "--show-toplevel"],
              check=False)
    if res.returncode != 0:
        why = (res.stderr.strip().splitlines() or ["git rev-parse failed"])[0]
        raise PyqemuError(f"--qemu-src {text}: not a git checkout ({why})")
    top = Path(res.stdout.strip()).resolve()
    if top != path:
        raise PyqemuError(f"--qemu-src {text}: a directory inside the git "
                          f"checkout {top}; give its top directory")
    if run(["git", "-C", path, "rev-parse", "--verify", "-q", "HEAD"],
           check=False).returncode != 0:
        raise PyqemuError(f"--qemu-src {text}: a git checkout without a "
                          "commit (its HEAD is what is built)")
    listed = run(["git", "-C", path, "ls-tree", "--name-only", "HEAD", "--",
                  *QEMU_MARKERS]).stdout.splitlines()
    missing = [m for m in QEMU_MARKERS if m not in listed]
    if missing:
        raise PyqemuError(f"--qemu-src {text}: does not look like a QEMU "
                          f"checkout: its HEAD has no {', '.join(missing)}")
    return path


def chosen_source(args: argparse.Namespace) -> Path | None:
    """``--qemu-src``, given before or after the command (not both ways)."""
    first, last = args.qemu_src_first, getattr(args, "qemu_src", None)
    if first is not None and last is not None and first != last:
        raise PyqemuError(f"--qemu-src given twice, as {first!r} and "
                          f"{last!r}")
    text = last if last is not None else first
    return None if text is None else checkout(text)


class _Interrupts:
    """Ctrl-C as a user expects it: ``pyqemu: interrupted``, exit 130,
    and nothing else.

    A Ctrl-C lands anywhere, often inside qemu.qmp's event loop in the
    middle of a QMP command.  The clean-up that follows (every VM shut
    down, and every QEMU in the terminal's process group got the SIGINT
    too) ends that command's task with ExecInterruptedError, which
    asyncio then logs as "Task exception was never retrieved" with two
    tracebacks; the clean-up itself may raise.  So the SIGINT handler,
    before raising KeyboardInterrupt as Python's own does, silences
    logging and unraisable-exception reports for the rest of the
    process, and main() treats any error after it as the interrupt."""

    def __init__(self) -> None:
        self.seen = False
        self.previous: object = None
        self.installed = threading.current_thread() is threading.main_thread()
        if self.installed:
            self.previous = signal.signal(signal.SIGINT, self._handler)

    def _handler(self, signum: int, frame: FrameType | None) -> None:
        self.seen = True
        logging.disable(logging.CRITICAL)
        sys.unraisablehook = lambda unraisable: None
        raise KeyboardInterrupt

    def restore(self) -> None:
        if self.installed:
            signal.signal(signal.SIGINT, self.previous)  # type: ignore[arg-type]

    @staticmethod
    def exit() -> int:
        print("pyqemu: interrupted", file=sys.stderr, flush=True)
        return INTERRUPTED


def main(argv: list[str] | None = None, prog: str = PROG) -> int:
    args = parser(prog).parse_args(argv)
    interrupts = _Interrupts()
    try:
        layout = layout_for(chosen_source(args))
        # every command installs what it needs before anything else
        deps.ensure_for(args.needs)
        return int(args.func(args, layout) or 0)
    except KeyboardInterrupt:
        return interrupts.exit()
    except Exception as e:
        if interrupts.seen:     # raised by the clean-up after a Ctrl-C
            return interrupts.exit()
        if not _is_expected(e):
            raise
        print(f"pyqemu: error: {one_line(e)}", file=sys.stderr)
        return 1
    finally:
        interrupts.restore()


def console() -> None:
    """The ``pyqemu`` command that ``pip install -e .`` installs."""
    sys.exit(main(prog="pyqemu"))
