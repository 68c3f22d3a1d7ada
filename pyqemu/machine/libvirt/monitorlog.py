"""What libvirtd logged of its QMP traffic with QEMU.

libvirt decides on its own which migration capabilities and parameters it
gives QEMU (``dirty-bitmaps``, ``block-bitmap-mapping``...), and polls
``query-migrate`` itself during ``virsh migrate``.  Asking QEMU afterwards
shows only the final state, so the evidence of what libvirt did is its
own debug log: the hosts (:mod:`.hosts`) configure
``log_filters = "1:qemu.qemu_monitor"``, which logs every QMP message
libvirt sends and every reply it receives, one line each::

    ... QEMU_MONITOR_SEND_MSG: mon=0x7f.. msg={"execute":...,"id":"libvirt-9"}
    ... QEMU_MONITOR_RECV_REPLY: mon=0x7f.. reply={"return": ..., "id": ...}
    ... QEMU_MONITOR_RECV_EVENT: mon=0x7f.. event={"timestamp": {"seconds":
        1796475411, "microseconds": 50806}, "event": "STOP"}

Events carry QEMU's own timestamp (the host's real-time clock, taken when
QEMU emitted them), so the source's ``STOP`` and the destination's
``RESUME`` can be set against each other although two libvirtds logged
them: the guest-visible downtime, without libvirt's own latency in
reading them.  One libvirtd talks to every QEMU of its host; ``mon=`` tells
the monitors (the QEMUs) apart, and :meth:`MonitorLog.monitors` finds the
ones a domain's QEMU used by what libvirt sent it (an image path, say).

The JSON runs to the end of its object; libvirt may append more on the
line (``\\r\\n fd=-1``), so each object is decoded with ``raw_decode``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

_SENT = re.compile(r"QEMU_MONITOR_SEND_MSG: mon=(\S+) msg=(\{.*)")
_REPLY = re.compile(r"QEMU_MONITOR_RECV_REPLY: mon=(\S+) reply=(\{.*)")
_EVENT = re.compile(r"QEMU_MONITOR_RECV_EVENT: mon=(\S+) event=(\{.*)")


@dataclass(frozen=True)
class Event:
    """One QMP event as libvirtd received it."""

    mon: str                    # libvirt's monitor: which QEMU sent it
    name: str                   # "STOP", "RESUME", "MIGRATION", ...
    timestamp: float            # QEMU's, in seconds since the epoch
    data: dict[str, Any] = field(default_factory=dict)


def _lines(text: str, pattern: re.Pattern[str], contains: str = ""
           ) -> Iterator[tuple[str, dict[str, Any]]]:
    """(monitor, JSON object) of the lines *pattern* matches; only lines
    with *contains* are decoded (libvirt's capability probes log replies
    of hundreds of KiB)."""
    decoder = json.JSONDecoder()
    for line in text.splitlines():
        if contains not in line:
            continue
        m = pattern.search(line)
        if m:
            obj, _ = decoder.raw_decode(m.group(2))
            if isinstance(obj, dict):
                yield m.group(1), obj


def _objects(text: str, pattern: re.Pattern[str],
             contains: str = "") -> Iterator[dict[str, Any]]:
    return (obj for _, obj in _lines(text, pattern, contains))


class MonitorLog:
    """A piece of one libvirtd's log (see :meth:`.hosts.Host.monitor_log`),
    read as the QMP messages in it, oldest first."""

    def __init__(self, text: str) -> None:
        self.text = text

    def sent(self, command: str | None = None) -> list[dict[str, Any]]:
        """The QMP commands libvirt sent (only *command*'s, if given)."""
        if command is None:
            return list(_objects(self.text, _SENT))
        return [m for m in _objects(self.text, _SENT, f'"{command}"')
                if m.get("execute") == command]

    def replies(self) -> list[dict[str, Any]]:
        """QEMU's replies to libvirt (``return`` or ``error``), in order."""
        return list(_objects(self.text, _REPLY))

    def last_return_with(self, key: str) -> dict[str, Any] | None:
        """The ``return`` of the last reply whose return object has *key*:
        e.g. ``"dirty-bitmaps"`` finds the last ``query-migrate`` libvirt
        made of a QEMU that reports bitmap statistics."""
        found = None
        for r in _objects(self.text, _REPLY, f'"{key}"'):
            ret = r.get("return")
            if isinstance(ret, dict) and key in ret:
                found = ret
        return found

    def events(self, name: str | None = None,
               mons: set[str] | None = None) -> list[Event]:
        """The QMP events QEMU sent libvirt (only *name*'s, only from the
        monitors in *mons*, if given), oldest first."""
        out = []
        for mon, obj in _lines(self.text, _EVENT,
                               f'"{name}"' if name else ""):
            if (name is not None and obj.get("event") != name) or \
                    (mons is not None and mon not in mons):
                continue
            ts = obj.get("timestamp", {})
            out.append(Event(mon, str(obj.get("event")),
                             ts.get("seconds", 0) +
                             ts.get("microseconds", 0) / 1e6,
                             obj.get("data") or {}))
        return out

    def monitors(self, mentioning: str) -> set[str]:
        """The monitors whose commands or replies contain *mentioning*:
        the path of a domain's image finds the QEMU of that domain among
        all of the host's (libvirt gives the image on QEMU's command line,
        and its ``query-block`` after a start or an incoming migration
        returns it)."""
        return {mon for pattern in (_SENT, _REPLY)
                for mon, _ in _lines(self.text, pattern, mentioning)}
