"""A Linux guest whose workload writes through virtio-blk on an iothread.

The boot-sector writer (:mod:`pyqemu.machine.guest`) is fast, but it drives IDE
from real mode; users run Linux with virtio-blk served by an iothread,
where bitmaps are dirtied from another thread than the vCPU's.  This module
boots Debian's own kernel (package ``linux-image-amd64``, which the
``./run`` commands install, see :mod:`pyqemu.build.deps`) on ``-machine
q35``, under KVM where the host really has it and TCG otherwise
(:mod:`pyqemu.machine.accel`; a VM's ``accel`` says which), with an
initramfs the project builds itself:

* ``busybox-static`` for the init script (``/init``);
* the virtio modules the Debian kernel does not build in, with their
  dependencies as ``modprobe --show-depends`` lists them, loaded in order
  by ``/init``;
* ``tests/guest/linux-writer.c`` compiled with ``gcc -static``: O_DIRECT
  writes, random or with a fixed stride, with a periodic fsync, progress
  on the serial console.

The initramfs is a cpio "newc" archive written here (no cpio package, no
root needed for the ``/dev/console`` node), gzip-compressed, and cached
under ``<cache>/guest/`` (the layout's root) once per hash of everything
that goes into it.

The writer's offsets come from a seeded splitmix64 generator (or a
stride); :func:`write_offsets` replays them, so a test knows which blocks
the first N writes touched without asking QEMU.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, TypeVar

from ..build import deps
from ..errors import PyqemuError
from ..paths import REPO, Layout
from ..util.files import write_atomic
from ..util.poll import PollTimeout, until
from ..util.proc import run
from ..util.units import GiB
from . import kernelimage
from .guest import GuestStuck, serial_text
from .vm import Bitmap, Disk

WRITER_SOURCE = REPO / "tests" / "guest" / "linux-writer.c"
BUSYBOX = Path("/bin/busybox")
#: Modules the guest needs: the virtio PCI transport and the block driver.
MODULES = ("virtio_pci", "virtio_blk")
#: Bump when the layout of the archive changes without its inputs changing.
FORMAT = 1

#: The virtio-blk disk's iothread; see :func:`qemu_args`.
IOTHREAD = "io0"
MASK64 = (1 << 64) - 1
T = TypeVar("T")


class LinuxGuestError(PyqemuError):
    """The kernel, its modules or the initramfs cannot be provided, or the
    guest failed (its writer, its kernel)."""


@dataclass(frozen=True)
class WriterConfig:
    """What the guest's writer does (see tests/guest/linux-writer.c).

    Passed on the kernel command line as ``writer.*=`` parameters, which
    the kernel ignores (dotted names are module parameters) and ``/init``
    turns into the writer's options: one initramfs serves every test.
    """

    bs: int = 4096              # bytes per write
    offset: int = 0             # start of the written region
    length: int = GiB           # its length (0: to the end of the disk)
    rate: int = 0               # writes per second, 0 = as fast as it goes
    fsync: int = 64             # writes between fsyncs
    report: int = 16            # writes per progress line
    seed: int = 1
    device: str = "/dev/vda"
    #: period of a background O_DIRECT read, 0 = none: see KICK_MS
    kick_ms: int = 0
    #: bytes from one write to the next (wrapping around the region),
    #: 0 = random offsets: bs is sequential, the disk span of a bitmap
    #: chunk dirties a new chunk with every write
    stride: int = 0

    def cmdline(self) -> str:
        return " ".join(f"writer.{k}={v}" for k, v in (
            ("dev", self.device), ("bs", self.bs), ("offset", self.offset),
            ("length", self.length), ("rate", self.rate),
            ("fsync", self.fsync), ("report", self.report),
            ("seed", self.seed), ("kick", self.kick_ms),
            ("stride", self.stride)))


# -- the kernel ------------------------------------------------------------

@dataclass(frozen=True)
class Kernel:
    """One installed Debian kernel: its image and its module tree."""

    version: str
    vmlinuz: Path
    modules: Path


def _version_key(version: str) -> list[int]:
    return [int(x) for x in re.findall(r"\d+", version)]


def kernel() -> Kernel:
    """The newest installed Debian kernel.

    The machine's running kernel is irrelevant: the guest boots whatever
    ``linux-image-amd64`` installed into /boot, with its own modules.
    The packages are the ``./run`` commands' to install (see
    :data:`pyqemu.build.deps.LINUX_GUEST`); here a missing one is an error
    that names the command.
    """
    deps.require(deps.LINUX_GUEST)
    found = []
    for vmlinuz in Path("/boot").glob("vmlinuz-*"):
        version = vmlinuz.name.removeprefix("vmlinuz-")
        modules = Path("/lib/modules") / version
        if (modules / "modules.dep").exists():
            found.append(Kernel(version, vmlinuz, modules))
    if not found:
        raise LinuxGuestError("no /boot/vmlinuz-* with a /lib/modules tree; "
                              "is linux-image-amd64 installed?")
    return max(found, key=lambda k: _version_key(k.version))


def boot_image(layout: Layout, k: Kernel | None = None) -> Path:
    """What ``-kernel`` gets for kernel *k*: its image unpacked into the
    cache, which boots in a third of the time under TCG, or its vmlinuz
    when that cannot be done (see :mod:`pyqemu.machine.kernelimage`)."""
    k = k or kernel()
    return kernelimage.unpacked(k.vmlinuz, layout.root / "guest")


def module_load_order(k: Kernel, wanted: tuple[str, ...] = MODULES
                      ) -> list[str]:
    """Paths (relative to the kernel's module tree) of the .ko files to
    insmod, dependencies first.

    kmod's own resolver answers: ``modprobe --show-depends`` for kernel
    *k* (``-S``), with no configuration (``-C /dev/null``: the machine's
    modprobe.d is not the guest's), prints ``insmod <path>`` per module in
    load order and ``builtin <name>`` for what the kernel has built in.
    """
    res = run(["modprobe", "-S", k.version, "-C", "/dev/null", "-a",
               "--show-depends", *wanted], check=False)
    if res.returncode != 0:
        raise LinuxGuestError(f"kernel {k.version}: modprobe --show-depends "
                              f"{' '.join(wanted)}: {res.stderr.strip()}")
    order: list[str] = []
    for line in res.stdout.splitlines():
        words = line.split()
        if words[:1] != ["insmod"]:
            continue            # "builtin <name>": nothing to load
        path = str(Path(words[1]).relative_to(k.modules))
        if path not in order:
            order.append(path)
    for path in order:
        if not path.endswith(".ko"):
            raise LinuxGuestError(f"{path}: compressed modules are not "
                                  "supported (busybox insmod loads .ko)")
    return order


# -- the initramfs ---------------------------------------------------------

INIT = """#!/bin/busybox sh
# /init of the pyqemu Linux guest: load the virtio modules, then hand the
# machine to the writer with the options from the kernel command line.
/bin/busybox mkdir -p /proc /sys /dev /tmp
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
for m in $(cat /modules.order); do
    insmod "/lib/modules/$m" || echo "init: insmod $m failed"
done
set -- -d /dev/vda
for p in $(cat /proc/cmdline); do
    case "$p" in
        writer.dev=*)    set -- "$@" -d "${p#*=}" ;;
        writer.bs=*)     set -- "$@" -b "${p#*=}" ;;
        writer.offset=*) set -- "$@" -o "${p#*=}" ;;
        writer.length=*) set -- "$@" -l "${p#*=}" ;;
        writer.rate=*)   set -- "$@" -r "${p#*=}" ;;
        writer.fsync=*)  set -- "$@" -f "${p#*=}" ;;
        writer.report=*) set -- "$@" -n "${p#*=}" ;;
        writer.seed=*)   set -- "$@" -s "${p#*=}" ;;
        writer.count=*)  set -- "$@" -c "${p#*=}" ;;
        writer.kick=*)   set -- "$@" -k "${p#*=}" ;;
        writer.stride=*) set -- "$@" -t "${p#*=}" ;;
    esac
