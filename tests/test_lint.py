"""The code is linted (ruff) and type-checked (mypy) with every test run:
their configuration is in pyproject.toml, their versions are pinned in
requirements-dev.txt (which ``./run test`` installs), and an error of
either fails the suite like a failing test."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest

from pyqemu.paths import REPO, Layout


def _tool(module: str, *args: str) -> subprocess.CompletedProcess[str]:
    if importlib.util.find_spec(module) is None:
        pytest.fail(f"{module} is not installed: run ./run test (it installs "
                    "requirements-dev.txt)")
    return subprocess.run([sys.executable, "-m", module, *args], cwd=REPO,
                          capture_output=True, text=True, timeout=600,
                          check=False)


def test_ruff_finds_nothing() -> None:
    res = _tool("ruff", "check", "--no-cache", "--output-format", "concise",
                "pyqemu", "tests", "upstream")
    assert res.returncode == 0, res.stdout + res.stderr


def test_mypy_finds_nothing(layout: Layout) -> None:
    # its cache lives with the other caches, not in the checkout
    res = _tool("mypy", "--cache-dir", str(layout.root / "mypy-cache"))
    assert res.returncode == 0, res.stdout + res.stderr
