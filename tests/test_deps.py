"""Only the ``./run`` commands install Debian packages.

A test or helper that installs for itself changes the machine under the
test's feet: one did, libvirt's packages appeared in the middle of a test
that snapshots /etc/libvirt, and ``./run test`` failed on every fresh
machine.  So (see :mod:`pyqemu.build.deps`):

* nothing but ``cli.main`` (through ``deps.ensure_for``) calls the
  installing functions, and nothing in ``pyqemu/machine`` or the tests
  runs apt, dpkg or useradd (a static check of the source);
* every command of the CLI has its ``deps.COMMANDS`` entry, covering the
  package groups that the modules it runs require, and ``test``'s covers
  the tests' (the same check, over the import graph);
* with dpkg's database pointed at an empty directory, so that every
  package looks missing and nothing is uninstalled, and apt-get, dpkg and
  useradd replaced on PATH by recorders: the helpers fail with one line
  naming ``./run test`` and run none of them, and each command runs
  apt-get for its packages before anything else;
* apt-get waits for another apt-get's locks (in private apt directories).
"""

from __future__ import annotations

import argparse
import ast
import fcntl
import inspect
import os
import re
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pyqemu import cli
from pyqemu.build import deps
from pyqemu.errors import PyqemuError
from pyqemu.machine import linuxguest, netns
from pyqemu.machine.libvirt import Hosts
from pyqemu.paths import REPO

#: The functions that install, and the only files that may call them
#: (this one runs apt-get only in private, empty apt directories).
INSTALLING = {"ensure", "ensure_for", "apt_get"}
MAY_INSTALL = {"pyqemu/build/deps.py", "pyqemu/cli.py", "tests/test_deps.py"}
#: Programs a helper or test must not run (as the first word of an argv
#: list given to a call, or in a shell command line).
TOOLS = {"apt-get", "apt", "aptitude", "dpkg", "useradd", "adduser"}
SHELL_INSTALL = re.compile(r"\b(apt-get|apt|aptitude)\s+(-\S+\s+)*install\b|"
                           r"\bdpkg\s+(-\S+\s+)*(-i|--install)\b|"
                           r"\b(useradd|adduser)\s+-")
#: Where no tool may run at all.
NEVER_RUN = ("pyqemu/machine/", "tests/")


def _python_files(root: Path) -> list[Path]:
    return sorted((root / "pyqemu").rglob("*.py")) + \
        sorted((root / "tests").rglob("*.py"))


def violations(root: Path) -> list[str]:
    """Where under *root* something but a command installs, or a helper
    or test runs an installing tool."""
    out = []
    for path in _python_files(root):
        rel = path.relative_to(root).as_posix()
        tree = ast.parse(path.read_text(), str(path))
        strict = rel.startswith(NEVER_RUN)
        for node in ast.walk(tree):
            where = f"{rel}:{getattr(node, 'lineno', '?')}"
            if rel not in MAY_INSTALL:
                if isinstance(node, ast.Attribute) and \
                        node.attr in INSTALLING and \
                        isinstance(node.value, ast.Name) and \
                        node.value.id == "deps":
                    out.append(f"{where}: deps.{node.attr}")
                if isinstance(node, ast.ImportFrom) and \
                        (node.module or "").endswith("deps"):
                    out += [f"{where}: imports {a.name} from deps"
                            for a in node.names if a.name in INSTALLING]
            if not strict:
                continue
            if isinstance(node, ast.Call) and node.args and \
                    isinstance(node.args[0], (ast.List, ast.Tuple)):
                first = node.args[0].elts[:1]
                if first and isinstance(first[0], ast.Constant) and \
                        first[0].value in TOOLS:
                    out.append(f"{where}: runs {first[0].value}")
            if isinstance(node, ast.Constant) and \
                    isinstance(node.value, str) and \
                    SHELL_INSTALL.search(node.value):
                out.append(f"{where}: shell {node.value[:40]!r}")
    return out


def test_only_commands_install() -> None:
    assert violations(REPO) == []


# -- the import graph ------------------------------------------------------

def _module_file(name: str) -> Path | None:
    p = REPO.joinpath(*name.split("."))
    if (p / "__init__.py").is_file():
        return p / "__init__.py"
    return p.with_suffix(".py") if p.with_suffix(".py").is_file() else None


