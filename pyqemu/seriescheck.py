"""``pyqemu series check``: what a maintainer checks before reading a line.

For every patch of ``patches/``: QEMU's ``scripts/checkpatch.pl`` (no
errors, no warnings), a ``Signed-off-by:``, a subject in QEMU's
``subsystem: summary`` form; then, unless ``--quick``, for every prefix of
the series: it applies, builds (incrementally, through the shared ccache)
and passes ``test-hbitmap``.  One line per patch; the exit status says
whether the series is clean.  ``--quick`` (checkpatch, metadata, apply)
is what CI runs on every submission.
"""

from __future__ import annotations

import re
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from . import buildsteps, deps, series, source
from .log import info
from .paths import Layout

SUBJECT = re.compile(r"^\[PATCH[^\]]*\] ([A-Za-z0-9_.+-]+(?:/[A-Za-z0-9_.+-]+)*"
                     r"(?:, ?[A-Za-z0-9_.+/-]+)*): \S")
#: Warnings that are justified, by patch file name pattern and message.
EXCEPTIONS: list[tuple[str, str]] = []


@dataclass
class PatchReport:
    patch: series.Patch
    problems: list[str] = field(default_factory=list)
    build: str = "-"

    def line(self) -> str:
        status = "ok" if not self.problems else "; ".join(self.problems)
        return f"{self.patch.path.name}: {status} | build: {self.build}"


def subject_line(patch: Path) -> str:
    m = re.search(r"^Subject: (.*(?:\n .*)*)", patch.read_text(errors="replace"),
                  re.M)
    return re.sub(r"\s*\n\s*", " ", m.group(1)) if m else ""


def checkpatch(tree: Path, patch: Path) -> list[str]:
    """checkpatch.pl's errors and warnings, minus documented exceptions."""
    res = subprocess.run(["perl", "scripts/checkpatch.pl", "-q", str(patch)],
                         cwd=tree, capture_output=True, text=True, check=False)
    found = [ln for ln in res.stdout.splitlines()
             if ln.startswith(("ERROR", "WARNING"))]
    return [f"checkpatch {ln}" for ln in found
            if not any(re.search(p, patch.name) and m in ln
                       for p, m in EXCEPTIONS)]


def metadata(patch: Path) -> list[str]:
    text = patch.read_text(errors="replace")
    problems = []
    if not re.search(r"^Signed-off-by: .+ <[^>]+>$", text, re.M):
        problems.append("no Signed-off-by")
    if not SUBJECT.match(subject_line(patch)):
        problems.append(f"subject not 'subsystem: summary': "
                        f"{subject_line(patch)!r}")
    body = text.split("\n\n", 1)[1].split("\n---\n", 1)[0] if "\n\n" in text \
        else ""
    if len([ln for ln in body.splitlines() if ln.strip()]) < 3:
        problems.append("commit message does not explain the change")
    return problems


def _check_tree(layout: Layout, stock: Path) -> tuple[Path, Path]:
    """A scratch clone of the stock tree at its base, and a build dir
    configured like every other flavour (so ccache serves it)."""
    tree = layout.flavour_root("series-check") / "src"
    build = layout.flavour_root("series-check") / "qemu"
    source.sync_clone(stock, tree, series.BASE_TAG, "series-check")
    return tree, build


def _configure(layout: Layout, tree: Path, build: Path) -> None:
    if (build / "build.ninja").exists():
        return
    build.mkdir(parents=True, exist_ok=True)
    res = subprocess.run([str(tree / "configure"),
                          *buildsteps.configure_args("patched")],
                         cwd=build, env=buildsteps.ccache_env(layout),
                         capture_output=True, text=True, check=False)
    if res.returncode != 0:
        raise RuntimeError(f"configure failed in {build}:\n{res.stdout[-3000:]}")


def _build_and_test(layout: Layout, build: Path) -> str:
    start = time.monotonic()
    res = subprocess.run(["ninja", "-C", str(build), "qemu-system-x86_64",
                          "qemu-img", "qemu-io", "tests/unit/test-hbitmap"],
                         env=buildsteps.ccache_env(layout), capture_output=True,
                         text=True, check=False)
    if res.returncode != 0:
        failed = [ln for ln in res.stdout.splitlines() if "error" in ln]
        return "FAILED to build: " + (failed[0] if failed else "see ninja")
    t = subprocess.run([str(build / "tests/unit/test-hbitmap")],
                       capture_output=True, text=True, check=False)
    ok = len(re.findall(r"^ok ", t.stdout, re.M))
    if t.returncode != 0:
        return f"builds, test-hbitmap FAILED ({ok} passed)"
    return f"builds, test-hbitmap {ok} ok ({time.monotonic() - start:.0f} s)"


def check(quick: bool = False) -> tuple[list[PatchReport], bool]:
    deps.ensure(deps.BUILD)
    layout = Layout.default("debian")
    stock, _ = source.prepare_stock(layout, None)
    patches = series.patches()
    reports = [PatchReport(p) for p in patches]
    for r in reports:
        r.problems += metadata(r.patch.path)
        r.problems += checkpatch(stock, r.patch.path)

    tree, build = _check_tree(layout, stock)
    if not quick:
        _configure(layout, tree, build)
    for i, r in enumerate(reports, 1):
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
            r.build = _build_and_test(layout, build)
    clean = all(not r.problems and r.build.startswith(("applies", "builds, "
                                                       "test-hbitmap"))
                and "FAILED" not in r.build for r in reports)
    return reports, clean


def main(quick: bool) -> int:
    reports, clean = check(quick)
    for r in reports:
        print(r.line())
    print(f"series: {len(reports)} patches, "
          f"{'clean' if clean else 'NOT clean'}")
    return 0 if clean else 1
