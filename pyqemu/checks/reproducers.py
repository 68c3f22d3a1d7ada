"""The upstream reproducers against every QEMU at hand: ``pyqemu check upstream``.

``upstream/`` holds one script per upstream defect, written for QEMU's
developers: each needs only a QEMU binary (and qemu-img) and the
``qemu.qmp`` package, and ends with one line, ``REPRODUCED``, ``NOT
REPRODUCED``, ``CANNOT RUN`` or ``ERROR`` (its own failure), with exit
status 0, 1, 2 or 3.  This module knows which defect each script shows
and which patch of the series fixes it, runs the scripts as a developer
would (a subprocess, the binary on the command line), and puts the
verdicts side by side for Debian's QEMU 7.2, stock 10.2.2 and the
patched build.

A script is the evidence, so it is never imported: what it prints is
what upstream would see.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from ..build import deps
from ..errors import PyqemuError
from ..log import info
from ..paths import Layout
from ..util.results import save
from ..util.table import markdown_table

REPO = Path(__file__).resolve().parents[2]
SCRIPTS = REPO / "upstream"
#: Debian bookworm's QEMU 7.2 (package group deps.PEERS)
DEBIAN_QEMU = Path("/usr/bin/qemu-system-x86_64")
#: a reproducer's last line starts with one of these; its exit status
VERDICTS = {"REPRODUCED": 0, "NOT REPRODUCED": 1, "CANNOT RUN": 2,
            "ERROR": 3}
#: seconds a script gets before it is killed (the slowest, under valgrind,
#: takes about 20 s on an idle machine)
TIMEOUT = 240.0


@dataclass(frozen=True)
class Reproducer:
    """One defect, the script that shows it and the patch that fixes it."""
    name: str
    script: str
    summary: str
    #: the patch of the series that fixes it, None while it is open
    fixed_by: str | None
    args: tuple[str, ...] = ()
    #: needs qemu-img to make an image
    needs_img: bool = False
    #: the binaries (labels) on which a run takes long: the use after free
    #: runs QEMU under valgrind, up to 5 times (about 6 s each) where the
    #: defect does not show
    slow: tuple[str, ...] = ()
    #: arguments the test suite adds to keep a slow run short;
    #: ``./run check upstream`` runs the script's own defaults.  Only on
    #: the binaries in :attr:`slow`.  One round of the use after free on
    #: the patched build: the defect showed in the first round 24 times
    #: in 24 on stock (see the script), so a patched build that
    #: regressed would most likely fail the first round too
    quick_args: tuple[str, ...] = ()


REPRODUCERS = (
    Reproducer("deserialize-ones", "hbitmap-deserialize-ones.py",
               "all-ones qcow2 bitmap cluster sets bits past the end",
               "0002", needs_img=True),
    Reproducer("pending-bits", "bitmap-pending-bits.py",
               "pending estimate counts bitmap bits as bytes", "0003"),
    Reproducer("cancel-drops-persistent", "bitmap-cancel-drops-persistent.py",
               "cancelled migration drops persistent bitmaps", "0004",
               needs_img=True),
    Reproducer("smaller-destination", "bitmap-smaller-destination.py",
               "smaller destination node aborts it (#2650)", "0005"),
    Reproducer("larger-destination", "bitmap-smaller-destination.py",
               "larger destination, unaligned source size, aborts it",
               "0005", args=("--larger",)),
    Reproducer("huge-granularity", "bitmap-huge-granularity.py",
               ">= 256 MiB granularity spins in completion", "0006"),
    Reproducer("resize-during-migration", "bitmap-resize-during-migration.py",
               "block_resize of a migrating bitmap's node aborts", "0007"),
    Reproducer("quit-postcopy", "bitmap-quit-postcopy.py",
               "quit during bitmap postcopy: use after free", "0009",
               slow=("patched",), quick_args=("--rounds", "1")),
    Reproducer("qemu-io-inactive-node", "qemu-io-inactive-node.py",
               "HMP qemu-io write to an inactive node aborts", "0023"),
    Reproducer("write-grows-file", "bitmap-write-grows-file.py",
               "write growing a file whose bitmap migrates aborts", "0008",
               needs_img=True),
    Reproducer("busy-backup", "bitmap-busy-backup.py",
               "bitmap held by a backup job fails the migration", "0010"),
    Reproducer("no-bitmaps-sticks", "bitmap-no-bitmaps-sticks.py",
               "after a migration without bitmaps, later ones migrate none",
               "0011"),
    Reproducer("backup-skips-inactivation",
               "backup-job-skips-inactivation.py",
               "backup job: switchover inactivates nothing", None,
               needs_img=True),
)


@dataclass(frozen=True)
class Binaries:
    """One QEMU to test, and the qemu-img its images are made with."""
    label: str
    qemu: Path
    qemu_img: Path


@dataclass(frozen=True)
class Outcome:
    verdict: str          # a key of VERDICTS
    text: str             # what the script's last line says after it
    seconds: float
    output: str           # everything it printed, for a failing test


def debian_qemu() -> Path:
    """Debian's QEMU 7.2: checked, never installed here (one line naming
    the commands that install it)."""
    deps.require(deps.PEERS)
    if not DEBIAN_QEMU.exists():
        raise PyqemuError(f"Debian's QEMU 7.2 ({DEBIAN_QEMU}) is missing "
                          f"although {' '.join(deps.PEERS)} is installed")
    return DEBIAN_QEMU


def require_checker() -> None:
    """valgrind, which the use-after-free reproducer runs a release build
    under (without it, that script says CANNOT RUN)."""
    deps.require(deps.CALLGRIND)


def binaries(layout: Layout, debian: bool = True) -> list[Binaries]:
    """Debian's 7.2 (if *debian*), stock and patched.  Debian's own
    qemu-img (package qemu-utils) is not needed: the images are plain
    qcow2 and raw files, made with stock's qemu-img when it is absent."""
    stock_img = layout.binary("qemu-img", "stock")
    out = []
    if debian:
        debian_img = Path("/usr/bin/qemu-img")
        out.append(Binaries("debian-7.2", debian_qemu(),
                            debian_img if debian_img.exists() else stock_img))
    out.append(Binaries("stock-10.2.2",
                        layout.binary("qemu-system-x86_64", "stock"),
                        stock_img))
    out.append(Binaries("patched",
                        layout.binary("qemu-system-x86_64", "patched"),
                        layout.binary("qemu-img", "patched")))
    return out


