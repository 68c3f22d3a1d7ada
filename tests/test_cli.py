"""The command line as a newcomer meets it: ``--qemu-src`` checked before
anything happens, errors as one line with the exit status the README
gives, Ctrl-C as ``pyqemu: interrupted`` and 130, usage lines naming
``./run``, ``pip install -e .`` with a ``pyqemu`` command, and
``python -m pyqemu`` from any directory."""

from __future__ import annotations

import os
import pty
import select
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from pyqemu import cli
from pyqemu.paths import REPO
from pyqemu.util.proc import run

PYTHON = sys.executable


def _git_checkout(d: Path, files: tuple[str, ...]) -> Path:
    d.mkdir(parents=True)
    for f in files:
        (d / f).parent.mkdir(parents=True, exist_ok=True)
        (d / f).write_text("x\n")
    run(["git", "init", "-q", d])
    if files:
        run(["git", "-C", d, "add", "-A"])
        run(["git", "-C", d, "-c", "user.name=t", "-c", "user.email=t@t",
             "commit", "-q", "-m", "x"])
    return d


def fake_qemu(d: Path) -> Path:
    """A git checkout with what cli.checkout looks for in a QEMU tree."""
    return _git_checkout(d, tuple(
        m if "." in Path(m).name or m in ("VERSION", "configure")
        else f"{m}/placeholder" for m in cli.QEMU_MARKERS))


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """An empty cache; a build started by mistake fails the test."""
    root = tmp_path / "cache"
    monkeypatch.setenv("PYQEMU_CACHE", str(root))

    def no_build(*args, **kwargs):
        raise AssertionError("a build started")

    monkeypatch.setattr("pyqemu.build.driver.build", no_build)
    return root


def bad_sources(tmp: Path) -> dict[str, tuple[str, str]]:
    """--qemu-src value -> (what is wrong, what the error must say)."""
    tmp.mkdir()
    (tmp / "file").write_text("")
    (tmp / "empty").mkdir()
    other = _git_checkout(tmp / "other", ("README",))
    qemu = fake_qemu(tmp / "qemu")
    return {
        "": ("empty", "--qemu-src is empty"),
        str(tmp / "missing"): ("missing", "no such directory"),
        str(tmp / "file"): ("a file", "not a directory"),
        str(tmp / "empty"): ("not git", "not a git checkout"),
        str(_git_checkout(tmp / "nocommit", ())): ("no commit",
                                                   "without a commit"),
        str(other): ("not QEMU", "does not look like a QEMU checkout"),
        str(qemu / "util"): ("inside a checkout", "give its top directory"),
    }


@pytest.mark.parametrize("before", [False, True], ids=["after", "before"])
def test_a_bad_qemu_src_is_one_line_and_creates_nothing(tmp_path, cache,
                                                        capsys, before):
    for value, (what, says) in bad_sources(tmp_path / "src").items():
        argv = ["build", "--stock", "--qemu-src", value]
        if before:
            argv = ["--qemu-src", value, "build", "--stock"]
        assert cli.main(argv) == 1, what
        err = capsys.readouterr().err
        assert err.startswith("pyqemu: error: --qemu-src") and says in err, \
            (what, err)
        assert err.count("\n") == 1, (what, err)
        assert not cache.exists(), f"{what}: {list(cache.rglob('*'))}"


def test_which_never_advises_building_a_missing_directory(cache, capsys):
    assert cli.main(["which", "qemu-img", "--qemu-src", "/nonexistent"]) == 1
    err = capsys.readouterr().err
    assert err == "pyqemu: error: --qemu-src /nonexistent: no such directory\n"


def test_errors_become_one_line_and_exit_1(tmp_path, cache, capsys):
    qemu = fake_qemu(tmp_path / "qemu")
    assert cli.main(["which", "qemu-img", "--qemu-src", str(qemu)]) == 1
    err = capsys.readouterr().err
    assert err == ("pyqemu: error: qemu-img (patched) is not built yet: run "
                   f"'./run build --patched --qemu-src {qemu}'\n")


def test_qemu_src_before_the_command_or_after_it(tmp_path, cache, capsys):
    qemu = str(fake_qemu(tmp_path / "qemu"))
    for argv in (["--qemu-src", qemu, "which", "qemu-img"],
                 ["which", "qemu-img", "--qemu-src", qemu],
                 ["--qemu-src", qemu, "which", "qemu-img", "--qemu-src", qemu]):
        assert cli.main(argv) == 1
        assert f"--qemu-src {qemu}'" in capsys.readouterr().err, argv
    assert cli.main(["--qemu-src", qemu, "which", "qemu-img",
                     "--qemu-src", "/elsewhere"]) == 1
    assert "--qemu-src given twice" in capsys.readouterr().err


