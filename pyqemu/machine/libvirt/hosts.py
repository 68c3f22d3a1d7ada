"""Two private libvirt "hosts" on one machine, for ``virsh migrate``.

Needs root and the packages of :data:`pyqemu.build.deps.LIBVIRT` (with
the ``libvirt-qemu`` user), which ``./run test`` and ``./run check
libvirt`` install; here a missing one is an error naming those commands.

Each host is a network namespace (the two joined by a veth pair, see
:class:`pyqemu.machine.netns.Link`) plus a mount and UTS namespace in
which private directories are bind-mounted over /etc/libvirt,
/run/libvirt, /var/lib/libvirt, /var/log/libvirt and /var/cache/libvirt.
Inside it run a ``virtlogd`` and a ``libvirtd --listen`` (TCP without auth
or TLS, which is only reachable from the peer namespace), each with its
own ``host_uuid``.  So libvirt sees two machines, and the machine's own
libvirt configuration (if any) is never read or written.

Where one of those directories does not exist on the machine (Debian's
``libvirt-daemon`` does not create them; ``libvirt-daemon-system`` would),
its parent is covered by an overlay whose upper layer is private, so the
mount point is made there and never on the machine's file system.

Ownership: the first process of a host (``virtlogd``) holds its
namespaces; ``libvirtd`` and, through it, every QEMU join them.  On exit
every process in one of our network namespaces is terminated (QEMU
included, whatever libvirt thought of it), then the namespaces and the
private directories are removed.  The namespaces are a Link's with the
tag ``lv...``, which :func:`pyqemu.machine.netns.sweep_stale` leaves
alone; :func:`sweep` here removes those of a run that no longer exists
(a killed earlier run), with their directories.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from ...build import deps
from ...errors import PyqemuError
from ...paths import cache_root
from ...util.files import write_atomic
from ...util.poll import until
from ...util.proc import die_with_parent, run
from .. import netns
from ..netns import Link
from .monitorlog import MonitorLog

#: Link tag of the libvirt hosts: "lv" and hex digits, so Link's own
#: sweep (hex tags only) never takes them for its own.
TAG_PREFIX = "lv"
#: Namespaces and directories carry the creating process's pid, so a
#: sweep can tell leftovers of dead runs from live ones.
NS_RE = re.compile(rf"^pq-(\d+)-{TAG_PREFIX}[0-9a-f]+-[ab]$")
TMP_PREFIX = "pq-lv-"
TCP_PORT = 16509

#: machine path -> name of the private directory bound over it
PRIVATE_DIRS = {
    "/etc/libvirt": "etc",
    "/run/libvirt": "run",
    "/var/lib/libvirt": "lib",
    "/var/log/libvirt": "log",
    "/var/cache/libvirt": "cache",
}

#: Runs as the first process of a host: private mounts, a hostname of its
#: own, then exec of the given command (virtlogd).  $1 is the host's
#: private directory, $2 its hostname.
_SETUP = r"""
set -eu
root=$1; name=$2; shift 2
mount --make-rprivate /
for pair in /etc/libvirt:etc /run/libvirt:run /var/lib/libvirt:lib \
            /var/log/libvirt:log /var/cache/libvirt:cache; do
    target=${pair%%:*}
    if [ ! -d "$target" ]; then
        parent=$(dirname "$target")
        key=$(echo "$parent" | tr / _)
        if [ ! -d "$root/ovl/$key" ]; then
            mkdir -p "$root/ovl/$key/up" "$root/ovl/$key/work"
            mount -t overlay overlay -o \
"lowerdir=$parent,upperdir=$root/ovl/$key/up,workdir=$root/ovl/$key/work" \
                "$parent"
        fi
        mkdir "$target"
    fi
    mount --bind "$root/${pair##*:}" "$target"
