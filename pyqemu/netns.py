"""Two network namespaces joined by a veth pair, for migrations that cross
a (rate-limited, cuttable) link instead of a unix socket.

Everything is created with unique names and addresses from a private
range, and removed on exit, whatever happened.  Needs root (CI is root).
The kernel has tbf (no netem), so the link gets a token-bucket rate limit.
"""

from __future__ import annotations

import os
import random
import subprocess
import time
from dataclasses import dataclass, field

from . import deps


class NetnsError(RuntimeError):
    """The namespaces could not be set up (not root, no iproute2...)."""


def _ip(*args: str) -> None:
    res = subprocess.run(["ip", *args], capture_output=True, text=True,
                         check=False)
    if res.returncode != 0:
        raise NetnsError(f"ip {' '.join(args)}: {res.stderr.strip()}")


@dataclass
class Link:
    """Namespaces ``a`` (source side) and ``b`` (destination side)."""

    rate: str | None = "100mbit"
    tag: str = field(default_factory=lambda: f"{os.getpid() % 100000}"
                                             f"{random.randrange(100):02d}")

    def __post_init__(self) -> None:
        octet = random.randrange(1, 250)
        self.ns = {"a": f"pq-{self.tag}-a", "b": f"pq-{self.tag}-b"}
        self.dev = {"a": f"pq{self.tag}a", "b": f"pq{self.tag}b"}
        self.addr = {"a": f"10.251.{octet}.1", "b": f"10.251.{octet}.2"}
        self._up = False

    def wrapper(self, side: str) -> tuple[str, ...]:
        """Prefix that runs a command inside one namespace."""
        return ("ip", "netns", "exec", self.ns[side])

    def __enter__(self) -> "Link":
        deps.ensure(("iproute2",))
        if os.geteuid() != 0:
            raise NetnsError("network namespaces need root")
        try:
            for side in "ab":
                _ip("netns", "add", self.ns[side])
            _ip("link", "add", self.dev["a"], "netns", self.ns["a"], "type",
                "veth", "peer", "name", self.dev["b"], "netns", self.ns["b"])
            for side in "ab":
                ns, dev = self.ns[side], self.dev[side]
                _ip("-n", ns, "addr", "add", f"{self.addr[side]}/30", "dev",
                    dev)
                _ip("-n", ns, "link", "set", "lo", "up")
                _ip("-n", ns, "link", "set", dev, "up")
                if self.rate:
                    subprocess.run(
                        ["tc", "-n", ns, "qdisc", "add", "dev", dev, "root",
                         "tbf", "rate", self.rate, "burst", "64kb",
                         "latency", "200ms"], check=True, capture_output=True)
            self._up = True
        except BaseException:
            self.__exit__()
            raise
        return self

    def cut(self) -> None:
        """Take the link down on the source side: packets stop flowing."""
        _ip("-n", self.ns["a"], "link", "set", self.dev["a"], "down")

    def restore(self) -> None:
        _ip("-n", self.ns["a"], "link", "set", self.dev["a"], "up")
        # veth needs a moment before traffic flows again
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            res = subprocess.run(["ip", "-n", self.ns["a"], "link", "show",
                                  self.dev["a"]], capture_output=True,
                                 text=True, check=False)
            if "LOWER_UP" in res.stdout:
                return
            time.sleep(0.05)

    def __exit__(self, *exc: object) -> None:
        for side in "ab":
            subprocess.run(["ip", "netns", "del", self.ns[side]],
                           capture_output=True, check=False)
