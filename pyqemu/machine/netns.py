"""Two network namespaces joined by a veth pair, for migrations that cross
a (rate-limited, cuttable) link instead of a unix socket.

Everything is created with unique names and addresses from a private
range, and removed on exit, whatever happened: the processes still inside
the namespaces are killed first, and namespaces left by a pyqemu that
died (``pq-<pid>-...`` of a pid that is gone) are swept on the next
start.  Needs root (CI is root) and the packages of
:data:`pyqemu.build.deps.NETNS`, which the ``./run`` commands install.  The
kernel has tbf (no netem), so the link gets a token-bucket rate limit.

TCP gives up on an unreachable peer only after ``tcp_retries2``
retransmissions (15 by default: many minutes).  Both namespaces get a
small value, so that a migration over a cut link fails by itself within
seconds; the destination, which only reads, needs keep-alive on its
socket for the same (:meth:`Link.channels`).
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from ..build import deps
from ..errors import PyqemuError
from ..paths import REPO
from ..util.poll import PollTimeout, until
from ..util.proc import run

NETNS_DIR = Path("/run/netns")
#: The namespaces of a Link with a hex tag (the default).  Other tags
#: (the libvirt hosts' ``lv...``, see pyqemu.machine.libvirt) never match:
#: their owner sweeps them, with its own grace for the domains inside.
OURS = re.compile(r"^pq-(\d+)-[0-9a-f]+-[ab]$")
#: Retransmissions before TCP reports ETIMEDOUT (RTO 200 ms doubling:
#: about 6 s in all).
TCP_RETRIES2 = 4
#: TCP keep-alive on the migration sockets: the destination only reads,
#: so without it a dead link leaves it waiting for ever.
KEEPALIVE = {"keep-alive": True, "keep-alive-idle": 1,
             "keep-alive-interval": 1, "keep-alive-count": 3}
#: The port a destination listens on, inside its own namespace.
MIGRATION_PORT = 4444


class NetnsError(PyqemuError):
    """The namespaces could not be set up (not root, no iproute2...)."""


def _ip(*args: str) -> str:
    return run(["ip", *args], what=f"ip {' '.join(args[:4])}").stdout


def pid_alive(pid: int) -> bool:
    """Whether process *pid* exists: what tells a stale namespace (its
    creator is gone) from one in use."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def kill_inside(ns: str, grace: float = 0) -> None:
    """SIGKILL every process in namespace *ns* and wait until none is left.

    With *grace*, SIGTERM first and SIGKILL only for what is still there
    after *grace* seconds: a QEMU that is terminated closes its images
    cleanly (a libvirt host's domains, whose disks are compared later).
    """
    def pids() -> list[int]:
        res = run(["ip", "netns", "pids", ns], check=False)
        return [int(p) for p in res.stdout.split()]

    rounds = ((signal.SIGTERM, grace),) if grace > 0 else ()
    for sig, wait in rounds + ((signal.SIGKILL, 10.0),):
        for pid in pids():
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        try:
            until(pids, lambda left: not left, wait,
                  f"processes in {ns} to die of {sig.name}")
            return
        except PollTimeout as e:
            if sig == signal.SIGKILL:
                raise NetnsError(str(e)) from None


def remove(ns: str, grace: float = 0) -> None:
    """Kill what runs in *ns* (see :func:`kill_inside`), then delete it."""
    kill_inside(ns, grace)
    run(["ip", "netns", "del", ns], check=False)


def sweep_stale() -> list[str]:
    """Remove the namespaces of pyqemu processes that no longer exist."""
    swept = []
    names = sorted(p.name for p in NETNS_DIR.iterdir()) \
        if NETNS_DIR.is_dir() else []
    for name in names:
        m = OURS.match(name)
        if m and not pid_alive(int(m.group(1))):
            remove(name)
            swept.append(name)
    return swept


