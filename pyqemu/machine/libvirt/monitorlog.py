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

The JSON runs to the end of its object; libvirt may append more on the
line (``\\r\\n fd=-1``), so each object is decoded with ``raw_decode``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

_SENT = re.compile(r"QEMU_MONITOR_SEND_MSG: mon=\S+ msg=(\{.*)")
_REPLY = re.compile(r"QEMU_MONITOR_RECV_REPLY: mon=\S+ reply=(\{.*)")


def _objects(text: str, pattern: re.Pattern[str],
             contains: str = "") -> Iterator[dict[str, Any]]:
    """The JSON objects of the lines *pattern* matches; only lines with
    *contains* are decoded (libvirt's capability probes log replies of
    hundreds of KiB)."""
    decoder = json.JSONDecoder()
    for line in text.splitlines():
        if contains not in line:
            continue
        m = pattern.search(line)
        if m:
            obj, _ = decoder.raw_decode(m.group(1))
            if isinstance(obj, dict):
                yield obj


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
