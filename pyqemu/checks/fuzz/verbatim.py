"""A finding of the fuzzer: QEMU copies bytes of an incoming migration
stream into its log verbatim, terminal escapes included.

A destination that meets a bitmap record naming a bitmap it does not
know reports ``Error: unknown dirty bitmap '%s' for block device '%s'``
(migration/block-dirty-bitmap.c, dirty_bitmap_load_header) with the name
exactly as the stream carried it: up to 255 arbitrary bytes chosen by
whoever sends the stream.  Read on a terminal (``tail`` of a libvirt
domain log), escape sequences in it act on that terminal; read by a tool
that expects UTF-8 text, a stray byte breaks it -- qemu.machine's
shutdown raised UnicodeDecodeError on exactly this, which stopped the
fuzz campaigns after a few hundred inputs (``pyqemu.machine.vm`` now
reads the log with replacement).

:func:`reproduce` makes such a stream from a real one and reports whether
the bytes reach QEMU's log unchanged.  Upstream QEMU has no fix; stock
and patched behave the same.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

from ...paths import Layout
from . import seeds
from .load import Outcome, load, log_path
from .stream import BITMAP_NAME, DEVICE_NAME, EOS, START, Seed

#: A bitmap name with bytes that are not UTF-8 and an ANSI escape
#: sequence (red text, then back to normal).
NAME = b"bm-\xb5\xfe-\x1b[31mred\x1b[0m"


def craft(stream: bytes, name: bytes = NAME) -> bytes:
    """*stream* with its first bitmap record after the set-up renamed to
    *name*: a bitmap the destination never saw START for."""
    seed = Seed.parse(stream)
    for idx, (_, _, records) in enumerate(seed.sections):
        node = next((r.node for r in records if r.node is not None), None)
        for r in records:
            if r.flags & START or r.flags == EOS:
                continue
            r.flags |= DEVICE_NAME | BITMAP_NAME
            r.node = r.node or node or seeds.NODES[0][0].encode()
            r.bitmap = name
            return seed.rebuild({idx: b"".join(x.encode() for x in records)})
    raise ValueError("the stream has no bitmap record after a START")


@dataclass
class Result:
    verbatim: bool      # the name's bytes are in QEMU's log unchanged
    line: bytes         # the log line that carries them, else the log's end
    outcome: Outcome    # how the fuzzer judges the load (an error, no finding)


def reproduce(layout: Layout, binary: Path, stream: bytes | None = None,
              name: bytes = NAME) -> Result:
    """Load a stream whose bitmap name is *name* on *binary* (a fresh
    destination, as the fuzzer runs it); say whether QEMU wrote *name*
    into its log byte for byte.  *stream* is a real migration stream to
    start from; by default one is captured from the patched build."""
    with tempfile.TemporaryDirectory(prefix="pq-verbatim-", dir="/tmp") as d:
        workdir = Path(d)
        if stream is None:
            stream = seeds.capture(layout, workdir)[0].read_bytes()
        path = workdir / "verbatim.bin"
        path.write_bytes(craft(stream, name))
        outcome = load(layout, binary, path, workdir)
        log = log_path(workdir).read_bytes()
    line = next((ln for ln in log.splitlines() if name in ln), None)
    return Result(line is not None, line or log[-300:], outcome)
