"""The project's own plumbing, without QEMU: the CLI's flags and error
boundary, the subprocess and polling helpers, how a QEMU's end is
judged, and a regions walk that does not advance."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from pyqemu import cli
from pyqemu.build import deps, driver
from pyqemu.errors import CommandError
from pyqemu.machine import netns
from pyqemu.machine.netns import Link
from pyqemu.machine.vm import VM, Exit, MachineError
from pyqemu.paths import PINNED, REPO, Layout, layout_for
from pyqemu.util.poll import PollTimeout, until
from pyqemu.util.proc import Background, run


@pytest.mark.parametrize("argv", [
    ["check", "faults", "--inputs", "5"],
    ["check", "fuzz", "--inputs", "-1"],
    ["check", "backup", "--inputs", "5"],
    ["check", "backup", "--size", "huge"],
    ["check", "faults", "--size", "small"],
    ["build", "--all"],
    ["series", "check", "--reuse"],
    ["bench", "hbitmap", "--seed", "3"],
])
def test_flags_without_meaning_are_rejected(argv, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(argv)
    assert e.value.code == 2


def test_check_backup_sizes_are_the_scenarios():
    """The CLI spells the sizes out (its --help needs no QEMU); they must
    stay the scenarios checks.backup runs."""
    from pyqemu.checks import backup
    assert list(cli.SIZES) == list(backup.SCENARIOS)
    args = cli.parser().parse_args(["check", "backup", "--size", "large"])
    assert args.func is cli.cmd_check_backup and args.size == ["large"]


def test_layout_for_qemu_src_gets_its_own_trees(tmp_path):
    assert layout_for(None).tag == PINNED and layout_for(None).qemu_src is None
    mine = layout_for(tmp_path)
    assert mine.tag != PINNED and mine.qemu_src == tmp_path.resolve()
    assert mine.source("stock") != layout_for(None).source("stock")


def test_command_error_carries_command_and_stderr_tail():
    with pytest.raises(CommandError) as e:
        run(["sh", "-c", "echo first >&2; echo 'the reason' >&2; exit 3"])
    assert e.value.returncode == 3 and e.value.cmd[0] == "sh"
    assert "exit 3" in str(e.value) and "the reason" in str(e.value)


def test_until_names_what_it_waited_for_and_the_last_state():
    with pytest.raises(PollTimeout, match="the answer: still 41"):
        until(lambda: 41, lambda x: x == 42, 0.1, "the answer", interval=0.01)
    assert until(lambda: 42, lambda x: x == 42, 1, "the answer") == 42


def test_children_die_with_their_parent():
    """PR_SET_PDEATHSIG through the wrapper: a grandchild whose parent
    exits is killed, not orphaned."""
    # The middle process starts `sleep 60` through the wrapper, waits
    # until it runs, and exits.  (The sleep must not hold our pipe, or
    # run() would wait for it.)
    code = ("import subprocess, sys, time\n"
            "from pyqemu.util.proc import deathsig_wrapper\n"
            "p = subprocess.Popen([*deathsig_wrapper(), 'sleep', '60'], "
            "stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)\n"
            "while open(f'/proc/{p.pid}/comm').read().strip() != 'sleep':\n"
            "    time.sleep(0.01)\n"
            "print(p.pid, flush=True)\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True,
                         text=True, check=True,
                         env=dict(os.environ, PYTHONPATH=str(REPO)))
    pid = int(res.stdout)

    def alive() -> bool:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        # a zombie reparented to init counts as gone
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except FileNotFoundError:
            return False
        return stat.split(") ", 1)[1][0] != "Z"

    until(alive, lambda a: not a, 5, f"sleep {pid} to die with its parent")


@pytest.mark.parametrize("end,problem", [
    (Exit(-signal.SIGKILL, True, ""), None),
    (Exit(0, False, "qemu: terminating on signal 15\n"), None),
    (Exit(1, False, "load of migration failed: Invalid argument\n"), None),
    (Exit(-signal.SIGKILL, False, ""), "signal 9"),
    (Exit(-signal.SIGABRT, False, ""), "signal 6"),
    (Exit(-signal.SIGKILL, True,
          "qemu: ../util/hbitmap.c:42: f: Assertion `x' failed.\n"),
     "Assertion"),
    (Exit(1, False, "==1==ERROR: AddressSanitizer: heap-use-after-free\n"),
     "AddressSanitizer"),
])
def test_a_qemu_end_is_judged_by_status_and_output(end, problem):
    got = end.problem()
    assert (got is None) if problem is None else (problem in (got or ""))


def test_regions_walk_that_does_not_advance_raises():
    vm = VM.__new__(VM)
    replies = iter([{"regions": [{"offset": 0, "length": 4096}],
                     "next-offset": 65536},
                    {"regions": [], "next-offset": 65536}])
    vm.cmd = lambda command, **args: next(replies)  # type: ignore[method-assign]
    with pytest.raises(MachineError, match="does not advance"):
        vm.regions("disk0", "bm")


def test_link_exit_kills_what_runs_inside_and_sweeps_stale_namespaces():
    """Nothing outlives a Link: not the processes in its namespaces, not
    the namespaces of a pyqemu that died without cleaning up."""
    stale = f"pq-{2**22 + 1}-beef-a"        # a pid above pid_max: gone
    run(["ip", "netns", "add", stale])
    with Link(rate=None) as link:
        assert not (netns.NETNS_DIR / stale).exists()
        inside = subprocess.Popen([*link.wrapper("a"), "sleep", "60"],
                                  stdout=subprocess.DEVNULL)
        until(lambda: run(["ip", "netns", "pids", link.ns["a"]]).stdout,
              lambda out: str(inside.pid) in out, 5, "sleep in the namespace")
    assert inside.wait(timeout=5) == -signal.SIGKILL
    assert not any((netns.NETNS_DIR / n).exists() for n in link.ns.values())


def _fake_builddir(d: Path, command: str) -> Path:
    (d / "build.ninja").write_text(
        f"rule step\n  command = {command}\n"
        f"build {driver.CONFIGURE_TARGET}: step\n")
    return d


def test_a_failed_step_ahead_fails_the_build_with_its_output(workdir, capsys):
    """The next flavour's steps run in the background: their failure must
    surface when that flavour's turn comes, with their own output."""
    ahead = driver.Ahead("patched", _fake_builddir(
        workdir, "echo the series does not apply; exit 3"))
    with pytest.raises(driver.BuildError, match="preparing the patched"):
        ahead.finish()
    out, err = capsys.readouterr()
    assert "the series does not apply" in err and not out


