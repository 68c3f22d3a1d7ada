"""QEMU's own tests on the built trees: the series must keep upstream's
bitmap tests passing, and its own unit tests and iotests must pass.

The iotests run once per session (one ``check`` invocation, ~1 minute);
each test then reports its own verdict so a regression names itself.
"""

from __future__ import annotations

import pytest

from pyqemu.checks import upstream

ALL_IOTESTS = upstream.BITMAP_IOTESTS + upstream.SERIES_IOTESTS


@pytest.fixture(scope="session")
def iotest_results(layout):
    return upstream.run_iotests(layout, "patched", ALL_IOTESTS)


@pytest.mark.parametrize("test", ALL_IOTESTS)
def test_iotest_passes_on_patched_tree(iotest_results, test):
    verdicts, log = iotest_results
    assert test in verdicts, f"check printed no verdict for {test}:\n{log[-3000:]}"
    v = verdicts[test]
    if v.status == "not run":
        reason = upstream.EXPECTED_NOT_RUN.get(test)
        assert reason and reason in v.detail, \
            f"{test} unexpectedly not run: {v.detail}"
        return
    if v.status != "pass":
        start = log.find("--- ")
        pytest.fail(f"{test}: {v.status} {v.detail}\n{log[start:][-4000:]}")


@pytest.mark.parametrize("flavour,minimum", [("stock", 40), ("patched", 53)])
def test_unit_test_hbitmap(layout, flavour, minimum):
    """QEMU's tests/unit/test-hbitmap; the series adds the meta tests."""
    t = upstream.run_unit_test(layout, flavour)
    assert t.failed == 0, t.output[-3000:]
    assert t.passed >= minimum, t.output[-3000:]
