"""``pyqemu test``: build what the suite needs, then run pytest.

The README's test command.  It installs what it needs (Debian packages,
both QEMU trees, the shim), so a fresh clone on a fresh machine can run it
with nothing prepared; on a warm cache the build step is a no-op and
testing starts within seconds.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

from . import build as buildmod
from . import deps
from .log import info
from .paths import REPO, SANITIZED, Layout


def main(args: argparse.Namespace) -> int:
    deps.ensure(deps.BUILD + deps.FIRMWARE + deps.TEST)
    start = time.monotonic()
    # stock and patched for everything, the sanitized tree for the fuzzer
    buildmod.build(("stock", "patched", SANITIZED), qemu_src=args.qemu_src)
    info(f"build step took {time.monotonic() - start:.1f}s; running pytest")
    extra = list(args.pytest_args)
    if extra and extra[0] == "--":
        extra = extra[1:]
    layout = Layout.default()
    cmd = [sys.executable, "-m", "pytest", str(REPO / "tests"),
           "-o", f"cache_dir={layout.root / 'pytest-cache'}", *extra]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run(cmd, cwd=REPO, env=env, check=False).returncode