def test_steps_ahead_are_stopped_when_the_build_before_them_fails(workdir):
    ahead = driver.Ahead("patched", _fake_builddir(workdir, "sleep 60"))
    start = time.monotonic()
    ahead.stop()
    assert ahead.job.proc.returncode not in (None, 0)
    assert time.monotonic() - start < 10, "stop() waited for the step"


def test_a_background_job_reports_its_end_unasked(workdir):
    """The sanitized build's status file is written by on_exit when the
    build ends, with nobody waiting for it: tests poll that file."""
    ended = threading.Event()
    codes: list[int] = []

    def on_exit(code: int) -> None:
        codes.append(code)
        ended.set()

    job = Background(["sh", "-c", "echo building; exit 4"], workdir / "log",
                     nice=5, on_exit=on_exit)
    assert ended.wait(10), "on_exit was not called"
    assert codes == [4] and job.wait() == 4 and not job.running()
    assert job.seconds is not None and job.seconds < 10
    assert (workdir / "log").read_text() == "building\n"


def test_a_background_job_started_by_another_ones_end_survives(workdir):
    """./run test chains its builds (libvirt, then the sanitized tree): the
    second starts in the first one's on_exit.  Its child must not get the
    first waiter's PR_SET_PDEATHSIG: CI once saw the sanitized build die
    with -9 and an empty log."""
    ended = threading.Event()
    second: list[Background] = []

    def start_second(code: int) -> None:
        second.append(Background(["sh", "-c", "sleep 1; echo second; exit 3"],
                                 workdir / "second", nice=5,
                                 on_exit=lambda c: ended.set()))

    Background(["true"], workdir / "first", nice=5, on_exit=start_second)
    assert ended.wait(20), "the second job never ended"
    assert second[0].wait() == 3
    assert (workdir / "second").read_text() == "second\n"