def test_usage_errors_name_run_and_exit_2(capsys):
    assert cli.parser().format_usage().startswith("usage: ./run ")
    with pytest.raises(SystemExit) as e:
        cli.main(["check", "fuzz", "--inputs", "-1"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: ./run check fuzz")
    assert "./run check fuzz: error: argument --inputs" in err


def test_cover_letter_reuse_without_results_says_what_to_run(cache, capsys):
    """--reuse with nothing saved must not start the 20-minute benchmark
    (nor a build): it fails and names the commands."""
    assert cli.main(["series", "cover-letter", "--reuse"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("pyqemu: error: --reuse: no saved benchmark")
    assert "'./run bench migrate'" in err and "'./run bench hbitmap'" in err
    assert err.count("\n") == 1


#: A command whose QMP request QEMU never answers (the QEMU is stopped),
#: so that the Ctrl-C lands inside qemu.qmp's event loop, as it does
#: when a user presses it during a migration.
STUCK = textwrap.dedent("""\
    import os, signal, sys
    from pathlib import Path
    from pyqemu import cli
    from pyqemu.machine.vm import VM
    from pyqemu.report import demo

    def stuck(layout):
        with VM(layout, "stuck", [], "patched", Path(sys.argv[1]),
                machine="none", memory_mb=1) as vm:
            os.kill(vm.machine.get_pid(), signal.SIGSTOP)
            print("stuck", flush=True)
            vm.cmd("query-status")
        return 0

    demo.main = stuck
    sys.exit(cli.main(["demo"]))
    """)


def test_ctrl_c_in_a_qmp_command_is_one_line_and_130(layout, workdir):
    """Before, asyncio printed "Task exception was never retrieved" and
    two tracebacks of ExecInterruptedError after the interrupt."""
    proc = subprocess.Popen(
        [PYTHON, "-c", STUCK, str(workdir)], cwd=workdir,
        env=dict(os.environ, PYTHONPATH=str(REPO),
                 PYQEMU_CACHE=str(layout.root)),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True)     # a process group, as a terminal's job
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == "stuck\n"
        time.sleep(0.3)             # well inside the QMP request
        os.killpg(proc.pid, signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert (proc.returncode, out, err) == (130, "", "pyqemu: interrupted\n")


def _on_a_terminal(argv: list[str], env: dict[str, str], marker: bytes,
                   delay: float, timeout: float = 120) -> tuple[int, bytes,
                                                                bytes]:
    """Run *argv* on a pseudo-terminal; *delay* s after *marker* appears,
    type Ctrl-C.  (exit status, output before it, output after it)."""
    pid, fd = pty.fork()
    if pid == 0:                    # the child: never returns
        os.chdir("/")
        os.execve(argv[0], argv, env)
    out, seen, cut = b"", 0.0, -1
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if cut < 0 and seen and time.monotonic() >= seen + delay:
                os.write(fd, b"\x03")
                cut = len(out)
            ready, _, _ = select.select([fd], [], [], 0.05)
            if ready:
                try:
                    data = os.read(fd, 65536)
                except OSError:     # EIO: the child is gone
                    break
                if not data:
                    break
                out += data
                if not seen and marker in out:
                    seen = time.monotonic()
        else:
            os.kill(pid, signal.SIGKILL)
    finally:
        _, status = os.waitpid(pid, 0)
        os.close(fd)
    if cut < 0:
        pytest.fail(f"never saw {marker!r} to interrupt: {out[-3000:]!r}")
    return os.waitstatus_to_exitcode(status), out[:cut], out[cut:]


def test_ctrl_c_during_the_demo_migration(layout):
    """The user's view: Ctrl-C typed on the terminal during the stock
    migration of ./run demo (the cache is built: its build is a no-op).
    The terminal itself echoes "^C"."""
    env = dict(os.environ, PYTHONPATH=str(REPO), PYQEMU_CACHE=str(layout.root))
    code, before, after = _on_a_terminal(
        [PYTHON, "-m", "pyqemu", "demo"], env, b"stock, dirty-bitmaps: ", 1.0)
    assert b"stock, dirty-bitmaps" in before
    lines = [ln.strip() for ln in after.replace(b"^C", b"").splitlines()
             if ln.strip()]
    assert (code, lines) == (130, [b"pyqemu: interrupted"]), after


def test_python_m_pyqemu_from_another_directory(layout):
    res = subprocess.run([PYTHON, "-m", "pyqemu", "which", "qemu-img",
                          "--stock"], cwd="/", capture_output=True, text=True,
                         check=False,
                         env=dict(os.environ, PYTHONPATH=str(REPO),
                                  PYQEMU_CACHE=str(layout.root)))
    assert (res.returncode, res.stderr) == (0, "")
    assert res.stdout == f"{layout.qemu_build('stock') / 'qemu-img'}\n"


def test_the_package_builds_with_a_pyqemu_command(tmp_path):
    """``pip install -e .`` used to stop at setuptools' "Multiple top-level
    packages discovered" (tests/, plugin/, patches/ beside pyqemu/).
    Here setuptools' own metadata step, which does that discovery, runs
    on a copy of the checkout (so the checkout gets no egg-info, and no
    network or wheel package is needed); then the console script's entry
    point runs from another directory.  The full ``pip install -e .`` in
    a fresh venv is measured in the README."""
    src = tmp_path / "checkout"
    src.mkdir()
    for f in ("pyproject.toml", "requirements.txt", "requirements-dev.txt"):
        shutil.copy(REPO / f, src / f)
    for d in ("pyqemu", "tests", "plugin", "patches"):
        shutil.copytree(REPO / d, src / d,
                        ignore=shutil.ignore_patterns("*.bin", "__pycache__"))
    run([PYTHON, "-c", "from setuptools import setup; setup()", "-q",
         "egg_info", "-e", tmp_path], cwd=src)
    info = tmp_path / "pyqemu.egg-info"
    assert (info / "top_level.txt").read_text().split() == ["pyqemu"]
    assert "pyqemu = pyqemu.cli:console" in \
        (info / "entry_points.txt").read_text()
    # the pins ./run installs, comments left out
    requires = (info / "requires.txt").read_text()
    assert "qemu.qmp==0.0.6" in requires and "#" not in requires
    res = run([PYTHON, "-c", "from pyqemu.cli import console; console()",
               "--help"], cwd="/", env=dict(os.environ, PYTHONPATH=str(src)))
    assert res.stdout.startswith("usage: pyqemu ")
