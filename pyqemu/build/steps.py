"""The steps the top-level meson.build runs as custom targets.

``meson.build`` describes the build as a chain -- source tree, QEMU
configure, QEMU ninja, shim library -- and calls this module for each
link of the chain::

    python -m pyqemu.build.steps source    --flavour F --stamp OUT ...
    python -m pyqemu.build.steps configure --flavour F --stamp OUT ...
    python -m pyqemu.build.steps ninja     --flavour F --stamp OUT ...

Every step rewrites its stamp only when it changed something.  meson's
custom commands are ``restat``, so an unchanged stamp tells ninja that
nothing downstream needs rebuilding: a second ``pyqemu build`` with
nothing changed relinks nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

from ..errors import CommandError, PyqemuError
from ..paths import SANITIZED, Layout
from ..tree import series, stock
from ..tree.git import head
from ..util.proc import die_with_parent, run
from .driver import BuildError

#: Configure flags for every flavour (the sanitized one adds its own).
CONFIGURE_FLAGS = (
    "--target-list=x86_64-softmmu",
    "--without-default-features",
    # Only the devices this project runs (build/qemu-devices.mak, put in
    # the tree by the source step): about half of a default build is
    # devices nobody here uses.
    "--without-default-devices",
    "--with-devices-x86_64=pyqemu",
    "--enable-tools",
    "--disable-docs",
    # Debian's tarball has no firmware blobs to install.
    "--disable-install-blobs",
    # Objects are linked into the ctypes shim's shared library too, and
    # -fPIE objects cannot go into a shared object.
    "--disable-pie",
    "--extra-cflags=-fPIC",
    # No network for meson subprojects: the tarball ships what is needed.
    "--disable-download",
    # SeaBIOS and option ROMs for -machine pc come from Debian packages.
    "--firmwarepath=/usr/share/seabios:/usr/share/qemu",
    # No DWARF: -g costs 10-25% of every compile and nothing here reads
    # it. gcc's code is the same with or without -g, so benchmarks do not
    # change; assertion messages carry file:line anyway, and backtraces
    # still have the (unstripped) symbol names.
    "--disable-debug-info",
    # Operators run KVM guests: the binaries can, where /dev/kvm is usable
    # (pyqemu.machine.accel decides per run, and says which it took).
    "--enable-kvm",
    # qcow2's zstd compression type (upstream's iotest 303 needs it).
    "--enable-zstd",
)

#: The sanitized tree runs the fuzzer and a few short tests, and ./run test
#: builds it cold in the background, where its compile time is on the
#: cold suite's critical path (the CPU is saturated then: 97-100 % busy
#: in 5 s samples).  So -O0: on 40 of its objects, -O0 -g1 compiled 35 %
#: faster than -O1 -g1 (ASan's advice for speed at run time, which the
#: fuzzer's short inputs do not need); line tables (-g1) keep file:line
#: in the sanitizers' reports.
SANITIZED_FLAGS = ("--enable-asan", "--enable-ubsan", "--extra-cflags=-O0 -g1")

#: QEMU ninja targets the project uses: the binaries, QEMU's own hbitmap
#: unit test, and the archives the shim library links against (qom,
#: authz, crypto and io are not built by default).
NINJA_TARGETS = (
    "qemu-system-x86_64", "qemu-img", "qemu-io", "qemu-nbd",
    "storage-daemon/qemu-storage-daemon", "tests/unit/test-hbitmap",
    "libqemuutil.a", "libqom.a", "libauthz.a", "libcrypto.a", "libio.a",
)


def ccache_env(layout: Layout) -> dict[str, str]:
    """ccache keeps its cache in the project cache, never in the checkout."""
    return dict(os.environ,
                CCACHE_DIR=str(layout.ccache),
                CCACHE_MAXSIZE="5G",
                CCACHE_NOHASHDIR="1",
                CCACHE_BASEDIR=str(layout.root))


def update_stamp(stamp: Path, content: str) -> None:
    """Write *stamp* only if its content changes (keeps its mtime otherwise)."""
    try:
        if stamp.read_text() == content:
            return
    except OSError:
        pass
    stamp.write_text(content)


def step_source(layout: Layout, flavour: str, stamp: Path) -> None:
    tree, origin = stock.prepare(layout)
    if flavour in ("patched", SANITIZED):
        tree = series.prepare_patched(layout, tree)
    elif flavour == "fixes":
        tree = series.prepare_patched(layout, tree,
                                      series.fixes(series.patches()),
                                      flavour)
    update_stamp(stamp, f"/* {origin.describe()} */\n"
                        f"#define PYQEMU_QEMU_TREE_HEAD \"{head(tree)}\"\n")


def configure_args(flavour: str) -> list[str]:
    extra = list(SANITIZED_FLAGS) if flavour == SANITIZED else []
    return [*CONFIGURE_FLAGS, *extra, "--cc=ccache gcc",
            f"--python={sys.executable}"]


def ninja_targets(flavour: str) -> tuple[str, ...]:
    """The sanitized build only needs the system emulator (for fuzzing)."""
    return ("qemu-system-x86_64",) if flavour == SANITIZED else NINJA_TARGETS


def configure(layout: Layout, flavour: str, tree: Path, build: Path) -> dict:
    """Configure *tree* into *build* with *flavour*'s arguments, unless it
    already is: a changed source path or flag list configures again.
    Returns the record of what the build directory is configured with."""
    args = configure_args(flavour)
    record = build / "pyqemu-configure.json"
    want = {"source": str(tree), "args": args}
    try:
        configured = json.loads(record.read_text()) == want and \
            (build / "build.ninja").exists()
    except (OSError, ValueError):
        configured = False
    if not configured:
        build.mkdir(parents=True, exist_ok=True)
        record.unlink(missing_ok=True)
        print(f"pyqemu: configuring {flavour} QEMU in {build}: configure "
              + " ".join(shlex.quote(a) for a in args), flush=True)
        try:
            run([tree / "configure", *args], cwd=build,
                env=ccache_env(layout), merge=True,
                what=f"QEMU configure for {flavour} in {build}")
        except CommandError as e:
            sys.stderr.write(e.output[-6000:])
            raise BuildError(f"QEMU configure failed for {flavour} "
                             f"(log above, build dir {build})") from None
        record.write_text(json.dumps(want))
    return want


def step_configure(layout: Layout, flavour: str, stamp: Path) -> None:
    want = configure(layout, flavour, layout.source(flavour),
                     layout.qemu_build(flavour))
    update_stamp(stamp, json.dumps(want) + "\n")


#: The directories of CONFIGURE_FLAGS' --firmwarepath.
FIRMWARE_DIRS = ("/usr/share/seabios", "/usr/share/qemu")


def link_firmware(build: Path) -> None:
    """Make the firmware visible to binaries run from the build tree.

    A QEMU run from its build directory maps every data path into
    ``<build>/qemu-bundle``, so the firmware directories configured with
    --firmwarepath are linked there (iotests and our VMs both need them).
    """
    for d in FIRMWARE_DIRS:
        link = build / "qemu-bundle" / d.lstrip("/")
        if link.is_symlink() and os.readlink(link) == d:
            continue
        link.parent.mkdir(parents=True, exist_ok=True)
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(d)


def _fingerprint(build: Path, targets: tuple[str, ...]) -> str:
    parts = []
    for target in targets:
        p = build / target
        st = p.stat()
        parts.append(f"{target} {st.st_mtime_ns} {st.st_size}")
    return "\n".join(parts) + "\n"


def step_ninja(layout: Layout, flavour: str, stamp: Path) -> None:
    build = layout.qemu_build(flavour)
    targets = ninja_targets(flavour)
    # ninja's output goes to the terminal: it is the progress report
    res = subprocess.run(["ninja", "-C", str(build), *targets],
                         env=ccache_env(layout), check=False,
                         preexec_fn=die_with_parent())
    if res.returncode != 0:
        raise BuildError(f"building {flavour} QEMU failed "
                         f"(ninja output above, build dir {build})")
    link_firmware(build)
    update_stamp(stamp, _fingerprint(build, targets))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="pyqemu.build.steps")
    ap.add_argument("step", choices=("source", "configure", "ninja"))
    ap.add_argument("--flavour", required=True,
                    choices=("stock", "fixes", "patched", SANITIZED))
    ap.add_argument("--cache", required=True, type=Path)
    ap.add_argument("--tag", required=True)
    ap.add_argument("--qemu-src", default="")
    ap.add_argument("--stamp", required=True, type=Path)
    args = ap.parse_args(argv)
    layout = Layout(args.cache, args.tag,
                    Path(args.qemu_src) if args.qemu_src else None)
    try:
        if args.step == "source":
            step_source(layout, args.flavour, args.stamp)
        elif args.step == "configure":
            step_configure(layout, args.flavour, args.stamp)
        else:
            step_ninja(layout, args.flavour, args.stamp)
    except PyqemuError as e:
        raise SystemExit(f"pyqemu: {e}") from None


if __name__ == "__main__":
    main()
