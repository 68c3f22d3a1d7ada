"""How the owner of a QEMU judges its end: a QEMU that exits by itself
with an error while the test goes on fails the test, and a crash found
while the test already fails is attached to that failure, not lost.

The QEMUs here are real ``-incoming defer`` destinations; loading a
stream that is not a migration stream makes QEMU exit by itself with
status 1 (its ``exit-on-error``), the end a test can otherwise miss.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from pyqemu.machine.vm import VM, Exit, MachineError, Pair
from pyqemu.paths import Layout
from pyqemu.util.poll import until


def _exits_with_status_1(vm: VM, workdir: Path) -> None:
    junk = workdir / "not-a-stream"
    junk.write_bytes(b"\x00" * 4096)
    vm.cmd("migrate-incoming", uri=f"file:{junk}")
    until(vm.is_running, lambda running: not running, 30,
          f"{vm.name} to exit after a broken incoming stream")


def _destination(layout: Layout, workdir: Path) -> VM:
    return VM(layout, "dst", [], "patched", workdir, incoming=True,
              machine="none")


@pytest.mark.parametrize("end,problem", [
    (Exit(1, False, "qemu: load of migration failed: Invalid argument\n"),
     "status 1: qemu: load of migration failed"),
    (Exit(0, False, ""), None),
    (Exit(-signal.SIGKILL, True, ""), None),
])
def test_an_exit_status_is_judged_against_the_one_allowed(end, problem):
    got = end.status_problem()
    assert (got is None) if problem is None else (problem in (got or "")), got
    assert end.status_problem(allowed=end.code) is None


def test_a_qemu_that_exits_by_itself_fails_the_with_block(layout, workdir):
    with pytest.raises(MachineError, match="exited by itself with status 1"):
        with _destination(layout, workdir) as vm:
            _exits_with_status_1(vm, workdir)


def test_an_allowed_exit_does_not(layout, workdir):
    with _destination(layout, workdir) as vm:
        vm.allow_exit()
        _exits_with_status_1(vm, workdir)
    assert vm.exit is not None and vm.exit.code == 1


def test_a_pair_whose_destination_exits_fails(layout, workdir):
    with pytest.raises(MachineError, match=r"dst \(patched\): QEMU exited"):
        with Pair(layout, [], workdir, machine="none") as p:
            _exits_with_status_1(p.dst, workdir)


def test_a_crash_behind_a_failing_test_is_noted_on_its_error(layout,
                                                             workdir):
    """The test's own error stays the one reported; QEMU's crash rides on
    it as a note instead of being thrown away."""
    with pytest.raises(AssertionError) as failed:
        with _destination(layout, workdir) as vm:
            os.kill(vm.machine.get_pid(), signal.SIGABRT)
            until(vm.is_running, lambda running: not running, 30,
                  "QEMU to die of SIGABRT")
            raise AssertionError("the test's own failure")
    notes = getattr(failed.value, "__notes__", [])
    assert any("killed by signal 6" in n for n in notes), notes

    with pytest.raises(AssertionError) as failed:
        with Pair(layout, [], workdir, machine="none") as p:
            os.kill(p.src.machine.get_pid(), signal.SIGABRT)
            until(p.src.is_running, lambda running: not running, 30,
                  "QEMU to die of SIGABRT")
            raise AssertionError("the test's own failure")
    notes = getattr(failed.value, "__notes__", [])
    assert any(n.startswith("src (patched): QEMU killed by signal 6")
               for n in notes), notes
