"""The dirty-bitmap sections of a migration stream, parsed and re-encoded.

Only what the fuzzer needs: the record format of
migration/block-dirty-bitmap.c inside the section framing of
migration/savevm.c, so that mutations land in bitmap records while the
rest of the stream stays valid.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass, field

# Record flags of migration/block-dirty-bitmap.c
EOS, ZEROES, BITMAP_NAME, DEVICE_NAME = 0x01, 0x02, 0x04, 0x08
START, COMPLETE, BITS, EXTRA = 0x10, 0x20, 0x40, 0x80
# Section types of migration/savevm.c
SECTION_START, SECTION_PART, SECTION_END = 0x01, 0x02, 0x03
SECTION_FOOTER = 0x7e


class StreamError(ValueError):
    """A seed is not a stream this parser understands."""


@dataclass
class Record:
    """One record of a dirty-bitmap section."""

    flags: int
    node: bytes | None = None
    bitmap: bytes | None = None
    granularity: int = 0            # START
    start_flags: int = 0            # START
    sector: int = 0                 # BITS
    nr_sectors: int = 0             # BITS
    data: bytes = b""               # BITS without ZEROES
    declared_size: int | None = None  # BITS: buffer size, if not len(data)

    def encode(self) -> bytes:
        out = bytes([self.flags & 0xff])
        if self.flags & EXTRA:
            out += bytes([(self.flags >> 8) & 0xff])
        if self.flags & DEVICE_NAME and self.node is not None:
            out += bytes([len(self.node) & 0xff]) + self.node
        if self.flags & BITMAP_NAME and self.bitmap is not None:
            out += bytes([len(self.bitmap) & 0xff]) + self.bitmap
        if self.flags & START:
            out += struct.pack(">IB", self.granularity & 0xffffffff,
                               self.start_flags & 0xff)
        elif self.flags & COMPLETE:
            pass
        elif self.flags & BITS:
            out += struct.pack(">QI", self.sector & (2**64 - 1),
                               self.nr_sectors & 0xffffffff)
            if not self.flags & ZEROES:
                size = len(self.data) if self.declared_size is None \
                    else self.declared_size
                out += struct.pack(">Q", size & (2**64 - 1)) + self.data
        return out


def parse_records(buf: bytes, pos: int) -> tuple[list[Record], int]:
    """Records from *pos* up to and including the EOS one."""
    records = []
    while True:
        if pos >= len(buf):
            raise StreamError("section runs past the end")
        flags = buf[pos]
        pos += 1
        if flags & EXTRA:
            raise StreamError("extra flag bytes are never sent")
        rec = Record(flags)
        for bit, attr in ((DEVICE_NAME, "node"), (BITMAP_NAME, "bitmap")):
            if flags & bit:
                n = buf[pos]
                setattr(rec, attr, buf[pos + 1:pos + 1 + n])
                pos += 1 + n
        if flags & START:
            rec.granularity, rec.start_flags = struct.unpack_from(">IB", buf,
                                                                  pos)
            pos += 5
        elif flags & COMPLETE:
            pass
        elif flags & BITS:
            rec.sector, rec.nr_sectors = struct.unpack_from(">QI", buf, pos)
            pos += 12
            if not flags & ZEROES:
                (size,) = struct.unpack_from(">Q", buf, pos)
                if size > 64 * 1024:
                    raise StreamError("implausible chunk size")
                rec.data = buf[pos + 8:pos + 8 + size]
                pos += 8 + size
        records.append(rec)
        if flags & EOS:
            return records, pos


@dataclass
class Seed:
    """A captured stream split around its dirty-bitmap sections."""

    data: bytes
    #: (start, end, records) of each bitmap section's record area
    sections: list[tuple[int, int, list[Record]]] = field(default_factory=list)

    @classmethod
    def parse(cls, data: bytes) -> "Seed":
        m = re.search(rb"\x01(....)\x0cdirty-bitmap(....)(....)", data,
                      re.S)
        if not m:
            raise StreamError("no dirty-bitmap section")
        sid = m.group(1)
        seed = cls(data)
        candidates = [m.end()]
        for hdr in (bytes([SECTION_PART]) + sid, bytes([SECTION_END]) + sid):
            candidates += [i + 5 for i in range(len(data))
                           if data.startswith(hdr, i)]
        for start in sorted(set(candidates)):
            try:
                records, end = parse_records(data, start)
            except (StreamError, IndexError, struct.error):
                continue
            # a real section ends with its footer
            if data[end:end + 5] == bytes([SECTION_FOOTER]) + sid:
                seed.sections.append((start, end, records))
        if not seed.sections:
            raise StreamError("no parsable dirty-bitmap section")
        return seed

    def rebuild(self, new: dict[int, bytes]) -> bytes:
        """The stream with some sections' record areas replaced."""
        out, last = [], 0
        for i, (start, end, _) in enumerate(self.sections):
            out.append(self.data[last:start])
            out.append(new.get(i, self.data[start:end]))
            last = end
        out.append(self.data[last:])
        return b"".join(out)


def strip_idle_ram_sections(data: bytes) -> bytes:
    """Drop the RAM sections that carry nothing but their end marker.

    An idle source iterates as fast as it can until its first bandwidth
    measurement, so a stream can hold a hundred thousand of these; they
    would only slow every fuzz input down.
    """
    m = re.search(rb"\x01(....)\x03ram", data, re.S)
    if not m:
        return data
    sid = m.group(1)
    idle = b"\x02" + sid + b"\x00" * 7 + b"\x10\x7e" + sid
    return data.replace(idle, b"")
