"""The sanitized build is what the fuzzer and test_quit_live rely on to
see memory errors; a build that lost its flags would let them pass on
nothing.  The ``sanitized`` fixture therefore checks the binary's
sanitizers, and that check must be able to say no: the release build is
its negative control."""

from __future__ import annotations

from pathlib import Path

import pytest

from pyqemu.checks import suite
from pyqemu.errors import PyqemuError


def test_the_sanitized_binary_runs_with_both_sanitizers(sanitized: Path):
    assert suite.sanitizers(sanitized) == list(suite.SANITIZERS)


@pytest.mark.parametrize("flavour", ["stock", "patched"])
def test_a_release_binary_has_none(layout, flavour):
    assert suite.sanitizers(layout.binary("qemu-system-x86_64",
                                          flavour)) == []


def test_the_background_build_status_is_waited_for(tmp_path: Path):
    suite.wait_sanitized(None, 1)           # no background build: built
    status = tmp_path / "sanitized-build.status"
    status.write_text("0\n")
    suite.wait_sanitized(status, 1)
    status.write_text("2\n")
    status.with_suffix(".log").write_text("ninja: build stopped\n")
    with pytest.raises(PyqemuError, match="(?s)exit 2.*ninja: build stopped"):
        suite.wait_sanitized(status, 1)
