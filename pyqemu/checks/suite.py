"""``pyqemu test``: build what the suite needs, then run pytest.

The README's test command.  It installs what it needs (the Debian packages
of every test, which ``cli.main`` installs first from
:data:`pyqemu.build.deps.COMMANDS`; both QEMU trees, the shim), so a fresh
clone on a fresh machine can run it with nothing prepared; on a warm cache
the build step is a no-op and testing starts within seconds.  The chosen
tree reaches the tests as pytest's own ``--qemu-src`` option (see
tests/conftest.py).

Only the stream fuzzer's tests need the sanitized tree, the longest build
from a cold cache (about 5 minutes).  It is built in the background, at
the lowest CPU priority, while the rest of the suite runs; those tests
run last and wait for it (the ``sanitized`` fixture, told by pytest's
``--sanitized-status FILE`` where the build writes its exit status).
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import time
from pathlib import Path

from ..build.driver import build
from ..errors import PyqemuError
from ..log import info, warn
from ..paths import FLAVOURS, REPO, Layout
from ..util.poll import until
from ..util.proc import Background, die_with_parent, run

#: pytest-xdist workers.  The suite mostly waits (on guests, migrations
#: held to a bandwidth, timeouts that must expire): a warm run with two
#: workers used 1.3 of the 2 cores; three took 4 min 4 s against 5 min
#: 20 s with two.  Each test module stays on one worker (``loadfile``; see
#: tests/conftest.py).  ``./run test -- -n 0`` runs the suite serially.
WORKERS = 3

class BackgroundBuild:
    """``pyqemu build ARGS`` at nice 19, its output in ``<name>-build.log``,
    its exit status written (atomically) to ``<name>-build.status`` when
    it ends, then *after* started: the builds run one after another,
    never two at once (two cores)."""

    def __init__(self, layout: Layout, name: str, args: list[str],
                 after: "BackgroundBuild | None" = None) -> None:
        self.layout = layout
        self.name = name
        self.args = args
        self.after = after
        self.log = layout.root / f"{name}-build.log"
        self.status = layout.root / f"{name}-build.status"
        self.status.unlink(missing_ok=True)
        self.job: Background | None = None
        self.stopped = False

    def start(self) -> "BackgroundBuild":
        argv = [sys.executable, "-m", "pyqemu", "build", *self.args]
        if self.layout.qemu_src is not None:
            argv += ["--qemu-src", str(self.layout.qemu_src)]
        self.job = Background(argv, self.log, nice=19, cwd=REPO,
                              env=dict(os.environ, PYTHONPATH=str(REPO)),
                              on_exit=self._ended)
        return self

    def _ended(self, code: int) -> None:
        tmp = self.status.with_suffix(".tmp")
        tmp.write_text(f"{code}\n")
        tmp.replace(self.status)
        if self.after is not None and not self.stopped:
            self.after.start()

    def finish(self) -> dict[str, int | None]:
        """Stop what nothing waited for (a selection without its tests);
        every build's exit status, None if it was stopped or never ran."""
        self.stopped = True
        code: int | None = None
        if self.job is not None:
            if self.job.running():
                info(f"stopping the {self.name} build: no test needed it")
                self.job.stop()
            else:
                code = self.job.wait()
        done = {self.name: code}
        if self.after is not None:
            done.update(self.after.finish())
        return done


def wait_built(status: Path | None, what: str, timeout: float) -> None:
    """For the tests: block until the background build of *what* has
    written its exit status to *status* (None: no build runs, it is
    expected built already); raise if it failed."""
    if status is None:
        return
    until(status.exists, bool, timeout, f"the {what} build (log: "
          f"{status.with_suffix('.log')}) ended", interval=1)
    code = status.read_text().strip()
    if code != "0":
        log = status.with_suffix(".log")
        tail = "".join(log.read_text(errors="replace").splitlines(True)[-20:])
        raise PyqemuError(f"building {what} failed (exit {code}; "
                          f"log: {log}):\n{tail}")


def wait_sanitized(status: Path | None, timeout: float) -> None:
    """wait_built() for the sanitized tree."""
    wait_built(status, "sanitized tree", timeout)


#: What a binary built with --enable-asan --enable-ubsan must carry
SANITIZERS = ("AddressSanitizer", "UndefinedBehaviorSanitizer")


def sanitizers(binary: Path) -> list[str]:
    """The sanitizers *binary* really runs with, of :data:`SANITIZERS`.

    A build that lost its flags (a configure cache, a wrong build
    directory) still produces a qemu-system-x86_64 that runs the fuzzer,
    which then finds nothing and passes.  So: AddressSanitizer's runtime
    must load and answer ``ASAN_OPTIONS=help=1`` (it prints its flags at
    start-up), and the binary must call UndefinedBehaviorSanitizer's
    handlers (``__ubsan_handle_*`` among its dynamic imports; that
    runtime prints nothing until it reports)."""
    found = []
    res = run([binary, "--version"], check=False, timeout=60,
              env=dict(os.environ, ASAN_OPTIONS="help=1"))
    if "Available flags for AddressSanitizer" in res.stdout + res.stderr:
        found.append("AddressSanitizer")
    imports = run(["nm", "-D", "--undefined-only", binary],
                  what=f"nm -D {binary}").stdout
    if "__ubsan_handle_" in imports:
        found.append("UndefinedBehaviorSanitizer")
    return found


def main(layout: Layout, pytest_args: list[str]) -> int:
    missing = [m for m in ("pytest", "xdist", "hypothesis", "ruff", "mypy")
               if importlib.util.find_spec(m) is None]
    if missing:
        # ./run installs them for "test"; python -m pyqemu does not
        raise PyqemuError(f"{', '.join(missing)} not installed: run "
                          "./run test, or pip install -r requirements-dev.txt")
    start = time.monotonic()
    build(layout, FLAVOURS)
    info(f"build step took {time.monotonic() - start:.1f}s; running pytest, "
         "the patched libvirt, then the sanitized tree building in the "
         "background")
    sanitized = BackgroundBuild(layout, "sanitized", ["--asan"])
    background = BackgroundBuild(layout, "libvirt", ["--libvirt"],
                                 after=sanitized).start()
    extra = list(pytest_args)
    if extra and extra[0] == "--":
        extra = extra[1:]
    cmd = [sys.executable, "-m", "pytest", str(REPO / "tests"),
           "-o", f"cache_dir={layout.root / 'pytest-cache'}",
           "-n", str(WORKERS), "--dist", "loadfile"]
    if layout.qemu_src is not None:
        cmd.append(f"--qemu-src={layout.qemu_src}")
    cmd.append(f"--sanitized-status={sanitized.status}")
    cmd.append(f"--libvirt-status={background.status}")
    env = dict(os.environ, PYTHONPATH=str(REPO))
    try:
        code = subprocess.run([*cmd, *extra], cwd=REPO, env=env, check=False,
                              preexec_fn=die_with_parent()).returncode
    finally:
        built = background.finish()
    for name, status in built.items():
        if status not in (0, None):
            # the tests that needed it failed on it, if they were selected
            job = sanitized if name == "sanitized" else background
            warn(f"building {name} failed (exit {status}): see {job.log}")
    return code
