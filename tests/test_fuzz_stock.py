"""The fuzzer's regression inputs and findings on the builds without
sanitizers, which need no wait for the ASan tree.

A positive control: the inputs that tests/fuzz/README.md says crash
stock QEMU must crash the stock build, in the assertion it names -- a
replay that stopped reaching the bitmap loader (a changed stream format,
a broken harness) would otherwise pass on the patched build unnoticed.
And the finding that QEMU writes stream bytes into its log verbatim.
"""

from __future__ import annotations

import re

import pytest

from pyqemu.checks.fuzz import campaign, verbatim

README = campaign.REGRESSIONS / "README.md"


def crashes_on_stock() -> dict[str, str]:
    """input name -> the assertion the README's table says it trips on
    stock, as QEMU prints it: "FUNC: Assertion `EXPR" (the README may
    shorten EXPR, so this is a prefix)."""
    out = {}
    for m in re.finditer(r"^\| ([\w-]+) \| `(\w+): Assertion (.+?)`",
                         README.read_text(), re.M):
        out[m.group(1)] = f"{m.group(2)}: Assertion `{m.group(3)}"
    return out


CRASHES = crashes_on_stock()


def test_the_readme_lists_crashes_of_saved_inputs():
    assert len(CRASHES) >= 5, f"{README}: table not understood: {CRASHES}"
    for name in CRASHES:
        assert (campaign.REGRESSIONS / f"{name}.bin").exists(), name


@pytest.mark.parametrize("name", sorted(CRASHES))
def test_regression_input_crashes_stock_as_stated(layout, name):
    qemu = layout.binary("qemu-system-x86_64", "stock")
    outcome = campaign.replay(layout, qemu,
                              campaign.REGRESSIONS / f"{name}.bin")
    assert outcome.verdict == "crash", outcome
    assert CRASHES[name] in outcome.detail, outcome.detail[:2000]


@pytest.mark.parametrize("flavour", ["stock", "patched"])
def test_qemu_copies_stream_bytes_into_its_log_verbatim(layout, flavour):
    """Upstream behaviour, recorded as a finding: a bitmap name from the
    stream, with bytes that are not UTF-8 and an ANSI escape, appears in
    QEMU's log byte for byte.  The load itself is an ordinary outcome
    for the fuzzer (it used to stop the campaign with UnicodeDecodeError)."""
    stream = (campaign.REGRESSIONS / "log-bytes-verbatim.bin").read_bytes()
    # the saved input is the crafted one; craft() starts from a clean seed
    qemu = layout.binary("qemu-system-x86_64", flavour)
    got = verbatim.reproduce(layout, qemu)
    assert got.verbatim, got.line
    assert b"\x1b[31m" in got.line and b"\xb5" in got.line
    assert got.outcome.verdict in ("loaded", "error"), got.outcome
    assert verbatim.NAME in stream, "the saved input is not the crafted one"
