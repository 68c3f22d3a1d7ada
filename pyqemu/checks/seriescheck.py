"""``pyqemu series check``: what a maintainer checks before reading a line.

For every patch of ``patches/qemu/``: QEMU's ``scripts/checkpatch.pl`` (no
errors, no warnings), a ``Signed-off-by:``, a subject in QEMU's
``subsystem: summary`` form; then, unless ``--quick``, for every prefix of
the series: it applies, builds (incrementally, through the shared ccache,
configured by the build's own configure step) and passes ``test-hbitmap``
and the iotests that the patch itself adds or changes -- so every fix's
regression test passes on the prefix that ends with the fix, without the
features that come later; and, for each fix, its tests alone, applied to
the prefix before it, fail there (a test that passes without its fix
proves nothing; a use after free, silent in a release build, is tested
under valgrind on both sides: :data:`UNDER_VALGRIND`).
One line per patch; the exit status says whether the series is clean.
``--quick`` (checkpatch, metadata, apply) is what CI runs on every
submission.
"""

from __future__ import annotations

import fnmatch
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..build import deps
from ..build import libvirt as build_libvirt
from ..build.steps import ccache_env, configure, link_firmware
from ..errors import CommandError
from ..log import info
from ..paths import Layout
from ..tree import libvirt as tree_libvirt
from ..tree import series, stock
from ..tree.git import sync_clone
from ..util.proc import run
from .upstream import judge, run_iotests, run_tap

SUBJECT = re.compile(r"^\[PATCH[^\]]*\] ([A-Za-z0-9_.+-]+(?:/[A-Za-z0-9_.+-]+)*"
                     r"(?:, ?[A-Za-z0-9_.+/-]+)*): \S")
#: What the check builds for every prefix of the series.
TARGETS = ("qemu-system-x86_64", "qemu-img", "qemu-io", "qemu-nbd",
           "storage-daemon/qemu-storage-daemon", "tests/unit/test-hbitmap")
#: The flavour name of the scratch tree, for Layout's paths.
FLAVOUR = "series-check"
#: An iotest in a patch's diffstat: tests/qemu-iotests/tests/NAME (not .out)
IOTEST = re.compile(r"^diff --git a/tests/qemu-iotests/tests/([^/\s.]+) ", re.M)


@dataclass
class PatchReport:
    patch: series.Patch
    problems: list[str] = field(default_factory=list)
    build: str = "-"
    waived: list[str] = field(default_factory=list)

    def line(self) -> str:
        status = "ok" if not self.problems else "; ".join(self.problems)
        if self.waived:
            status += f" (waived: {'; '.join(self.waived)})"
        return f"{self.patch.path.name}: {status} | build: {self.build}"


#: checkpatch warnings that cannot be acted on, each with why.  Only a
#: whole finding that matches is waived; the report says so.
WAIVED = (
    (re.compile(r"^WARNING: Does new file 'tests/qemu-iotests/tests/[^'/]+"
                r"\.out' need 'SPDX-License-Identifier'\?$"),
     "an iotest's reference output is compared byte for byte with what the "
     "test prints, so it cannot carry a license line (no upstream .out "
     "file has one)"),
)


def maintained(tree: Path, path: str) -> bool:
    """Whether an F: pattern of the tree's MAINTAINERS covers *path*."""
    for line in (tree / "MAINTAINERS").read_text(errors="replace").splitlines():
        if not line.startswith("F:"):
            continue
        pattern = line[2:].strip()
        if pattern.endswith("/") and path.startswith(pattern):
            return True
        if fnmatch.fnmatch(path, pattern):
            return True
    return False


def findings(output: str) -> list[str]:
    """checkpatch's findings, each with its continuation lines (a
    MAINTAINERS warning lists the files on the lines after it)."""
    found: list[str] = []
    for ln in output.splitlines():
        if ln.startswith(("ERROR", "WARNING")):
            found.append(ln)
        elif found and ln.startswith("  ") and \
                found[-1].startswith("WARNING: added, moved or deleted"):
            found[-1] += " " + ln.strip()
    return found