def test_the_suites_build_chain_runs_its_second_build(tmp_path):
    """The same through suite.BackgroundBuild, the way ./run test uses it:
    two real ``pyqemu build --help`` runs, the second started by the
    first's end, both exit 0 (not -9)."""
    from pyqemu.checks.suite import BackgroundBuild, wait_built
    layout = Layout(root=tmp_path)
    second = BackgroundBuild(layout, "second", ["--help"])
    first = BackgroundBuild(layout, "first", ["--help"], after=second).start()
    wait_built(second.status, "second", 60)
    assert first.finish() == {"first": 0, "second": 0}


#: One flavour's build, without QEMU: driver.build() with its real lock
#: and ninja, in a cache of its own, on a build.ninja whose only step
#: records when it starts and ends (a real build directory would
#: recompile QEMU).
FAKE_BUILD = """\
import sys
from pathlib import Path
from pyqemu.build import deps, driver
from pyqemu.paths import Layout

cache, events, tag = Path(sys.argv[1]), sys.argv[2], sys.argv[3]


def setup(layout, flavour):
    d = layout.project_build(flavour)
    d.mkdir(parents=True, exist_ok=True)
    (d / "build.ninja").write_text(
        "rule step\\n"
        f"  command = echo start {tag} >> {events}; echo [0/1] noise; "
        f"sleep 2; echo end {tag} >> {events}\\n"
        "build always: step\\n")
    return d


deps.require = lambda packages: None
driver._setup = setup
driver.build(Layout(cache), ("stock",))
"""


def test_two_builds_of_one_flavour_take_turns(workdir):
    """The second command waits for the first, says so in one line, and
    both succeed; without the lock their steps overlapped and each broke
    the other's build."""
    events = workdir / "events"
    env = dict(os.environ, PYTHONPATH=str(REPO))

    def start(tag: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [sys.executable, "-c", FAKE_BUILD, str(workdir / "cache"),
             str(events), tag], env=env, text=True,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    first = start("first")
    until(lambda: events.exists() and events.read_text(), bool, 30,
          "the first build's step to start")
    second = start("second")
    results = [p.communicate(timeout=60) for p in (first, second)]
    assert [p.returncode for p in (first, second)] == [0, 0], results
    assert events.read_text().split("\n") == [
        "start first", "end first", "start second", "end second", ""]
    (out1, err1), (out2, err2) = results
    waited = [ln for ln in err2.splitlines() if "waiting for" in ln]
    assert len(waited) == 1 and "building stock QEMU" in waited[0], err2
    assert "waiting" not in err1
    # the step's own output stays in the build log
    assert "noise" not in out1 + err1 + out2 + err2


def test_build_output_goes_to_a_log_shown_only_on_failure(
        workdir, monkeypatch, capfd):
    """A warm build prints ninja's no-op lines on every command; they
    belong in a log.  A failed build shows the end of that log."""
    monkeypatch.setattr(deps, "require", lambda packages: None)
    command = "echo [0/1] Generating qemu-source"

    def setup(layout, flavour):
        d = layout.project_build(flavour)
        d.mkdir(parents=True, exist_ok=True)
        (d / "build.ninja").write_text(f"rule step\n  command = {command}\n"
                                       "build always: step\n")
        return d

    monkeypatch.setattr(driver, "_setup", setup)
    layout = Layout(workdir / "cache")
    driver.build(layout, ("stock",))
    out, err = capfd.readouterr()
    assert "Generating" not in out + err and not out
    log = driver.build_log(layout.project_build("stock"))
    assert "[0/1] Generating qemu-source" in log.read_text()

    command = "echo the compiler says no; exit 1"
    with pytest.raises(driver.BuildError, match="all of it in .*build.log"):
        driver.build(layout, ("stock",))
    out, err = capfd.readouterr()
    assert "the compiler says no" in err and not out
