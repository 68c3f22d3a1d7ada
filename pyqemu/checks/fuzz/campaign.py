"""A fuzz campaign: many mutated inputs, two at a time, findings saved.

Each input has its own random generator (seeded by the campaign seed and
its index), so any finding can be reproduced on its own; its stream and a
description are kept under ``<cache>/fuzz-findings/`` so that it can
become a regression input in tests/fuzz/.
"""

from __future__ import annotations

import concurrent.futures
import random
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from ...build.driver import build
from ...log import info
from ...paths import REPO, SANITIZED, Layout
from . import seeds
from .load import FINDINGS, Outcome, load_retrying
from .mutate import mutate
from .stream import Seed

REGRESSIONS = REPO / "tests" / "fuzz"


#: How each outcome reads in a summary.  "error" is the good case for a
#: malformed stream -- QEMU refused it with a message -- and must not read
#: as a failure.
LABELS = {"loaded": "loaded", "error": "rejected cleanly"}


@dataclass
class Summary:
    inputs: int = 0
    counts: dict[str, int] = field(default_factory=dict)
    findings: list[tuple[str, Path, str]] = field(default_factory=list)
    seconds: float = 0.0

    def counts_line(self) -> str:
        """"loaded 31, rejected cleanly 169", then findings by kind."""
        known = [f"{label} {self.counts.get(verdict, 0)}"
                 for verdict, label in LABELS.items()]
        other = [f"{verdict} {n}" for verdict, n in sorted(self.counts.items())
                 if verdict not in LABELS]
        return ", ".join(known + other)


def run(layout: Layout, inputs: int, seed: int = 1, workers: int = 2,
        save_dir: Path | None = None) -> Summary:
    """Fuzz *inputs* mutated streams; returns counts and findings."""
    if inputs < 0:
        raise ValueError(f"inputs must be >= 0, not {inputs}")
    build(layout, ("patched", SANITIZED))
    qemu = layout.binary("qemu-system-x86_64", SANITIZED)
    save_dir = save_dir or layout.root / "fuzz-findings"
    summary = Summary()
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="pq-fuzz-", dir="/tmp") as tmp:
        root = Path(tmp)
        parsed = [Seed.parse(p.read_bytes())
                  for p in seeds.capture(layout, root)]
        stopping = threading.Event()

        def one(i: int) -> tuple[int, str, Outcome]:
            # Each input has its own generator: reproducible on its own,
            # and no input is kept in memory longer than its run
            rng = random.Random(f"{seed}-{i}")
            data, what = mutate(parsed[i % len(parsed)], rng)
            d = root / f"w{i % (workers * 4)}"
            d.mkdir(exist_ok=True)
            path = d / f"in-{i}.bin"
            path.write_bytes(data)
            outcome = load_retrying(layout, qemu, path, d)
            if outcome.verdict in FINDINGS and not stopping.is_set():
                save_dir.mkdir(parents=True, exist_ok=True)
                keep = save_dir / f"finding-{seed}-{i}.bin"
                shutil.copyfile(path, keep)
                keep.with_suffix(".txt").write_text(
                    f"{what}\n{outcome.verdict}: {outcome.detail}\n")
            path.unlink()
            return i, what, outcome

        pool = concurrent.futures.ThreadPoolExecutor(workers)
        try:
            for n, (i, what, outcome) in enumerate(
                    pool.map(one, range(inputs)), 1):
                summary.counts[outcome.verdict] = \
                    summary.counts.get(outcome.verdict, 0) + 1
                if outcome.verdict in FINDINGS:
                    summary.findings.append(
                        (what, save_dir / f"finding-{seed}-{i}.bin",
                         outcome.detail[:300]))
                if n % 500 == 0:
                    info(f"fuzz: {n}/{inputs} inputs: "
                         f"{summary.counts_line()}")
            summary.inputs = inputs
        finally:
            # After a Ctrl-C (or an error) the inputs not yet started are
            # dropped rather than all run first, and the ones in flight
            # are no findings: their QEMU got the SIGINT too.
            stopping.set()
            pool.shutdown(wait=True, cancel_futures=True)
            summary.seconds = time.monotonic() - start
    return summary


def replay(layout: Layout, qemu: Path, stream: Path) -> Outcome:
    """Load one saved input (a regression test)."""
    with tempfile.TemporaryDirectory(prefix="pq-replay-", dir="/tmp") as d:
        return load_retrying(layout, qemu, stream, Path(d))