def waiver(tree: Path, finding: str) -> str | None:
    """Why *finding* cannot be acted on, or None if it must be fixed.

    A MAINTAINERS warning is waived when every file it lists is already
    covered by an existing F: pattern (e.g. Block layer core's
    tests/qemu-iotests/): a new line would only repeat it."""
    for pattern, why in WAIVED:
        if pattern.match(finding):
            return why
    m = re.match(r"WARNING: added, moved or deleted file\(s\): (.*)$", finding)
    if m and all(maintained(tree, f) for f in m.group(1).split()):
        return "every file is already covered by MAINTAINERS"
    return None


def checkpatch(tree: Path, patch: Path,
               waived: list[str] | None = None) -> list[str]:
    """checkpatch.pl's errors and warnings, less the waived ones (appended
    to *waived* with the reason, for the report).

    A checkpatch that fails without saying why, or says anything on
    stderr, is a problem too: a check that could not run is not a pass.
    """
    res = run(["perl", "scripts/checkpatch.pl", "-q", patch], cwd=tree,
              check=False)
    found = []
    for finding in findings(res.stdout):
        why = waiver(tree, finding)
        if why is None:
            found.append(f"checkpatch {finding}")
        elif waived is not None:
            waived.append(f"{finding} ({why})")
    if res.returncode != 0 and not found and not \
            re.search(r"^total: 0 errors", res.stdout, re.M):
        found.append(f"checkpatch failed (exit {res.returncode}) without a "
                     f"finding: {(res.stderr or res.stdout).strip()[-300:]}")
    elif res.stderr.strip():
        found.append(f"checkpatch stderr: {res.stderr.strip()[-300:]}")
    return found


def metadata(patch: Path) -> list[str]:
    text = patch.read_text(errors="replace")
    problems = []
    subject = series.subject_line(patch)
    if not re.search(r"^Signed-off-by: .+ <[^>]+>$", text, re.M):
        problems.append("no Signed-off-by")
    if not SUBJECT.match(subject):
        problems.append(f"subject not 'subsystem: summary': {subject!r}")
    body = text.split("\n\n", 1)[1].split("\n---\n", 1)[0] if "\n\n" in text \
        else ""
    if len([ln for ln in body.splitlines() if ln.strip()]) < 3:
        problems.append("commit message does not explain the change")
    return problems


def own_iotests(patch: Path) -> tuple[str, ...]:
    """The iotests a patch adds or changes, in the order of its diff."""
    return tuple(dict.fromkeys(IOTEST.findall(
        patch.read_text(errors="replace"))))


def _iotests(layout: Layout, tests: tuple[str, ...],
             options: tuple[str, ...] = ()) -> str:
    """Run *tests* on the scratch build (with ``check``'s *options*);
    '' if they all pass."""
    verdicts, log = run_iotests(layout, FLAVOUR, tests, options=options)
    bad = []
    for test in tests:
        problem = judge(layout, FLAVOUR, test, verdicts.get(test))
        if problem and test not in verdicts:
            last = log.strip().splitlines()[-1:] or ["no output"]
            problem += f" ({last[0][:200]})"
        if problem:
            bad.append(problem)
    return "; ".join(bad)


def _build_and_test(layout: Layout, build: Path,
                    iotests: tuple[str, ...] = (),
                    options: tuple[str, ...] = ()) -> str:
    start = time.monotonic()
    try:
        run(["ninja", "-C", build, *TARGETS], env=ccache_env(layout),
            what="ninja")
    except CommandError as e:
        failed = [ln for ln in e.output.splitlines() if "error" in ln]
        return "FAILED to build: " + (failed[0] if failed else "see ninja")
    t = run_tap(build / "tests/unit/test-hbitmap")
    if not t.ok:
        return f"builds, test-hbitmap FAILED ({t.passed} passed, " \
               f"{t.failed} failed)"
    done = f"builds, test-hbitmap {t.passed} ok"
    if iotests:
        link_firmware(build)
        bad = _iotests(layout, iotests, options)
        how = f" {' '.join(options)}" if options else ""
        if bad:
            return f"{done}, own iotests{how} FAILED: {bad}"
        done += f", own iotests{how} pass ({', '.join(iotests)})"
    return f"{done} ({time.monotonic() - start:.0f} s)"


#: Fixes whose own iotests run under valgrind (``check -valgrind``), on
#: the parent and on the fix: a use after free has no symptom of its own
#: in a release build, and valgrind's exit status 99 is what fails the
#: test there (0009: bulk_phase() reading the list that quitting freed;
#: on the parent the first of its rounds fails, on the fix all pass).
UNDER_VALGRIND = ("0009-",)


