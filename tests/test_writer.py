"""The guest's writer (tests/guest/linux-writer.c) and its Python mirror
(:func:`pyqemu.machine.linuxguest.write_offsets`) agree.

Tests and benchmarks trust ``write_offsets`` to say where the guest
wrote; if the C and the Python drifted apart, a backup test would check
the wrong blocks and a benchmark would model the wrong pattern.  So the
real binary runs on the host against a regular file (the writer supports
files), and every block it wrote names the write that wrote it last (the
first 8 bytes of write n are ``n << 20 | 1 << 63``): the file must hold
exactly what the Python sequence predicts, in order, and nothing outside
the region.
"""

from __future__ import annotations

import struct
import subprocess
from pathlib import Path

import pytest

from pyqemu.machine import linuxguest
from pyqemu.machine.linuxguest import WriterConfig
from pyqemu.util.units import KiB, MiB

FILE_SIZE = 4 * MiB
WRITES = 700


@pytest.fixture(scope="module")
def writer(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("writer") / "linux-writer"
    return linuxguest.build_writer(out)


def last_writer_per_block(path: Path, bs: int) -> dict[int, int]:
    """Offset of each written block -> the number of the write in it."""
    data = path.read_bytes()
    out = {}
    for off in range(0, len(data), bs):
        (word,) = struct.unpack_from("<Q", data, off)
        if word:
            out[off] = (word & ((1 << 63) - 1)) >> 20
    return out


@pytest.mark.parametrize("config", [
    # random over a region that is not at the start of the file
    WriterConfig(offset=64 * KiB, length=MiB, seed=3),
    # sequential, wrapping around the region several times
    WriterConfig(offset=8 * KiB, length=256 * KiB, stride=4 * KiB),
    # a stride that is not a multiple of bs: rounded down to a block
    WriterConfig(length=3 * MiB, stride=5000),
    # stride larger than the region, region not whole blocks
    WriterConfig(offset=4 * KiB, length=MiB + 1000, stride=3 * MiB + 512),
    # 512-byte writes, the stride of a bitmap chunk at 512 B granularity
    WriterConfig(bs=512, length=2 * MiB, stride=8192 * 512 // 64),
], ids=["random", "sequential", "odd-stride", "wide-stride", "bs512"])
def test_writer_matches_write_offsets(writer: Path, tmp_path: Path,
                                      config: WriterConfig) -> None:
    target = tmp_path / "disk.img"
    with target.open("wb") as f:
        f.truncate(FILE_SIZE)
    argv = [str(writer), "-d", str(target), "-b", str(config.bs),
            "-o", str(config.offset), "-l", str(config.length),
            "-s", str(config.seed), "-t", str(config.stride),
            "-f", "100", "-n", str(WRITES), "-c", str(WRITES)]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"stride={config.stride}" in out.stdout
    assert f"W {WRITES}" in out.stdout

    expected: dict[int, int] = {}
    for n, off in enumerate(linuxguest.write_offsets(config, 0, WRITES)):
        assert config.offset <= off
        assert off + config.bs <= config.offset + config.length
        expected[off] = n
    assert last_writer_per_block(target, config.bs) == expected


def test_write_offsets_window_is_a_slice() -> None:
    """write_offsets(start, stop) is the tail of write_offsets(0, stop),
    random and strided alike: callers ask for windows of a long run."""
    for config in (WriterConfig(length=MiB, seed=9),
                   WriterConfig(length=MiB, stride=12 * KiB)):
        assert linuxguest.write_offsets(config, 100, 300) == \
            linuxguest.write_offsets(config, 0, 300)[100:]


def test_progress_reads_whole_lines_only(tmp_path: Path) -> None:
    """The count comes from the serial log while the guest writes it: a
    line cut short ("W 12" of "W 1234") must not be read as a count."""
    log = tmp_path / "serial.log"
    assert linuxguest.progress(log) == 0            # not created yet
    log.write_bytes(b"writer started\r\nW 100\r\nW 1200\r\nW 12")
    assert linuxguest.progress(log) == 1200
    log.write_bytes(b"writer started\nW 7\nwriter stall: 1 s\n")
    assert linuxguest.progress(log) == 7
    assert linuxguest.last_count(b"no count here\n") is None
