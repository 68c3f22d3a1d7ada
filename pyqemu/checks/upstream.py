"""Run QEMU's own tests (test-hbitmap, iotests) in a built tree.

The series must keep upstream's bitmap tests passing, so the suite runs
them on the patched tree and reads their verdicts.  iotests are run with
QEMU's ``check`` script from the build directory, in one invocation (it
costs about 40 s for all of them), and its per-test lines are parsed.
"""

from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from ..paths import Layout
from ..util.proc import run

#: Upstream's dirty-bitmap related iotests (the foundation issue's list).
BITMAP_IOTESTS = (
    "124", "165", "176", "194", "223", "236", "242", "246", "254", "256",
    "257", "260", "281", "299", "300", "303", "304", "backup-discard-source",
    "block-status-cache", "image-fleecing", "migrate-bitmaps-postcopy-test",
    "migrate-bitmaps-test", "nbd-qemu-allocation", "qemu-img-bitmaps",
    "remove-bitmap-from-backing",
)

#: iotests the series adds; they exist only in the patched tree.
SERIES_IOTESTS = ("migrate-bitmaps-pending", "migrate-bitmaps-cancel",
                  "migrate-bitmaps-size-mismatch",
                  "migrate-bitmaps-huge-granularity",
                  "migrate-bitmaps-resize", "migrate-bitmaps-grow",
                  "migrate-bitmaps-quit", "migrate-bitmaps-backup",
                  "migrate-bitmaps-again",
                  "qemu-io-inactive-node", "migrate-bitmaps-live",
                  "migrate-bitmaps-sparse", "dirty-bitmap-regions")

#: iotests that do not run on qcow2, with the format they need: ``check``
#: reports a test of another format as "not run", which would pass for a
#: result.
FORMATS = {"block-status-cache": "raw"}

#: iotests that need a feature the build may lack: the config-host.h
#: symbol, and the word ``check`` names in its "not run" reason.  Without
#: the feature such a test is reported as not run (never as passed); with
#: it, it must pass like any other.
NEEDS = {"303": ("CONFIG_ZSTD", "zstd")}


@dataclass(frozen=True)
class Verdict:
    test: str
    status: str          # "pass", "fail", "not run"
    detail: str


def built_with(layout: Layout, flavour: str, symbol: str) -> bool:
    """Whether *flavour*'s QEMU was configured with *symbol* (its
    config-host.h defines it)."""
    config = layout.qemu_build(flavour) / "config-host.h"
    return re.search(rf"^#define {symbol}\b", config.read_text(),
                     re.M) is not None


def missing_feature(layout: Layout, flavour: str, test: str) -> str | None:
    """Why *test* cannot run in this build ("built without zstd"), or
    None if it must run."""
    need = NEEDS.get(test)
    if need is None or built_with(layout, flavour, need[0]):
        return None
    return f"QEMU built without {need[1]} ({need[0]} unset)"


def judge(layout: Layout, flavour: str, test: str,
          verdict: Verdict | None) -> str | None:
    """What is wrong with *test*'s verdict (None: it passed, or it could
    not run for a reason :func:`missing_feature` confirms and ``check``
    gives too).  A test that did not really run is never a pass."""
    if verdict is None:
        return f"{test}: check printed no verdict"
    if verdict.status == "pass":
        return None
    if verdict.status == "not run":
        missing = missing_feature(layout, flavour, test)
        need = NEEDS.get(test)
        if missing and need and need[1] in verdict.detail:
            return None
        return f"{test}: not run ({verdict.detail})"
    return f"{test}: {verdict.status} {verdict.detail}".rstrip()


def _check(iotests_dir: Path, fmt: str, tests: list[str], timeout: float,
           options: tuple[str, ...] = ()) -> tuple[dict[str, Verdict], str]:
    """One ``check -<fmt> [options]`` run of *tests*: its verdicts and
    its log."""
    first = ["nice", "-n", "-10"] if os.geteuid() == 0 else []
    res = run([*first, sys.executable, iotests_dir / "check", f"-{fmt}",
               *options, *tests], cwd=iotests_dir, timeout=timeout,
              check=False)
    log = res.stdout + res.stderr
    verdicts: dict[str, Verdict] = {}
    # A result reads "<name>  pass|fail|not run  [start] [end]  <detail>";
    # on a non-tty the announcement "<name>  ...  [start]" shares its line.
    pattern = re.compile(r"(\S+)\s+(pass|fail|not run)\s+\[[^\]]*\]\s*"
                         r"\[[^\]]*\][ \t]*(.*)$", re.M)
    for m in pattern.finditer(log):
        if m.group(1) in tests:
            verdicts[m.group(1)] = Verdict(m.group(1), m.group(2),
                                           m.group(3).strip())
    return verdicts, log


def run_iotests(layout: Layout, flavour: str, tests: tuple[str, ...],
                timeout: float = 900, options: tuple[str, ...] = ()
                ) -> tuple[dict[str, Verdict], str]:
    """Run *tests* with QEMU's ``check`` (and its *options*, e.g.
    ``-valgrind``), one run per image format (qcow2 unless
    :data:`FORMATS` says otherwise); return the verdicts and the logs.

    As root, ``check`` and its QEMUs run at nice -10: ``./run test`` runs
    them beside another pytest worker's TCG guests on two cores, and
    upstream's migrate-bitmaps-postcopy-test asserts that the downtime is
    under a tenth of the postcopy phase (30 ms against 1.2-2.4 s on an
    idle machine), which that contention broke once."""
    iotests_dir = layout.qemu_build(flavour) / "tests" / "qemu-iotests"
    by_format: dict[str, list[str]] = {}
    for test in tests:
        by_format.setdefault(FORMATS.get(test, "qcow2"), []).append(test)
    verdicts: dict[str, Verdict] = {}
    logs = []
    for fmt, names in by_format.items():
        got, log = _check(iotests_dir, fmt, names, timeout, options)
        verdicts.update(got)
        logs.append(f"=== check -{fmt}\n{log}")
    return verdicts, "\n".join(logs)


@dataclass(frozen=True)
class TapResult:
    """The verdict of a GLib unit test binary run with --tap."""

    passed: int
    failed: int
    output: str

    @property
    def ok(self) -> bool:
        return self.failed == 0


def run_tap(binary: Path, timeout: float = 300) -> TapResult:
    """Run a GLib test binary with ``--tap`` and count its verdicts; a
    non-zero exit with no ``not ok`` line (a crash, an abort) counts as
    one failure."""
    res = run([binary, "--tap"], timeout=timeout, check=False)
    ok = len(re.findall(r"^ok \d+", res.stdout, re.M))
    bad = len(re.findall(r"^not ok \d+", res.stdout, re.M))
    if res.returncode != 0 and bad == 0:
        bad = 1
    return TapResult(ok, bad, res.stdout + res.stderr)


def run_unit_test(layout: Layout, flavour: str,
                  name: str = "test-hbitmap") -> TapResult:
    """One of QEMU's unit tests in *flavour*'s build."""
    return run_tap(layout.qemu_build(flavour) / "tests" / "unit" / name)
