"""QEMU's own tests on the built trees: the series must keep upstream's
bitmap tests passing, and its own unit tests and iotests must pass.

The iotests run once per session (one ``check`` invocation per image
format, ~1 minute); each test then reports its own verdict so a
regression names itself.  A test that did not really run never counts
as passed: it fails, unless the build lacks a feature it needs
(upstream.NEEDS), and then it is reported as skipped with that reason
until the build has it.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from pyqemu.checks import upstream
from pyqemu.paths import Layout

ALL_IOTESTS = upstream.BITMAP_IOTESTS + upstream.SERIES_IOTESTS


@pytest.fixture(scope="session")
def iotest_results(layout):
    return upstream.run_iotests(layout, "patched", ALL_IOTESTS)


@pytest.mark.parametrize("test", ALL_IOTESTS)
def test_iotest_passes_on_patched_tree(layout, iotest_results, test):
    verdicts, log = iotest_results
    v = verdicts.get(test)
    problem = upstream.judge(layout, "patched", test, v)
    if problem:
        start = log.find("--- ")
        pytest.fail(f"{problem}\n{log[start:][-4000:]}")
    assert v is not None
    if v.status == "not run":
        pytest.skip(f"{test} not run: "
                    f"{upstream.missing_feature(layout, 'patched', test)}; "
                    f"check said: {' '.join(v.detail.split())}")


def _layout_with(tmp_path: Path, config: str) -> Layout:
    """A layout whose patched build's config-host.h is *config*."""
    layout = Layout(tmp_path)
    build = layout.qemu_build("patched")
    build.mkdir(parents=True)
    (build / "config-host.h").write_text(config)
    return layout


@pytest.mark.parametrize("zstd", [False, True])
def test_only_a_missing_feature_excuses_a_test_that_did_not_run(
        tmp_path, zstd):
    """Without zstd in the build, 303's "not run" for zstd is accepted;
    with it, 303 must pass.  Every other "not run" fails, the format a
    test needs first of all (block-status-cache runs on raw only)."""
    layout = _layout_with(tmp_path, "#define CONFIG_ZSTD\n" if zstd
                          else "#undef CONFIG_ZSTD\n")
    no_zstd = upstream.Verdict("303", "not run",
                               "zstd compression not supported")
    assert (upstream.judge(layout, "patched", "303", no_zstd) is None) \
        is not zstd
    assert upstream.judge(layout, "patched", "303", upstream.Verdict(
        "303", "not run", "not suitable for this image format"))
    assert upstream.judge(layout, "patched", "block-status-cache",
                          upstream.Verdict("block-status-cache", "not run",
                                           "not suitable for this image "
                                           "format: qcow2"))
    assert upstream.judge(layout, "patched", "124", None)
    assert upstream.judge(layout, "patched", "124",
                          upstream.Verdict("124", "fail", "output mismatch"))
    assert upstream.judge(layout, "patched", "124",
                          upstream.Verdict("124", "pass", "")) is None
    assert upstream.FORMATS["block-status-cache"] == "raw"


@pytest.mark.parametrize("flavour,minimum", [("stock", 40), ("patched", 53)])
def test_unit_test_hbitmap(layout, flavour, minimum):
    """QEMU's tests/unit/test-hbitmap; the series adds the meta tests."""
    t = upstream.run_unit_test(layout, flavour)
    assert t.failed == 0, t.output[-3000:]
    assert t.passed >= minimum, t.output[-3000:]
