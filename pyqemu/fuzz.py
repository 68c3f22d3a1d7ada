"""Fuzzing the incoming dirty-bitmap migration stream.

Seeds are real migration streams, captured with ``migrate`` to a file from
the patched QEMU (live and not, one and two nodes).  The bitmap sections of
a seed are parsed into records (START, BITS, COMPLETE, EOS, with their
names and fields), and each input mutates them: fields replaced with
boundary values, flags changed, records dropped, repeated, swapped or cut,
payload bits flipped.  Other sections are left alone, so the input reaches
the bitmap loader instead of failing in the stream header.

Every input is loaded by a destination QEMU built with ASan and UBSan
(``pyqemu build --asan``).  Acceptable outcomes: the migration loads, or
fails with an error message.  Anything else -- a signal, a sanitizer
report, no message, no end within the timeout -- is a finding; its input
is saved so that it can become a regression test (tests/fuzz/).
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import random
import re
import shutil
import struct
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from qemu.qmp.legacy import QEMUMonitorProtocol

from . import build as buildmod
from . import migration
from .log import info
from .paths import REPO, SANITIZED, Layout
from .vm import VM, Bitmap, Disk

# Record flags of migration/block-dirty-bitmap.c
EOS, ZEROES, BITMAP_NAME, DEVICE_NAME = 0x01, 0x02, 0x04, 0x08
START, COMPLETE, BITS, EXTRA = 0x10, 0x20, 0x40, 0x80
# Section types of migration/savevm.c
SECTION_START, SECTION_PART, SECTION_END = 0x01, 0x02, 0x03
SECTION_FOOTER = 0x7e

MiB, GiB = 1 << 20, 1 << 30
REGRESSIONS = REPO / "tests" / "fuzz"

#: Destination block nodes and RAM: the seeds are captured with the same.
NODES = (("disk0", GiB), ("disk1", 64 * MiB))
RAM_MB = 1


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


# -- seeds --------------------------------------------------------------------

def _disks(bitmaps: dict[str, tuple[Bitmap, ...]]) -> list[Disk]:
    return [Disk(name, size, bitmaps=bitmaps.get(name, ()))
            for name, size in NODES]


def capture_seeds(workdir: Path) -> list[Path]:
    """Real streams from the patched QEMU, written with migrate to a file."""
    cases: dict[str, tuple[bool, dict[str, tuple[Bitmap, ...]]]] = {
        "live-one-node": (True, {"disk0": (Bitmap("b0", 65536),
                                            Bitmap("b1", 4096,
                                                   disabled=True))}),
        "stopcopy-two-nodes": (False, {"disk0": (Bitmap("b0", 65536),),
                                        "disk1": (Bitmap("c0", 512),
                                                  Bitmap("c1", 1 << 20))}),
    }
    out = []
    for name, (live, bitmaps) in cases.items():
        path = workdir / f"seed-{name}.bin"
        with VM(f"seed-{name}", _disks(bitmaps), "patched", workdir,
                machine="none", memory_mb=RAM_MB) as vm:
            vm.add_bitmaps()
            for i in range(24):
                vm.write("disk0", i * 41 * MiB, 64 * 1024)
                vm.write("disk1", i * 2 * MiB + 4096, 512)
            caps = {"dirty-bitmaps": True, "dirty-bitmaps-live": live}
            migration.set_capabilities(vm, caps)
            # Switch over at once rather than after thousands of empty RAM
            # iterations that would bloat the seed (the bandwidth measured on
            # an idle source is near zero, so is the switchover threshold).
            migration.set_parameters(vm, {"avail-switchover-bandwidth": GiB})
            vm.cmd("migrate", uri=f"file:{path}")
            migration.wait(vm, ("completed",), 60)
        path.write_bytes(strip_idle_ram_sections(path.read_bytes()))
        out.append(path)
    return out


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


# -- running one input --------------------------------------------------------

@dataclass
class Outcome:
    verdict: str        # "loaded", "error", or a finding: "crash", "hang"...
    detail: str


SANITIZER = re.compile(r"ERROR: AddressSanitizer|runtime error:|"
                       r"ERROR: LeakSanitizer|SUMMARY: UndefinedBehavior")


def _connect(sock: Path, proc: subprocess.Popen,
             deadline: float) -> QEMUMonitorProtocol | None:
    """A QMP connection, retried: the socket file appears at bind(), a
    moment before QEMU listens on it."""
    while time.monotonic() < deadline and proc.poll() is None:
        if sock.exists():
            qmp = QEMUMonitorProtocol(str(sock))
            try:
                qmp.connect()
                return qmp
            except Exception:
                try:
                    qmp.close()
                except Exception:
                    pass
        time.sleep(0.01)
    return None


def load(binary: Path, stream: Path, workdir: Path,
         timeout: float = 20) -> Outcome:
    """Feed *stream* to a fresh destination; classify what happens."""
    sock = workdir / "qmp.sock"
    sock.unlink(missing_ok=True)
    args = [str(binary), "-machine", "none", "-m", str(RAM_MB),
            "-nodefaults", "-display", "none", "-S", "-incoming", "defer",
            "-chardev", f"socket,id=qmp,path={sock},server=on,wait=off",
            "-mon", "chardev=qmp,mode=control"]
    for name, size in NODES:
        args += ["-blockdev", f"driver=null-co,node-name={name},size={size}"]
    env = dict(os.environ, ASAN_OPTIONS="detect_leaks=0:abort_on_error=1",
               UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1")
    proc = subprocess.Popen(args, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + timeout
        status = None
        talked = False
        qmp = _connect(sock, proc, deadline)
        try:
            if qmp is None:
                raise ConnectionError("QEMU's QMP socket never accepted")
            qmp.cmd("migrate-incoming", uri=f"file:{stream}")
            talked = True
            while time.monotonic() < deadline:
                status = qmp.cmd("query-migrate").get("status")
                if status in ("completed", "failed"):
                    break
                time.sleep(0.01)
            if status == "completed":
                qmp.cmd("quit")
        except Exception as e:      # QEMU went away: its output says why
            problem = f"{type(e).__name__}: {e}"
        else:
            problem = ""
        finally:
            if qmp is not None:
                try:
                    qmp.close()
                except Exception:
                    pass
        try:
            out = proc.communicate(timeout=max(deadline - time.monotonic(),
                                               2))[0]
        except subprocess.TimeoutExpired:
            proc.kill()
            out = proc.communicate()[0]
            if not talked:
                # QEMU never got the stream: a problem of this harness
                # (e.g. an overloaded machine), not of the input
                return Outcome("harness", f"no QMP conversation: {problem}")
            return Outcome("hang", f"no end after {timeout:.0f}s "
                                   f"(status {status})")
        text = out.decode(errors="replace")
        if SANITIZER.search(text):
            return Outcome("sanitizer", text[-4000:])
        if proc.returncode < 0:
            return Outcome("crash", f"signal {-proc.returncode}: "
                                    f"{text[-2000:]}")
        if status == "completed":
            return Outcome("loaded", "")
        message = text.strip().splitlines()
        if proc.returncode != 0 and message:
            return Outcome("error", message[-1][:200])
        return Outcome("no-message", f"exit {proc.returncode}, status "
                                     f"{status}: {text[-500:]}")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


FINDINGS = ("crash", "sanitizer", "hang", "no-message", "harness")


@dataclass
class Summary:
    inputs: int = 0
    counts: dict[str, int] = field(default_factory=dict)
    findings: list[tuple[str, Path, str]] = field(default_factory=list)
    seconds: float = 0.0


def run(inputs: int, seed: int = 1, workers: int = 2,
        save_dir: Path | None = None) -> Summary:
    """Fuzz *inputs* mutated streams; returns counts and findings."""
    buildmod.build(("patched", SANITIZED))
    binary = buildmod.binary("qemu-system-x86_64", SANITIZED)
    root = Path(tempfile.mkdtemp(prefix="pq-fuzz-", dir="/tmp"))
    save_dir = save_dir or Layout.default().root / "fuzz-findings"
    summary = Summary()
    start = time.monotonic()
    try:
        seeds = [Seed.parse(p.read_bytes()) for p in capture_seeds(root)]

        def one(i: int) -> tuple[int, str, Outcome]:
            # Each input has its own generator: reproducible on its own,
            # and no input is kept in memory longer than its run
            rng = random.Random(f"{seed}-{i}")
            data, what = mutate(seeds[i % len(seeds)], rng)
            d = root / f"w{i % (workers * 4)}"
            d.mkdir(exist_ok=True)
            path = d / f"in-{i}.bin"
            path.write_bytes(data)
            outcome = load_retrying(binary, path, d)
            if outcome.verdict in FINDINGS:
                save_dir.mkdir(parents=True, exist_ok=True)
                keep = save_dir / f"finding-{seed}-{i}.bin"
                shutil.copyfile(path, keep)
                (keep.with_suffix(".txt")).write_text(
                    f"{what}\n{outcome.verdict}: {outcome.detail}\n")
            path.unlink()
            return i, what, outcome

        with concurrent.futures.ThreadPoolExecutor(workers) as pool:
            for n, (i, what, outcome) in enumerate(pool.map(one, range(inputs)),
                                                   1):
                summary.counts[outcome.verdict] = \
                    summary.counts.get(outcome.verdict, 0) + 1
                if outcome.verdict in FINDINGS:
                    summary.findings.append(
                        (what, save_dir / f"finding-{seed}-{i}.bin",
                         outcome.detail[:300]))
                if n % 500 == 0:
                    info(f"fuzz: {n}/{inputs} inputs, {summary.counts}")
        summary.inputs = inputs
    finally:
        summary.seconds = time.monotonic() - start
        shutil.rmtree(root, ignore_errors=True)
    return summary


def load_retrying(binary: Path, stream: Path, workdir: Path) -> Outcome:
    """load(), once more if the harness rather than QEMU failed."""
    outcome = load(binary, stream, workdir)
    if outcome.verdict == "harness":
        outcome = load(binary, stream, workdir)
    return outcome


def replay(binary: Path, stream: Path) -> Outcome:
    """Load one saved input (a regression test)."""
    d = Path(tempfile.mkdtemp(prefix="pq-replay-", dir="/tmp"))
    try:
        return load_retrying(binary, stream, d)
    finally:
        shutil.rmtree(d, ignore_errors=True)


def main(inputs: int, seed: int) -> int:
    s = run(inputs, seed)
    (Layout.default().root / "fuzz-summary.json").write_text(json.dumps({
        "inputs": s.inputs, "seed": seed, "seconds": round(s.seconds),
        "counts": s.counts,
        "findings": [[w, str(p), d] for w, p, d in s.findings]}, indent=1))
    print(f"{s.inputs} inputs in {s.seconds:.0f} s "
          f"({s.inputs / max(s.seconds, 1e-9):.1f}/s): " +
          ", ".join(f"{k} {v}" for k, v in sorted(s.counts.items())))
    for what, path, detail in s.findings:
        print(f"FINDING {path.name}: {what}\n  {detail}")
    return 1 if s.findings else 0