def _imports(tree: ast.AST, package: str, nested: bool = True) -> set[str]:
    """pyqemu modules imported in *tree*; *package* resolves relative
    imports.  Without *nested*, only the imports a module runs when it is
    imported (not those inside its functions: a function that imports is
    how cli runs a command's module only for that command)."""
    out = set()
    nodes = ast.walk(tree) if nested else \
        (n for stmt in getattr(tree, "body", [])
         for n in ([stmt] if not isinstance(stmt, (ast.If, ast.Try))
                   else ast.walk(stmt)))
    for node in nodes:
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("pyqemu")}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[:len(parts) - node.level + 1])
                base = f"{base}.{node.module}" if node.module else base
            else:
                base = node.module or ""
            if not base.startswith("pyqemu"):
                continue
            for a in node.names:
                sub = f"{base}.{a.name}"
                out.add(sub if _module_file(sub) else base)
    return out


def _closure(modules: set[str]) -> set[str]:
    """*modules* and everything they import, with their packages."""
    seen: set[str] = set()
    todo = list(modules)
    while todo:
        name = todo.pop()
        if name in seen or _module_file(name) is None:
            continue
        seen.add(name)
        parts = name.split(".")
        todo += [".".join(parts[:i]) for i in range(1, len(parts))]
        path = _module_file(name)
        assert path is not None
        package = name if path.name == "__init__.py" else \
            name.rpartition(".")[0]
        todo += _imports(ast.parse(path.read_text()), package, nested=False)
    return seen


def _groups(tree: ast.AST) -> set[str]:
    """The deps package groups (``deps.LIBVIRT``...) that *tree* names."""
    return {node.attr for node in ast.walk(tree)
            if isinstance(node, ast.Attribute) and
            isinstance(node.value, ast.Name) and node.value.id == "deps" and
            isinstance(getattr(deps, node.attr, None), tuple)}


def _required(modules: set[str]) -> set[str]:
    """Packages of every group the closure of *modules* names (deps.py
    itself, which defines them all, left out)."""
    names: set[str] = set()
    for m in _closure(modules) - {"pyqemu.build.deps"}:
        path = _module_file(m)
        assert path is not None
        names |= _groups(ast.parse(path.read_text()))
    return {p for g in names for p in getattr(deps, g)}


def commands() -> Iterator[tuple[str, list[str], argparse.Namespace]]:
    """Every command of the CLI: its deps.COMMANDS key, the shortest argv
    that selects it, and what argparse makes of that argv."""
    def walk(p: argparse.ArgumentParser, argv: list[str]
             ) -> Iterator[list[str]]:
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    yield from walk(sub, argv + [name])
                return
        # required positionals: their first choice
        yield argv + [str(next(iter(a.choices))) for a in p._actions
                      if not a.option_strings and a.choices]

    for argv in walk(cli.parser(), []):
        args = cli.parser().parse_args(argv)
        yield args.needs, argv, args


def test_every_command_installs_what_its_modules_require() -> None:
    """A module that starts to need a package group fails this test until
    the commands that run it install the group."""
    seen = set()
    for key, argv, args in commands():
        seen.add(key)
        assert key in deps.COMMANDS, f"./run {' '.join(argv)}"
        source = textwrap.dedent(inspect.getsource(args.func))
        need = _required(_imports(ast.parse(source), "pyqemu"))
        assert need <= set(deps.COMMANDS[key]), \
            f"./run {key} does not install {need - set(deps.COMMANDS[key])}"
    assert seen == set(deps.COMMANDS)


def test_the_test_command_installs_what_the_tests_require() -> None:
    trees = [ast.parse(p.read_text()) for p in (REPO / "tests").glob("*.py")]
    modules = set().union(*(_imports(t, "tests") for t in trees))
    need = _required(modules) | {p for t in trees for g in _groups(t)
                                 for p in getattr(deps, g)}
    assert need <= set(deps.COMMANDS["test"]), \
        need - set(deps.COMMANDS["test"])
    # the libvirt tests' packages above all (the fresh-machine failure)
    assert set(deps.LIBVIRT) <= need


# -- behaviour with every package missing ----------------------------------

@pytest.fixture
def bare_machine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """dpkg's database is an empty directory (every package is missing,
    nothing is uninstalled), and apt-get, apt, dpkg, useradd and adduser
    are recorders that write their command line into the returned log
    and succeed."""
    admin = tmp_path / "dpkg"
    admin.mkdir()
    (admin / "status").touch()
    monkeypatch.setattr(deps, "ADMINDIR", str(admin))
    bindir = tmp_path / "bin"
    bindir.mkdir()
    log = tmp_path / "ran.log"
    log.touch()
    for tool in sorted(TOOLS):
        script = bindir / tool
        script.write_text(f'#!/bin/sh\necho "{tool} $*" >> {log}\n')
        script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}:{os.environ['PATH']}")
    return log


def _one_line_naming_the_command(e: BaseException) -> None:
    text = str(e)
    assert "\n" not in text and "run ./run test" in text, text


def test_bare_machine_is_bare(bare_machine: Path) -> None:
    """The simulation works: every package is missing, the real dpkg
    database is not read (positive control of the tests below)."""
    assert deps.missing(["coreutils", "dpkg"]) == ["coreutils", "dpkg"]