done
hostname "$name"
exec "$@"
"""


class LibvirtError(PyqemuError):
    """A libvirt host or step failed; the message names the step."""


def tail(text: str, lines: int = 15) -> str:
    """The end of a log or stderr: where daemons and tools say why."""
    return "\n".join(text.strip().splitlines()[-lines:])


def sweep() -> list[str]:
    """Remove namespaces and directories of earlier runs whose process is
    gone (a run killed before its clean-up).  Returns what was removed.

    Domains left in such a namespace get SIGTERM first, like at a normal
    exit; nothing of a live run (its pid exists) is touched."""
    removed = []
    names = sorted(p.name for p in netns.NETNS_DIR.iterdir()) \
        if netns.NETNS_DIR.is_dir() else []
    for name in names:
        m = NS_RE.match(name)
        if m and not netns.pid_alive(int(m.group(1))):
            netns.remove(name, grace=2)
            removed.append(name)
    for d in Path(tempfile.gettempdir()).glob(f"{TMP_PREFIX}*"):
        m = re.match(rf"{TMP_PREFIX}(\d+)-", d.name)
        if m and not netns.pid_alive(int(m.group(1))):
            shutil.rmtree(d, ignore_errors=True)
            removed.append(str(d))
    return removed


#: Where libvirtd caches what it probed of each QEMU binary, inside a host
CAPS_DIR = Path("cache") / "qemu" / "capabilities"


def caps_store(libvirtd: str) -> Path:
    """The persistent copy of the capabilities cache of *libvirtd* (a
    name on PATH or a path).

    A fresh host's libvirtd probes every QEMU binary it meets: it starts
    each one and asks it over QMP for everything, 4 s a binary under
    TCG here, 8 s for the first ``virsh capabilities`` (Debian's two
    qemu-system binaries).  Every :class:`Hosts` starts fresh hosts, so
    the tests paid that again and again for the same binaries.  Hosts
    now start with the cache their libvirtd left last time and give back
    what it added.  libvirt itself decides whether an entry still holds:
    it checks the QEMU binary's ctime, its own ctime and version, and,
    for an entry probed where /dev/kvm answers (as it does here), the
    host's kernel, microcode and CPU; it probes again on any change, and
    when an entry does not load (one cut short by a killed libvirtd).  One
    store per libvirtd binary (by path, size and mtime), since each
    would find the other's entries stale and overwrite them.

    The host CPU it checks is the CPUID it read when it started, and on
    this machine leaf 0x1f's EDX (the x2APIC ID of the CPU that asks)
    differs between the two CPUs: every entry made by a libvirtd started
    on the other CPU was stale (2 probes in 2 starts here).  So libvirtd
    starts on the first CPU this process may use and is let onto all of
    them once it answers."""
    found = shutil.which(libvirtd, path=os.pathsep.join(
        (os.environ.get("PATH", ""), "/usr/sbin", "/sbin"))) or libvirtd
    key = found
    with contextlib.suppress(OSError):
        st = os.stat(found)
        key += f"\0{st.st_size}\0{st.st_mtime_ns}"
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return cache_root() / "libvirt-caps" / digest


def _copy_new(src: Path, dst: Path) -> None:
    """Each file of *src* that *dst* lacks or holds other bytes of,
    copied there atomically: hosts of other test workers read *dst*
    meanwhile and write it too (last one wins, both valid)."""
    if not src.is_dir():
        return
    dst.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        if f.suffix != ".xml" or not f.is_file():
            continue
        data = f.read_bytes()
        target = dst / f.name
        with contextlib.suppress(OSError):
            if target.read_bytes() == data:
                continue
        write_atomic(target, data, 0o600)


def _unpin(pid: int) -> None:
    """Let every thread of *pid* run on every CPU this process may use (a
    thread that ends meanwhile is no matter; threads it starts later
    inherit the mask of the thread that starts them)."""
    cpus = os.sched_getaffinity(0)
    for tid in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(ProcessLookupError):
            os.sched_setaffinity(int(tid), cpus)


def _started(what: str, ready: Callable[[], bool], timeout: float,
             proc: subprocess.Popen[str], log: Path) -> None:
    """Wait until *ready*; a daemon that exits first fails at once, with
    its stderr and log tail rather than a timeout."""
    state = until(lambda: "exited" if proc.poll() is not None
                  else "ready" if ready() else "starting",
                  lambda s: s != "starting", timeout, what)
    if state == "exited":
        err = proc.stderr.read() if proc.stderr else ""
        text = log.read_text(errors="replace") if log.exists() else ""
        raise LibvirtError(f"{what}: exited {proc.returncode}: "
                           f"{tail(err + text)}")


@dataclass
class Host:
    """One libvirt host: its namespaces, private directories and daemons."""

    name: str                   # "a" or "b"
    ns: str                     # network namespace
    addr: str                   # its address on the veth link
    root: Path                  # private directories live here
    path: str                   # PATH for tools run on this host
    host_uuid: str = field(default_factory=lambda: str(uuid.uuid4()))
    #: the libvirtd this host runs: Debian's (by name) or a build's
    #: binary, which finds its own driver modules in its build tree
    libvirtd: str = "libvirtd"
    anchor: subprocess.Popen[str] | None = None     # virtlogd
    daemon: subprocess.Popen[str] | None = None     # libvirtd

    @property
    def uri(self) -> str:
        """How the peer reaches this host's libvirtd."""
        return f"qemu+tcp://{self.addr}/system"

    @property
    def env(self) -> dict[str, str]:
        """Tools by this host's PATH (the build under test first),
        untranslated messages, which the checks parse, and a private
        TMPDIR: virtnbdbackup leaves a qemu-nbd/qemu-img log file in the
        temporary directory on every run, and :class:`Hosts` removes
        this one."""
        return dict(os.environ, PATH=self.path, LC_ALL="C",
                    TMPDIR=str(self.root / "tmp"))

    def private(self, machine_path: str) -> Path:
        """Where a machine path such as /var/lib/libvirt/images is, seen
        from outside this host's mount namespace."""
        for prefix, sub in PRIVATE_DIRS.items():
            if machine_path == prefix or machine_path.startswith(prefix + "/"):
                return self.root / sub / machine_path[len(prefix):].lstrip("/")
        raise ValueError(f"{machine_path} is not private to host {self.name}")

    def enter(self) -> list[str]:
        """Prefix that runs a command inside this host's namespaces."""
        if self.anchor is None:
            raise LibvirtError(f"host {self.name} is not running")
        return ["nsenter", "-t", str(self.anchor.pid), "-m", "-n", "-u",
                "--"]

    def run(self, step: str, *argv: str, timeout: float = 120,
            check: bool = True) -> subprocess.CompletedProcess[str]:
        """*argv* on this host; a failure names the step and the host."""
        what = f"[host {self.name}] {step}"
        try:
            return run(self.enter() + list(argv), env=self.env,
                       timeout=timeout, check=check, what=what)
        except subprocess.TimeoutExpired as e:
            err = e.stderr.decode(errors="replace") if isinstance(
                e.stderr, bytes) else (e.stderr or "")
            raise LibvirtError(f"{what}: no result in {timeout:.0f} s: "
                               f"{tail(err)}") from None

    def virsh(self, step: str, *args: str, timeout: float = 120,
              check: bool = True) -> str:
        """``virsh`` against this host's own libvirtd; its stdout."""
        return self.run(step, "virsh", "-c", "qemu:///system", *args,
                        timeout=timeout, check=check).stdout

    def completed_job(self, dom: str) -> dict[str, str]:
        """``virsh domjobinfo --completed`` of *dom* as key: value, keys
        as virsh prints them ("Time elapsed", "Total downtime"), values
        with their units ("12 ms").  On the destination of a migration
        this is libvirt's own account of it.  A virsh failure is not
        raised: the figures are extras of a record the caller has
        already gathered, so they come back empty (missing keys) rather
        than losing that record."""
        out = self.virsh("domjobinfo --completed", "domjobinfo", dom,
                         "--completed", check=False)
        info = {}
        for line in out.splitlines():
            if ":" in line:
                k, v = line.split(":", 1)
                info[k.strip()] = v.strip()
        return info

    def popen(self, *argv: str) -> subprocess.Popen[str]:
        """*argv* on this host, running on: a job to watch (virsh migrate)."""
        return subprocess.Popen(self.enter() + list(argv),
                                stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True,
                                env=self.env, preexec_fn=die_with_parent())

    # -- start ---------------------------------------------------------

    def _write_config(self, qemu_conf_extra: str) -> None:
        for sub in PRIVATE_DIRS.values():
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        (self.root / "lib" / "images").mkdir(exist_ok=True)
        (self.root / "tmp").mkdir(exist_ok=True)
        etc = self.root / "etc"
        # Listening on TCP without auth is acceptable only because the
        # address exists in our private namespace pair and nowhere else.
        (etc / "libvirtd.conf").write_text(
            'listen_tls = 0\nlisten_tcp = 1\n'
            f'listen_addr = "{self.addr}"\ntcp_port = "{TCP_PORT}"\n'
            'auth_tcp = "none"\nauth_unix_ro = "none"\n'
            'auth_unix_rw = "none"\n'
            f'host_uuid = "{self.host_uuid}"\n'
            # QMP traffic at debug level: the evidence of what libvirt
            # asked QEMU to do (capabilities, block-bitmap-mapping).
            'log_filters = "1:qemu.qemu_monitor 3:*"\n'
            'log_outputs = "1:file:/var/log/libvirt/libvirtd.log"\n')
        (etc / "virtlogd.conf").write_text(
            'log_outputs = "3:file:/var/log/libvirt/virtlogd.log"\n')
        # No dropping of privileges, no SELinux/AppArmor labels, no
        # private /dev, no cgroups: none of them exist in this sandbox,
        # and none matter to what is measured.
        (etc / "qemu.conf").write_text(
            'user = "root"\ngroup = "root"\ndynamic_ownership = 0\n'
            'remember_owner = 0\nsecurity_driver = "none"\n'
            'namespaces = [ ]\ncgroup_controllers = [ ]\n'
            f'migration_address = "{self.addr}"\n'
            f'migration_host = "{self.addr}"\n'
            'migration_port_min = 49152\nmigration_port_max = 49215\n'
            + qemu_conf_extra)

    def start(self, qemu_conf_extra: str = "") -> None:
        """virtlogd (holding fresh mount/UTS namespaces inside the network
        namespace), then libvirtd; return once libvirtd answers.  Both die
        with this process (PR_SET_PDEATHSIG survives their exec chain);
        the QEMUs libvirtd daemonizes do not, and are killed by
        :meth:`stop` or the next :func:`sweep`."""
        self._write_config(qemu_conf_extra)
        with contextlib.suppress(OSError):     # a cache: probing is the fallback
            _copy_new(caps_store(self.libvirtd), self.root / CAPS_DIR)
        argv = ["ip", "netns", "exec", self.ns, "unshare", "--mount", "--uts",
                "--propagation", "private", "--", "sh", "-c", _SETUP, "setup",
                str(self.root), f"pq-host-{self.name}", "virtlogd"]
        self.anchor = subprocess.Popen(argv, stdin=subprocess.DEVNULL,
                                       stdout=subprocess.DEVNULL,
                                       stderr=subprocess.PIPE, text=True,
                                       preexec_fn=die_with_parent())
        _started(f"[host {self.name}] start virtlogd",
                 lambda: (self.root / "run" / "virtlogd-sock").exists(), 30,
                 self.anchor, self.root / "log" / "virtlogd.log")
        # Started on one CPU, see :func:`caps_store`; unpinned below
        first = str(min(os.sched_getaffinity(0)))
        argv = self.enter() + ["taskset", "-c", first, self.libvirtd,
                               "--listen", "--pid-file",
                               "/run/libvirt/libvirtd.pid"]
        self.daemon = subprocess.Popen(argv, stdin=subprocess.DEVNULL,
                                       stdout=subprocess.DEVNULL,
                                       stderr=subprocess.PIPE, text=True,
                                       env=self.env,
                                       preexec_fn=die_with_parent())
        _started(f"[host {self.name}] start libvirtd", self._answers, 60,
                 self.daemon, self.root / "log" / "libvirtd.log")
        _unpin(self.daemon.pid)

    def _answers(self) -> bool:
        sock = self.root / "run" / "libvirt-sock"
        if not sock.exists():
            return False
        try:
            with socket.socket(socket.AF_UNIX) as s:
                s.connect(str(sock))
        except OSError:
            return False
        return self.run("virsh uri", "virsh", "-c", "qemu:///system", "uri",
                        timeout=30, check=False).returncode == 0

    def stop(self) -> None:
        """Terminate everything in the namespace (QEMU closes its images),
        then reap the daemons this process started."""
        netns.kill_inside(self.ns, grace=10)
        for p in (self.daemon, self.anchor):
            if p is not None:
                try:
                    p.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
                if p.stderr:
                    p.stderr.close()
        if self.daemon is not None:
            with contextlib.suppress(OSError):
                _copy_new(self.root / CAPS_DIR, caps_store(self.libvirtd))

    def log(self, name: str = "libvirtd.log") -> str:
        """One of this host's libvirt logs (libvirtd's holds its QMP)."""
        path = self.root / "log" / name
        return path.read_text(errors="replace") if path.exists() else ""

    def log_mark(self) -> int:
        """Where libvirtd's log ends now: give it to :meth:`monitor_log`
        to read only what a later step logged."""
        return len(self.log())

    def monitor_log(self, since: int = 0) -> MonitorLog:
        """The QMP traffic between libvirtd and its QEMUs that libvirtd
        logged after *since* (a :meth:`log_mark`): what libvirt asked
        QEMU to do, and QEMU's replies (``log_filters`` above logs the
        monitor at debug level)."""
        return MonitorLog(self.log()[since:])


