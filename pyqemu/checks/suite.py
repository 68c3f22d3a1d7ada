"""``pyqemu test``: build what the suite needs, then run pytest.

The README's test command.  It installs what it needs (Debian packages,
both QEMU trees, the shim), so a fresh clone on a fresh machine can run it
with nothing prepared; on a warm cache the build step is a no-op and
testing starts within seconds.  The chosen tree reaches the tests as
pytest's own ``--qemu-src`` option (see tests/conftest.py).
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import time

from ..build import deps
from ..build.driver import build
from ..errors import PyqemuError
from ..log import info
from ..paths import REPO, SANITIZED, Layout
from ..util.proc import die_with_parent

#: pytest-xdist workers.  The suite mostly waits (on guests, migrations
#: held to a bandwidth, timeouts that must expire), so two workers halve
#: its time on this project's 2-core machines.  Each test module stays on
#: one worker (``loadfile``; see tests/conftest.py).  ``./run test -- -n 0``
#: runs the suite serially.
WORKERS = 2


def main(layout: Layout, pytest_args: list[str]) -> int:
    missing = [m for m in ("pytest", "xdist", "hypothesis")
               if importlib.util.find_spec(m) is None]
    if missing:
        # ./run installs them for "test"; python -m pyqemu does not
        raise PyqemuError(f"{', '.join(missing)} not installed: run "
                          "./run test, or pip install -r requirements-dev.txt")
    deps.ensure(deps.BUILD + deps.FIRMWARE + deps.TEST)
    start = time.monotonic()
    # stock and patched for everything, the sanitized tree for the fuzzer
    build(layout, ("stock", "patched", SANITIZED))
    info(f"build step took {time.monotonic() - start:.1f}s; running pytest")
    extra = list(pytest_args)
    if extra and extra[0] == "--":
        extra = extra[1:]
    cmd = [sys.executable, "-m", "pytest", str(REPO / "tests"),
           "-o", f"cache_dir={layout.root / 'pytest-cache'}",
           "-n", str(WORKERS), "--dist", "loadfile"]
    if layout.qemu_src is not None:
        cmd.append(f"--qemu-src={layout.qemu_src}")
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run([*cmd, *extra], cwd=REPO, env=env, check=False,
                          preexec_fn=die_with_parent()).returncode