def test_a_helper_with_a_package_missing_fails_with_one_line(
        bare_machine: Path) -> None:
    with pytest.raises(deps.DependencyError) as e:
        linuxguest.kernel()
    _one_line_naming_the_command(e.value)
    assert "linux-image-amd64" in str(e.value)
    assert bare_machine.read_text() == ""


@pytest.mark.skipif(os.geteuid() != 0, reason="namespaces need root: the "
                    "root check comes first")
def test_namespaces_and_libvirt_hosts_with_packages_missing(
        bare_machine: Path) -> None:
    namespaces = set(netns.NETNS_DIR.iterdir()) \
        if netns.NETNS_DIR.is_dir() else set()
    with pytest.raises(deps.DependencyError) as e:
        netns.Link(rate=None).__enter__()
    _one_line_naming_the_command(e.value)
    assert "iproute2" in str(e.value)
    hosts = Hosts()
    with pytest.raises(deps.DependencyError) as e:
        hosts.__enter__()
    _one_line_naming_the_command(e.value)
    assert "libvirt-daemon" in str(e.value) and \
        "./run check libvirt" in str(e.value)
    # nothing was set up, and what the constructor made is gone again
    assert not hosts.workdir.exists()
    assert (set(netns.NETNS_DIR.iterdir()) if netns.NETNS_DIR.is_dir()
            else set()) == namespaces
    assert bare_machine.read_text() == ""


@pytest.mark.skipif(os.geteuid() != 0, reason="ensure() wants root first")
def test_each_command_installs_its_packages_before_anything_else(
        bare_machine: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """With the recorders, apt-get "succeeds" but installs nothing, so the
    command fails right after it, with one line; its own work never
    starts."""
    started = []
    for name in dir(cli):
        if name.startswith("cmd_"):
            monkeypatch.setattr(cli, name,
                                lambda *a, _n=name: started.append(_n))
    for key, argv, _ in commands():
        bare_machine.write_text("")
        assert cli.main(argv) == 1, argv
        err = capsys.readouterr().err.splitlines()
        # progress lines, then the one error line
        assert [e for e in err if "error" in e] == err[-1:] and \
            err[-1].startswith("pyqemu: error: apt-get did not install: "), err
        ran = bare_machine.read_text().splitlines()
        want = " ".join(deps.COMMANDS[key])
        assert ran == [
            f"apt-get -o DPkg::Lock::Timeout={deps.LOCK_TIMEOUT} update -qq",
            f"apt-get -o DPkg::Lock::Timeout={deps.LOCK_TIMEOUT} install -y "
            f"-qq --no-install-recommends {want}"], argv
    assert started == []


# -- apt-get and another apt-get's locks ------------------------------------

def _private_apt(root: Path) -> list[str]:
    """apt-get options for a private, empty apt: its own dpkg database,
    lists, cache and (no) sources, so that its locks are files here."""
    for d in ("admin", "state/lists/partial", "cache/archives/partial",
              "sources.list.d"):
        (root / d).mkdir(parents=True)
    (root / "admin" / "status").touch()
    opts = {"Dir::State": root / "state",
            "Dir::State::status": root / "admin" / "status",
            "Dir::Cache": root / "cache",
            "Dir::Etc::sourcelist": "/dev/null",
            "Dir::Etc::sourceparts": root / "sources.list.d"}
    return [x for k, v in opts.items() for x in ("-o", f"{k}={v}")]


def _hold(lock: Path, seconds: float) -> None:
    """Hold *lock* the way apt and dpkg do (fcntl), for *seconds*."""
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o640)
    fcntl.lockf(fd, fcntl.LOCK_EX)
    threading.Timer(seconds, os.close, (fd,)).start()


@pytest.mark.parametrize("command, lock", [
    # dpkg's lock: apt's own DPkg::Lock::Timeout waits for it
    (("install", "-y", "-qq"), "admin/lock-frontend"),
    # the lists' lock, which apt 2.6 does not wait for: apt_get retries
    (("update", "-qq"), "state/lists/lock"),
])
def test_apt_get_waits_for_another_apt_get(
        workdir: Path, command: tuple[str, ...], lock: str) -> None:
    opts = _private_apt(workdir)
    _hold(workdir / lock, 1.5)
    start = time.monotonic()
    deps.apt_get(*command, options=opts, timeout=60)
    assert time.monotonic() - start >= 1.4
    # a lock held past the timeout is an error that says so
    _hold(workdir / lock, 8)
    start = time.monotonic()
    with pytest.raises(PyqemuError, match="lock"):
        deps.apt_get(*command, options=opts, timeout=1)
    assert time.monotonic() - start < 7