def _terminate(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


class Hosts:
    """``with Hosts() as (a, b)``: two running libvirt hosts.

    A fresh directory under /tmp holds the private directories, ``bin/``
    (first on each host's PATH: see :meth:`use_tools`) and ``shared/``,
    which both hosts see at the same path: shared storage.

    On exit (or a failure while starting) everything is undone in reverse
    order: the hosts stop (every process in their namespaces), the link
    and the namespaces go, the directory goes.  A host that fails to stop
    does not keep the rest from being undone; its error is raised
    afterwards, unless an exception is already on its way (which says
    more).
    """

    def __init__(self, qemu_conf_extra: str = "",
                 libvirtd: dict[str, Path] | None = None) -> None:
        """*libvirtd*: a libvirtd binary per host ("a", "b") to run instead
        of Debian's (a host not named runs Debian's)."""
        self.tag = f"{TAG_PREFIX}{random.randrange(1 << 16):04x}"
        self.qemu_conf_extra = qemu_conf_extra
        self.libvirtd = dict(libvirtd or {})
        self.workdir = Path(tempfile.mkdtemp(
            prefix=f"{TMP_PREFIX}{os.getpid()}-", dir=tempfile.gettempdir()))
        self.shared = self.workdir / "shared"
        self.bindir = self.workdir / "bin"
        self.link: Link | None = None
        self.hosts: list[Host] = []
        self._undo = contextlib.ExitStack()
        self._stop_errors: list[str] = []

    def __enter__(self) -> tuple[Host, Host]:
        with contextlib.ExitStack() as undo:
            undo.callback(shutil.rmtree, self.workdir, ignore_errors=True)
            # SIGTERM (a CI timeout, `timeout`, kill) must run the
            # clean-up like an exception does, not leave daemons and VMs
            # behind
            if threading.current_thread() is threading.main_thread():
                old = signal.signal(signal.SIGTERM, _terminate)
                undo.callback(signal.signal, signal.SIGTERM, old)
            undo.push(self._raise_stop_errors)
            if os.geteuid() != 0:
                raise LibvirtError("libvirt hosts need root (namespaces)")
            deps.require(deps.LIBVIRT)
            sweep()
            self.shared.mkdir()
            self.bindir.mkdir()
            self.link = undo.enter_context(Link(rate=None, tag=self.tag))
            path = ":".join([str(self.bindir),
                             os.environ.get("PATH", "/usr/bin:/bin"),
                             "/usr/sbin", "/sbin"])
            for side in "ab":
                h = Host(side, self.link.ns[side], self.link.addr[side],
                         self.workdir / side, path,
                         libvirtd=str(self.libvirtd.get(side, "libvirtd")))
                self.hosts.append(h)
                undo.callback(self._stop, h)
                h.start(self.qemu_conf_extra)
            self._undo = undo.pop_all()
        return self.hosts[0], self.hosts[1]

    def _stop(self, h: Host) -> None:
        try:
            h.stop()
        except Exception as e:      # go on: the rest must go too
            self._stop_errors.append(f"host {h.name}: {e}")

    def _raise_stop_errors(self, exc_type: type[BaseException] | None,
                           exc: BaseException | None,
                           tb: TracebackType | None) -> bool:
        errors, self._stop_errors = self._stop_errors, []
        if errors and exc_type is None:
            raise LibvirtError("clean-up: " + "; ".join(errors))
        return False

    def use_tools(self, tools: dict[str, Path]) -> None:
        """Put *tools* (name -> binary) first on every host's PATH.

        virtnbdbackup and virtnbdrestore run ``qemu-img`` and ``qemu-nbd``
        by name; they must be the build under test, not Debian's 7.2."""
        for name, target in tools.items():
            link = self.bindir / name
            link.unlink(missing_ok=True)
            link.symlink_to(target)

    def __iter__(self) -> Iterator[Host]:
        return iter(self.hosts)

    def __exit__(self, exc_type: type[BaseException] | None,
                 exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._undo.__exit__(exc_type, exc, tb)