done
# the device appears once virtio_blk has probed it
dev=/dev/vda
for p in $(cat /proc/cmdline); do
    case "$p" in writer.dev=*) dev="${p#*=}" ;; esac
done
i=0
while [ ! -b "$dev" ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
echo "init: booted in $(cut -d' ' -f1 /proc/uptime) s, starting the writer"
if /bin/linux-writer "$@"; then
    # a finite run (writer.count) keeps the machine up for inspection
    while :; do sleep 3600; done
fi
echo "init: writer failed"
# init exits: the kernel panics, panic=-1 reboots, -no-reboot ends QEMU
"""


class _Cpio:
    """A cpio "newc" archive, written in memory with fixed metadata.

    Fixed inode numbers and mtimes make the archive a function of its
    contents only, and device nodes need no mknod (hence no root).
    """

    def __init__(self) -> None:
        self.buf = io.BytesIO()
        self.ino = 0

    def _entry(self, name: str, mode: int, data: bytes = b"",
               rdev: tuple[int, int] = (0, 0)) -> None:
        self.ino += 1
        raw = name.encode() + b"\0"
        fields = (self.ino, mode, 0, 0, 1, 0, len(data), 0, 0, rdev[0],
                  rdev[1], len(raw), 0)
        header = b"070701" + b"".join(b"%08X" % f for f in fields)
        self.buf.write(header + raw)
        self.buf.write(b"\0" * (-(len(header) + len(raw)) % 4))
        self.buf.write(data)
        self.buf.write(b"\0" * (-len(data) % 4))

    def directory(self, name: str) -> None:
        self._entry(name, 0o040755)

    def file(self, name: str, data: bytes, executable: bool = False) -> None:
        self._entry(name, 0o100755 if executable else 0o100644, data)

    def chardev(self, name: str, major: int, minor: int) -> None:
        self._entry(name, 0o020600, rdev=(major, minor))

    def finish(self) -> bytes:
        self._entry("TRAILER!!!", 0)
        return self.buf.getvalue()


def build_writer(out: Path) -> Path:
    """Compile linux-writer.c to *out*.  Static: the initramfs has no libc
    to load a dynamic one with (and a test runs the same binary on the
    host)."""
    run(["gcc", "-static", "-O2", "-Wall", "-Wextra", "-Werror", "-o",
         out, WRITER_SOURCE], what=f"gcc -static {WRITER_SOURCE.name}")
    return out


def initramfs(layout: Layout, k: Kernel | None = None) -> Path:
    """The guest's initramfs for kernel *k* (built once per input hash)."""
    k = k or kernel()
    modules = module_load_order(k)
    h = hashlib.sha256(f"{FORMAT}\0{k.version}\0".encode())
    for blob in (INIT.encode(), WRITER_SOURCE.read_bytes(),
                 BUSYBOX.read_bytes(), *((k.modules / m).read_bytes()
                                         for m in modules)):
        h.update(hashlib.sha256(blob).digest())
    out = layout.root / "guest" / f"linux-{h.hexdigest()[:16]}" \
        / "initramfs.cpio.gz"
    if out.exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    writer = build_writer(out.parent / "linux-writer")

    cpio = _Cpio()
    for d in ("bin", "dev", "proc", "sys", "tmp", "lib", "lib/modules"):
        cpio.directory(d)
    cpio.chardev("dev/console", 5, 1)
    cpio.file("init", INIT.encode(), executable=True)
    cpio.file("bin/busybox", BUSYBOX.read_bytes(), executable=True)
    cpio.file("bin/linux-writer", writer.read_bytes(), executable=True)
    made = {"lib/modules"}
    for m in modules:
        parent = Path("lib/modules") / m
        for p in reversed(parent.parents[:-2]):
            if str(p) not in made:
                cpio.directory(str(p))
                made.add(str(p))
        cpio.file(f"lib/modules/{m}", (k.modules / m).read_bytes())
    cpio.file("modules.order", "".join(f"{m}\n" for m in modules).encode())
    # mtime=0: the same inputs give the same bytes
    write_atomic(out, gzip.compress(cpio.finish(), compresslevel=6,
                                    mtime=0))
    return out


# -- launching -------------------------------------------------------------

#: Guest RAM: enough for the kernel and an initramfs, small enough that
#: RAM migration stays quick.
MEMORY_MB = 256
MACHINE = "q35"


def qemu_args(layout: Layout, config: WriterConfig,
              k: Kernel | None = None) -> tuple[str, ...]:
    """QEMU arguments booting the writer guest, plus the iothread.

    ``-no-reboot`` with ``panic=-1``: if the writer fails, init exits, the
    kernel panics and QEMU exits, which a test notices instead of waiting
    on a guest that is gone.  ``quiet`` keeps the boot log (printed
    through an emulated UART, one exit or TCG call per byte) from costing
    seconds.  ``cryptomgr.notests`` skips every self-test of the kernel's
    crypto algorithms, nothing here depends on them: 0.8 s of a TCG boot
    (2.8 s against 3.6 s to /init, measured here).
    """
    k = k or kernel()
    append = (f"console=ttyS0 quiet panic=-1 mitigations=off "
              f"cryptomgr.notests {config.cmdline()}")
    return ("-kernel", str(boot_image(layout, k)),
            "-initrd", str(initramfs(layout, k)),
            "-append", append, "-no-reboot",
            "-object", f"iothread,id={IOTHREAD}")


def disk(node: str, size: int, file: Path | None = None,
         bitmaps: tuple[Bitmap, ...] = ()) -> Disk:
    """A virtio-blk disk on the iothread (the guest's /dev/vda if first)."""
    return Disk(node, size, file=file, bitmaps=bitmaps,
                device=f"virtio-blk-pci,iothread={IOTHREAD}")


# -- watching the writer ---------------------------------------------------

#: The background read period tests use.  Under TCG, with virtio-blk on an
#: iothread, a migration now and then (about one in 10-20, stock QEMU
#: 10.2.2 as well as patched) leaves the guest waiting for a completion
#: QEMU has already put in the used ring: the interrupt is lost.  A guest
#: with one request in flight then hangs for good; with the reader, the
#: next completion reaps it and the writer reports a stall instead (see
#: :func:`stalls`).  Real guests always have such other I/O.
KICK_MS = 1000


def stalls(serial_log: Path) -> list[str]:
    """The writer's "writer stall" lines: writes that took over 0.5 s."""
    return re.findall(r"^writer stall: .*$", serial_text(serial_log), re.M)


def started(serial_log: Path) -> bool:
    """The writer printed its first line: the kernel booted, the modules
    loaded and /dev/vda exists."""
    return "writer started" in serial_text(serial_log)


#: The writer's progress line, "W <completed writes>", in the serial log's
#: bytes (the console may end lines with \r\n).  Only a finished line
#: counts: the guest may be half-way through printing one.
PROGRESS_LINE = re.compile(rb"^W (\d+)\r?\n", re.M)


def last_count(data: bytes) -> int | None:
    """The last write count reported in *data*, a piece of the serial
    log; None if there is none."""
    counts = PROGRESS_LINE.findall(data)
    return int(counts[-1]) if counts else None


def progress(serial_log: Path) -> int:
    """The writer's last reported count of completed writes (0 before)."""
    try:
        return last_count(serial_log.read_bytes()) or 0
    except OSError:
        return 0


def _tail(serial_log: Path) -> str:
    return "\n".join(serial_text(serial_log).splitlines()[-15:])


def _check_alive(serial_log: Path) -> None:
    """A guest that failed fails the wait at once, with its last words,
    instead of when the deadline passes."""
    text = serial_text(serial_log)
    for bad in ("writer error", "init: writer failed", "Kernel panic"):
        if bad in text:
            raise LinuxGuestError(f"the guest failed ({bad}); end of "
                                  f"{serial_log}:\n{_tail(serial_log)}")


def _wait(serial_log: Path, probe_log: Callable[[Path], T],
          done: Callable[[T], bool], timeout: float, what: str) -> T:
    """Poll the serial log until *done*; a failed guest ends the wait at
    once, and a timeout says how the guest's output ends."""
    def probe() -> T:
        _check_alive(serial_log)
        return probe_log(serial_log)
    try:
        return until(probe, done, timeout, f"{what} in {serial_log}")
    except PollTimeout as e:
        raise GuestStuck(f"{e}; its end:\n{_tail(serial_log)}") from None


def wait_started(serial_log: Path, timeout: float = 120) -> float:
    """Wait for "writer started"; return the seconds it took from now."""
    t0 = time.monotonic()
    _wait(serial_log, started, bool, timeout, "'writer started'")
    return time.monotonic() - t0


def wait_progress(serial_log: Path, beyond: int, timeout: float = 60) -> int:
    """Wait until the writer reports more than *beyond* writes."""
    return _wait(serial_log, progress, lambda n: n > beyond, timeout,
                 f"writes beyond {beyond}")


# -- what the writer wrote -------------------------------------------------

def write_offsets(config: WriterConfig, start: int, stop: int) -> list[int]:
    """Byte offsets of writes number *start* to *stop* - 1.

    The same sequence as linux-writer.c: splitmix64, or with a stride
    ``(n * stride) % region`` rounded down to a block; *length* must be
    the explicit region length (0 would depend on the device size).
    """
    if config.length <= 0:
        raise ValueError("write_offsets needs an explicit region length")
    blocks = config.length // config.bs
    if config.stride:
        region = blocks * config.bs
        return [config.offset + (n * config.stride) % region
                // config.bs * config.bs for n in range(start, stop)]
    # splitmix64's state after n steps is seed + n * gamma: start there
    # rather than replaying the first *start* writes (a benchmark asks
    # for the next few writes over and over)
    gamma = 0x9E3779B97F4A7C15
    state = (config.seed + start * gamma) & MASK64
    out = []
    for _ in range(start, stop):
        state = (state + gamma) & MASK64
        z = state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
        z ^= z >> 31
        out.append(config.offset + (z % blocks) * config.bs)
    return out


def written_clusters(config: WriterConfig, start: int, stop: int,
                     cluster: int) -> set[int]:
    """Indices of the *cluster*-sized clusters writes [start, stop) touch."""
    out: set[int] = set()
    for off in write_offsets(config, start, stop):
        first, last = off // cluster, (off + config.bs - 1) // cluster
        out.update(range(first, last + 1))
    return out
