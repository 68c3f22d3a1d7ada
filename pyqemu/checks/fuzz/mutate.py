"""Mutations of a seed's bitmap records: boundary values, changed flags,
records dropped, repeated, swapped or cut, payload bits flipped."""

from __future__ import annotations

import random

from .stream import BITS, START, ZEROES, Record, Seed

INTERESTING = (0, 1, 2, 7, 8, 63, 64, 511, 512, 4095, 4096, 65535, 65536,
               2**31 - 1, 2**31, 2**32 - 1, 2**32, 2**55, 2**63 - 1, 2**63,
               2**64 - 1)


def mutate(seed: Seed, rng: random.Random) -> tuple[bytes, str]:
    """One mutated stream and a short description of what changed."""
    idx = rng.randrange(len(seed.sections))
    records = [Record(**vars(r)) for r in seed.sections[idx][2]]
    what = []
    for _ in range(rng.choice((1, 1, 1, 2, 3))):
        r = rng.choice(records)
        op = rng.randrange(12)
        if op == 0 and r.flags & BITS:
            r.sector = rng.choice(INTERESTING + (r.sector + 1, r.sector * 2))
            what.append(f"sector={r.sector}")
        elif op == 1 and r.flags & BITS:
            r.nr_sectors = rng.choice(INTERESTING + (r.nr_sectors + 1,)) \
                & 0xffffffff
            what.append(f"nr_sectors={r.nr_sectors}")
        elif op == 2 and r.flags & START:
            r.granularity = rng.choice(INTERESTING + (3000, 1 << 20)) \
                & 0xffffffff
            what.append(f"granularity={r.granularity}")
        elif op == 3 and r.flags & START:
            r.start_flags = rng.randrange(256)
            what.append(f"start_flags={r.start_flags:#x}")
        elif op == 4:
            r.flags = rng.randrange(1, 128)
            what.append(f"flags={r.flags:#x}")
        elif op == 5 and r.data:
            data = bytearray(r.data)
            for _ in range(rng.randrange(1, 9)):
                data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
            r.data = bytes(data)
            what.append("payload bits")
        elif op == 6 and r.flags & BITS and not r.flags & ZEROES:
            r.declared_size = rng.choice(INTERESTING + (len(r.data) + 8,
                                                        len(r.data) - 8))
            what.append(f"buffer size={r.declared_size}")
        elif op == 7 and len(records) > 1:
            records.remove(r)
            what.append("record dropped")
        elif op == 8:
            records.insert(rng.randrange(len(records) + 1),
                           Record(**vars(r)))
            what.append("record repeated")
        elif op == 9 and len(records) > 2:
            i, j = rng.sample(range(len(records)), 2)
            records[i], records[j] = records[j], records[i]
            what.append("records swapped")
        elif op == 10 and (r.node is not None or r.bitmap is not None):
            name = rng.choice((b"", b"x", b"disk1", b"b0", b"#auto",
                               b"y" * 255))
            if r.node is not None and rng.random() < 0.5:
                r.node = name
            else:
                r.bitmap = name
            what.append(f"name={name[:8]!r}")
        elif op == 11 and r.flags & BITS and not r.flags & ZEROES:
            r.flags |= ZEROES
            what.append("data chunk made ZEROES")
    body = b"".join(r.encode() for r in records)
    if rng.random() < 0.05:
        cut = rng.randrange(len(body) + 1)
        what.append(f"truncated at {cut}")
        return seed.data[:seed.sections[idx][0]] + body[:cut], "; ".join(what)
    if rng.random() < 0.1 and body:
        data = bytearray(body)
        for _ in range(rng.randrange(1, 5)):
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        body = bytes(data)
        what.append("raw bit flips")
    return seed.rebuild({idx: body}), "; ".join(what) or "unchanged"