def parse(output: str) -> tuple[str, str]:
    """(verdict, text) from a script's last line; ERROR if it has none."""
    lines = [ln for ln in output.splitlines() if ln.strip()]
    last = lines[-1] if lines else ""
    for verdict in VERDICTS:
        if last.startswith(verdict + ": "):
            return verdict, last[len(verdict) + 2:]
    return "ERROR", f"no verdict line; it ended with {last!r}"


def run(rep: Reproducer, bins: Binaries, timeout: float = TIMEOUT,
        quick: bool = False) -> Outcome:
    """Run one script against one binary, as a developer would; *quick*
    adds the reproducer's :attr:`Reproducer.quick_args` on the binaries
    it is slow on (elsewhere the defect ends the script at its first
    showing, and the extra rounds are the control's retries).

    The script runs in its own process group, so that a script killed at
    the deadline takes its QEMUs along (they also die with it through
    their parent-death signal)."""
    argv = [sys.executable, str(SCRIPTS / rep.script), "--qemu",
            str(bins.qemu), *rep.args,
            *(rep.quick_args if quick and bins.label in rep.slow else ())]
    if rep.needs_img:
        argv += ["--qemu-img", str(bins.qemu_img)]
    start = time.monotonic()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        return Outcome("ERROR", f"killed after {timeout:.0f} s",
                       time.monotonic() - start, out)
    verdict, text = parse(out)
    if verdict != "ERROR" and proc.returncode != VERDICTS[verdict]:
        verdict, text = "ERROR", (f"exit status {proc.returncode} after "
                                  f"{verdict}: {text}")
    return Outcome(verdict, text, time.monotonic() - start, out)


def expected(rep: Reproducer, label: str) -> str | None:
    """The verdict the series stands for: the defect shows on stock, and
    on the patched build only while no patch fixes it.  None for the
    binaries that are evidence only (Debian's 7.2)."""
    if label == "stock-10.2.2":
        return "REPRODUCED"
    if label == "patched":
        return "REPRODUCED" if rep.fixed_by is None else "NOT REPRODUCED"
    return None


def main(layout: Layout) -> int:
    """``pyqemu check upstream``: every reproducer on every binary, one
    line each as it ends, then a table and the evidence, saved under
    ``<cache>/bench/upstream/``; exit 1 if a verdict on stock or patched
    is not what the series claims, or any script failed."""
    from ..build.driver import build
    build(layout)
    require_checker()
    bins = binaries(layout)
    rows, evidence, wrong, runs = [], [], [], []
    total, n = len(REPRODUCERS) * len(bins), 0
    for rep in REPRODUCERS:
        cells = []
        for b in bins:
            n += 1
            o = run(rep, b)
            want = expected(rep, b.label)
            mark = "" if want in (None, o.verdict) else " (!)"
            info(f"reproducer {n}/{total}, {rep.name} on {b.label}: "
                 f"{o.verdict}{mark} ({o.seconds:.0f} s)")
            if o.verdict == "ERROR" or mark:
                wrong.append(f"{rep.name} on {b.label}: {o.verdict}, "
                             f"expected {want}: {o.text}")
            cells.append(o.verdict.lower() + mark)
            evidence.append(f"- {rep.name}, {b.label}: {o.verdict}: {o.text}")
            runs.append({"defect": rep.name, "script": rep.script,
                         "args": list(rep.args), "fixed_by": rep.fixed_by,
                         "binary": b.label, "qemu": str(b.qemu),
                         "verdict": o.verdict, "expected": want,
                         "text": o.text, "seconds": round(o.seconds, 1)})
        rows.append([rep.name, rep.fixed_by or "open", *cells])
    text = markdown_table(["defect", "fixed by", *(b.label for b in bins)],
                          rows) + "\n\n" + "\n".join(evidence)
    out = save(layout, "upstream", text, {"ok": not wrong, "runs": runs})
    print(text)
    print(f"wrote {out / 'results.md'}\nwrote {out / 'results.json'}")
    fixed = [r for r in REPRODUCERS if r.fixed_by]
    patches = sorted({r.fixed_by for r in fixed if r.fixed_by})
    print(f"result: {len(fixed)} reproducers of defects fixed by "
          f"{len(patches)} patches ({', '.join(patches)}), "
          f"{len(REPRODUCERS) - len(fixed)} open; "
          + ("every verdict on stock and patched as expected, no script "
             "failed" if not wrong else
             f"FAILED: {len(wrong)} unexpected: " + "; ".join(wrong)))
    return 0 if not wrong else 1