def _fails_on_parent(layout: Layout, tree: Path, build: Path,
                     patch: Path, options: tuple[str, ...] = ()) -> str:
    """Run a fix's own tests on its parent: only the patch's files under
    tests/ are applied, and the test-hbitmap or iotests it adds must fail
    there.  Returns '' when they did, else what went wrong.  The tree is
    left as it was."""
    iotests = own_iotests(patch)
    try:
        run(["git", "apply", "--include=tests/*", patch], cwd=tree,
            what="git apply of the patch's tests")
        run(["ninja", "-C", build, *TARGETS], env=ccache_env(layout),
            what="ninja")
        failed = not run_tap(build / "tests/unit/test-hbitmap").ok
        if iotests and not failed:
            link_firmware(build)
            failed = bool(_iotests(layout, iotests, options))
    except CommandError as e:
        return f"could not run its tests on the parent: {e}"
    finally:
        run(["git", "checkout", "--", "."], cwd=tree, what="git checkout")
        run(["git", "clean", "-fdq", "--", "tests"], cwd=tree,
            what="git clean")
    return "" if failed else "its own tests PASS on its parent"


def check(layout: Layout, quick: bool = False) -> tuple[list[PatchReport], bool]:
    deps.require(deps.BUILD + deps.FIRMWARE
                 + (() if quick else deps.CALLGRIND))
    base, _ = stock.prepare(layout)
    reports = [PatchReport(p) for p in series.patches()]
    for r in reports:
        r.problems += metadata(r.patch.path)
        r.problems += checkpatch(base, r.patch.path, r.waived)

    # A scratch clone of the stock tree at its base, configured exactly
    # like the patched flavour (so ccache serves it, and changed flags
    # configure it again).
    tree = layout.flavour_root(FLAVOUR) / "src"
    build = layout.qemu_build(FLAVOUR)
    sync_clone(base, tree, stock.BASE_TAG, FLAVOUR)
    if not quick:
        configure(layout, "patched", tree, build)
    fixes = {p.path for p in series.fixes(series.patches())}
    for i, r in enumerate(reports, 1):
        failed_on_parent = False
        name = r.patch.path.name
        options = ("-valgrind",) if name.startswith(UNDER_VALGRIND) else ()
        # patch 1 fixes a test, not QEMU: it has no test of its own
        if not quick and r.patch.path in fixes and i > 1:
            info(f"series check: the tests of patch {i} on patches "
                 f"1-{i - 1}")
            parent = _fails_on_parent(layout, tree, build, r.patch.path,
                                      options)
            if parent:
                r.problems.append(parent)
            failed_on_parent = not parent
        try:
            series.apply_series(tree, [r.patch])
        except series.SeriesError as e:
            r.problems.append(str(e))
            r.build = "not applied"
            for rest in reports[i:]:
                rest.build = "not tried (an earlier patch failed)"
            break
        if quick:
            r.build = "applies"
        else:
            info(f"series check: building with patches 1-{i}")
            r.build = _build_and_test(layout, build,
                                      own_iotests(r.patch.path), options)
            if failed_on_parent:
                r.build += ", its tests fail on its parent"
                if options:
                    r.build += f" ({' '.join(options)})"
    clean = all(not r.problems and (r.build == "applies" or
                                    r.build.startswith("builds, test-hbitmap"))
                and "FAILED" not in r.build for r in reports)
    return reports, clean


def main(layout: Layout, quick: bool) -> int:
    reports, clean = check(layout, quick)
    for r in reports:
        print(r.line())
    print(f"series: {len(reports)} patches, "
          f"{'clean' if clean else 'NOT clean'}")
    libvirt = [p.path.name for p in tree_libvirt.series()]
    if quick:
        tree_libvirt.prepare(layout)
        print(f"libvirt series: {len(libvirt)} patches apply to "
              f"{tree_libvirt.VERSION}")
    else:
        passed, summary = build_libvirt.own_tests(layout)
        clean &= passed
        print(f"libvirt series: {len(libvirt)} patches; libvirt's own "
              f"tests {'pass' if passed else 'FAIL'}: {summary}")
    return 0 if clean else 1