@dataclass
class Link:
    """Namespaces ``a`` (source side) and ``b`` (destination side)."""

    rate: str | None = "100mbit"
    tag: str = field(default_factory=lambda: f"{random.randrange(1 << 16):04x}")
    #: what __exit__ undoes: set by __enter__
    _cleanup: contextlib.ExitStack = field(
        default_factory=contextlib.ExitStack, init=False, repr=False)

    def __post_init__(self) -> None:
        octet = random.randrange(1, 250)
        pid = os.getpid()
        self.ns = {s: f"pq-{pid}-{self.tag}-{s}" for s in "ab"}
        self.dev = {s: f"pq{self.tag}{s}" for s in "ab"}
        self.addr = {"a": f"10.251.{octet}.1", "b": f"10.251.{octet}.2"}

    def wrapper(self, side: str) -> tuple[str, ...]:
        """Prefix that runs a command inside one namespace."""
        return ("ip", "netns", "exec", self.ns[side])

    def channels(self, port: int = MIGRATION_PORT) -> list[dict]:
        """The destination's address (side ``b``) as migration channels
        with keep-alive, for ``migrate`` and ``migrate-incoming`` alike: a
        migration over this link notices a cut by itself."""
        return [{"channel-type": "main", "addr": {
            "transport": "socket", "type": "inet", "host": self.addr["b"],
            "port": str(port), **KEEPALIVE}}]

    def __enter__(self) -> "Link":
        if os.geteuid() != 0:
            raise NetnsError("network namespaces need root")
        deps.require(deps.NETNS)
        sweep_stale()
        # each namespace is removed on exit (or on a failure half-way)
        # once it exists; removing it takes its veth end with it
        with contextlib.ExitStack() as stack:
            for side in "ab":
                _ip("netns", "add", self.ns[side])
                stack.callback(remove, self.ns[side])
            _ip("link", "add", self.dev["a"], "netns", self.ns["a"], "type",
                "veth", "peer", "name", self.dev["b"], "netns", self.ns["b"])
            for side in "ab":
                ns, dev = self.ns[side], self.dev[side]
                _ip("-n", ns, "addr", "add", f"{self.addr[side]}/30", "dev",
                    dev)
                _ip("-n", ns, "link", "set", "lo", "up")
                _ip("-n", ns, "link", "set", dev, "up")
                run([*self.wrapper(side), "sysctl", "-q", "-w",
                     f"net.ipv4.tcp_retries2={TCP_RETRIES2}"])
                self._limit(side)
            self._cleanup = stack.pop_all()
        return self

    def _limit(self, side: str) -> None:
        """The link's rate limit on one side (or none)."""
        ns, dev = self.ns[side], self.dev[side]
        if self.rate:
            run(["tc", "-n", ns, "qdisc", "replace", "dev", dev, "root",
                 "tbf", "rate", self.rate, "burst", "64kb", "latency",
                 "200ms"])
        else:
            run(["tc", "-n", ns, "qdisc", "del", "dev", dev, "root"],
                check=False)

    def drop(self, percent: int) -> None:
        """Drop *percent* of the packets that arrive on either side (100:
        a partition, the link up but nothing getting through), with
        nftables: these kernels have no ``tc netem``."""
        rule = ("drop" if percent >= 100 else
                f"numgen random mod 100 < {percent} drop")
        for side in "ab":
            run([*self.wrapper(side), "nft", "-f", "-"], input=(
                "table inet pqdrop {\n"
                " chain input {\n"
                "  type filter hook input priority 0;\n"
                f"  iifname \"{self.dev[side]}\" {rule}\n"
                " }\n"
                "}\n"))

    def undrop(self) -> None:
        """Undo :meth:`drop`."""
        for side in "ab":
            run([*self.wrapper(side), "nft", "delete", "table", "inet",
                 "pqdrop"], check=False)

    def limit(self, rate: str | None) -> None:
        """Change the link's rate limit (``tc tbf``; None: none)."""
        self.rate = rate
        for side in "ab":
            self._limit(side)

    @contextlib.contextmanager
    def delayed(self, seconds: float, port: int = MIGRATION_PORT
                ) -> Iterator[list[dict]]:
        """A relay on side ``b`` that forwards to *port* there with
        *seconds* more latency each way (:mod:`pyqemu.machine.relay`);
        yields the channels a source connects to instead of
        :meth:`channels`."""
        relay_port = port + 100
        proc = subprocess.Popen(
            [*self.wrapper("b"), sys.executable, "-m", "pyqemu.machine.relay",
             f"{self.addr['b']}:{relay_port}", f"{self.addr['b']}:{port}",
             str(seconds)], stdout=subprocess.PIPE, text=True,
            env=dict(os.environ, PYTHONPATH=str(REPO)))
        try:
            assert proc.stdout is not None
            if proc.stdout.readline().strip() != "ready":
                raise NetnsError("the delaying relay did not start")
            yield self.channels(relay_port)
        finally:
            proc.kill()
            proc.wait()

    def cut(self) -> None:
        """Take the link down on the source side: packets stop flowing."""
        _ip("-n", self.ns["a"], "link", "set", self.dev["a"], "down")

    def restore(self) -> None:
        """Bring the link up again and wait until the veth carries."""
        _ip("-n", self.ns["a"], "link", "set", self.dev["a"], "up")
        until(lambda: _ip("-n", self.ns["a"], "link", "show", self.dev["a"]),
              lambda out: "LOWER_UP" in out, 5, f"{self.dev['a']} carrier")

    def __exit__(self, *exc: object) -> None:
        self._cleanup.close()
