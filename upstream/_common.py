"""Shared code of the reproducers in this directory.

Each reproducer is a script that starts one or two QEMU processes of
the binary it is given, drives them over QMP and decides whether a
defect showed.  It must work with any QEMU from 7.2 on, built anywhere,
so it needs nothing but that binary (and qemu-img where an image is
involved) and the ``qemu.qmp`` package from PyPI.

The contract with whoever runs a reproducer, human or script: the last
line of its output is one of

    REPRODUCED: <evidence>             exit status 0
    NOT REPRODUCED: <what happened>    exit status 1
    CANNOT RUN: <why>                  exit status 2
    ERROR: <what went wrong>           exit status 3

``ERROR`` is the reproducer's own failure (a deadline of the harness,
a QMP reply it did not expect, a bug): never a verdict on QEMU.  It is
kept apart from ``NOT REPRODUCED`` so that a broken reproducer cannot
pass for a fixed QEMU.

Every QEMU a reproducer starts is killed when it ends, however it ends
(an exception, SIGTERM, SIGINT; SIGKILL of the script kills QEMU too,
through the parent-death signal), and every wait has a deadline.

QMP is spoken with ``qemu.qmp.QMPClient`` run to completion on a private
event loop: its legacy synchronous wrapper has no deadline on connect,
and a QEMU that hangs is one of the things these scripts look for.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

from qemu.qmp import ConnectError, ExecuteError, QMPClient

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB
TiB = 1024 * GiB

#: exit status of each verdict
EXIT = {"REPRODUCED": 0, "NOT REPRODUCED": 1, "CANNOT RUN": 2, "ERROR": 3}

#: seconds QEMU gets to create its monitor socket and greet, and a QMP
#: command to answer, unless a caller says otherwise.  Generous: the
#: machine may be loaded, and a deadline here only turns a slow QEMU
#: into an ERROR, never into a verdict.
START_TIMEOUT = 30.0
CMD_TIMEOUT = 30.0


class Verdict(Exception):
    """Raised to end a reproducer with its final line."""

    def __init__(self, kind: str, text: str):
        assert kind in EXIT, kind
        super().__init__(f"{kind}: {text}")
        self.kind = kind
        self.text = text


def reproduced(text: str) -> NoReturn:
    raise Verdict("REPRODUCED", text)


def not_reproduced(text: str) -> NoReturn:
    raise Verdict("NOT REPRODUCED", text)


def cannot_run(text: str) -> NoReturn:
    raise Verdict("CANNOT RUN", text)


class HarnessError(Exception):
    """Something the reproducer did not expect: ends in ``ERROR``."""


class QmpTimeout(HarnessError):
    """A QMP command got no answer in time."""


def note(text: str) -> None:
    """A line of evidence, printed as it is found."""
    print(f"# {text}", flush=True)


# ---------------------------------------------------------------------
# QEMU processes


def _die_with_parent() -> None:
    """In the child before exec: SIGKILL when the script dies, so that a
    reproducer killed by SIGKILL leaves no QEMU behind (Linux only)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)       # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def describe_status(status: int | None) -> str:
    """How a process ended, as a person would say it."""
    if status is None:
        return "still running"
    if status < 0:
        try:
            name = signal.Signals(-status).name
        except ValueError:
            name = f"signal {-status}"
        return f"killed by {name}"
    return f"exit status {status}"


#: lines of a QEMU log that explain a crash
_CRASH_LINE = re.compile(
    r"Assertion .* failed|assertion failed|code should not be reached|"
    r"ERROR:.*:|AddressSanitizer|runtime error:|Segmentation fault|"
    r"double free|corrupted|free\(\)")


def crash_lines(log: str) -> list[str]:
    return [ln.strip() for ln in log.splitlines() if _CRASH_LINE.search(ln)]


class Qemu:
    """One QEMU process with a QMP monitor, killed on every path.

    *args* are appended to a minimal command line: ``-machine`` (the
    reproducer's ``--machine``, ``none`` unless a guest is needed),
    TCG, no display, no default devices, and the QMP socket.
    """

    #: every Qemu started by this process, so that main() can kill
    #: whatever is left when the reproducer ends
    launched: list[Qemu] = []

    def __init__(self, binary: str, workdir: Path, name: str,
                 args: Sequence[str] = (), machine: str = "none",
                 env: dict[str, str] | None = None):
        self.binary = binary
        self.name = name
        self.sock = workdir / f"{name}.qmp"
        self.log_path = workdir / f"{name}.log"
        self.argv = [binary, "-machine", machine, "-accel", "tcg",
                     "-display", "none", "-nodefaults",
                     "-qmp", f"unix:{self.sock},server=on,wait=off",
                     *args]
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None
        self.loop = asyncio.new_event_loop()
        self.qmp = QMPClient(name)
        self.events: list[dict[str, Any]] = []

    # -- life cycle ---------------------------------------------------

    def launch(self) -> Qemu:
        env = dict(os.environ, **(self.env or {}))
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                self.argv, stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT, env=env,
                preexec_fn=_die_with_parent)
        Qemu.launched.append(self)
        deadline = time.monotonic() + START_TIMEOUT
        while not self.sock.exists():
            if self.proc.poll() is not None:
                raise HarnessError(
                    f"{self.name} exited at start-up "
                    f"({describe_status(self.proc.returncode)}): "
                    f"{self.log().strip()[-500:]}")
            if time.monotonic() > deadline:
                raise HarnessError(f"{self.name} created no QMP socket in "
                                   f"{START_TIMEOUT:.0f} s")
            time.sleep(0.02)
        while True:
            try:
                self._run(self.qmp.connect(str(self.sock)),
                          max(deadline - time.monotonic(), 1.0))
                return self
            except ConnectError:
                # the socket exists from bind(), accepts from listen()
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise
                time.sleep(0.02)

    def __enter__(self) -> Qemu:
        return self.launch()

    def __exit__(self, *exc: object) -> None:
        self.kill()

    def kill(self) -> None:
        """SIGKILL if still running; always reaped, QMP always closed."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                pass
        if self.loop.is_closed():
            return
        try:
            self._run(self.qmp.disconnect(), 5)
        except Exception:            # noqa: BLE001 - the process is gone
            pass
        # a wait cut short (a signal) leaves its task behind: end it here
        # rather than have asyncio complain at exit
        left = asyncio.all_tasks(self.loop)
        for task in left:
            task.cancel()
        if left:
            try:
                self.loop.run_until_complete(
                    asyncio.gather(*left, return_exceptions=True))
            except Exception:        # noqa: BLE001 - best effort
                pass
        self.loop.close()

    def wait_exit(self, timeout: float) -> int | None:
        """The exit status once the process ended, None at the deadline
        (then it still runs)."""
        assert self.proc is not None
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def status(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def cpu_seconds(self) -> float:
        """User + system CPU time of the process so far (Linux)."""
        assert self.proc is not None
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text() \
            .rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / \
            os.sysconf("SC_CLK_TCK")

    # -- QMP ----------------------------------------------------------

    def _run(self, coro: Any, timeout: float | None) -> Any:
        return self.loop.run_until_complete(asyncio.wait_for(coro, timeout))

    def cmd(self, command: str, /, **args: Any) -> Any:
        """Execute a QMP command; an error reply raises ExecuteError, no
        reply within ``_timeout`` seconds (an argument of its own, not
        sent; CMD_TIMEOUT by default) raises QmpTimeout."""
        timeout = float(args.pop("_timeout", CMD_TIMEOUT))
        try:
            return self._run(self.qmp.execute(command, args or None),
                             timeout)
        except TimeoutError:
            raise QmpTimeout(f"{self.name}: {command} got no answer in "
                             f"{timeout:.0f} s") from None

    def try_cmd(self, command: str, /, **args: Any) -> Any:
        """The return value, or the error reply as ``{"error": desc}``."""
        try:
            return self.cmd(command, **args)
        except ExecuteError as e:
            return {"error": str(e)}

    def answers(self, timeout: float) -> bool:
        """Does the monitor answer query-status within *timeout* seconds?"""
        try:
            self.cmd("query-status", _timeout=timeout)
            return True
        except QmpTimeout:
            return False

    def hmp(self, command_line: str) -> str:
        return str(self.cmd("human-monitor-command",
                            **{"command-line": command_line}))

    def version(self) -> str:
        v = self.cmd("query-version")
        q = v["qemu"]
        return f"{q['major']}.{q['minor']}.{q['micro']} {v['package']}".strip()

    def commands(self) -> list[str]:
        return [c["name"] for c in self.cmd("query-commands")]

    def _pull(self, timeout: float) -> bool:
        """Move one event into self.events; False at the deadline."""
        try:
            ev = self._run(self.qmp.events.get(), timeout)
        except TimeoutError:
            return False
        self.events.append(dict(ev))
        return True

    def wait_event(self, name: str, timeout: float,
                   match: Callable[[dict[str, Any]], bool] | None = None
                   ) -> dict[str, Any] | None:
        """The first event called *name* (and matching *match*), taken out
        of the queue; None if it did not come within *timeout* or QEMU
        ended first."""
        deadline = time.monotonic() + timeout
        while True:
            for i, ev in enumerate(self.events):
                if ev["event"] == name and (match is None or match(ev)):
                    return self.events.pop(i)
            left = deadline - time.monotonic()
            if left <= 0 or not self.alive():
                return None
            self._pull(min(left, 0.2))

    def wait_migration(self, statuses: Sequence[str], timeout: float
                       ) -> str | None:
        """Wait for a MIGRATION event with one of *statuses* (needs the
        ``events`` capability); the status, or None."""
        ev = self.wait_event(
            "MIGRATION", timeout,
            lambda e: e["data"]["status"] in statuses)
        return None if ev is None else str(ev["data"]["status"])

    # -- migration helpers ---------------------------------------------

    def set_caps(self, **caps: bool) -> None:
        self.cmd("migrate-set-capabilities", capabilities=[
            {"capability": k.replace("_", "-"), "state": v}
            for k, v in caps.items()])

    def migration_status(self) -> str:
        return str(self.cmd("query-migrate").get("status", "none"))

    def bitmaps(self, node: str) -> dict[str, dict[str, Any]]:
        """The dirty bitmaps of *node* by name (query-named-block-nodes
        has them on every version since 4.0)."""
        for n in self.cmd("query-named-block-nodes"):
            if n["node-name"] == node:
                return {b["name"]: b for b in n.get("dirty-bitmaps", [])
                        if "name" in b}
        raise HarnessError(f"{self.name}: no node {node!r}")


def null_node(size: int) -> str:
    """A ``-blockdev`` for node drive0 of *size* bytes that stores nothing:
    bitmaps need a node, and null-co gives one of any size (4 TiB and
    more) without a byte on disk, so the scripts can use the sizes where
    the defects show."""
    return f"driver=null-co,node-name=drive0,size={size}"


def migration_pair(args: argparse.Namespace, workdir: Path, size: int,
                   dst_size: int | None = None) -> tuple[Qemu, Qemu, Path]:
    """A source and a destination QEMU, each with a :func:`null_node` of
    *size* bytes (the destination's *dst_size*, where the defect is a
    size that differs), the destination waiting for the stream on a unix
    socket in *workdir*; both running, the source's version noted.
    Returns ``(src, dst, socket)``: the source is migrated with
    ``migrate uri=unix:<socket>`` when the script is ready."""
    sock = workdir / "mig.sock"
    src = Qemu(args.qemu, workdir, "src", machine=args.machine,
               args=("-blockdev", null_node(size))).launch()
    dst = Qemu(args.qemu, workdir, "dst", machine=args.machine,
               args=("-blockdev", null_node(dst_size or size),
                     "-incoming", f"unix:{sock}")).launch()
    start_note(src)
    return src, dst, sock


def crash_evidence(vm: Qemu) -> str:
    """How *vm* ended, with the lines of its log that say why."""
    lines = crash_lines(vm.log())
    text = f"{vm.name} {describe_status(vm.status)}"
    if lines:
        text += ": " + " / ".join(dict.fromkeys(lines))
    return text


# ---------------------------------------------------------------------
# command line and the verdict


def _default_tool(qemu: str, tool: str) -> str:
    """*tool* next to the emulator (a build directory), else on PATH."""
    beside = Path(qemu).resolve().parent / tool
    return str(beside) if beside.exists() else tool


def parser(description: str, tools: Sequence[str] = ()) -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--qemu", default="qemu-system-x86_64", metavar="PATH",
                    help="the qemu-system-x86_64 to test "
                         "(default: the one on PATH)")
    if "qemu-img" in tools:
        ap.add_argument("--qemu-img", metavar="PATH",
                        help="qemu-img for creating images (default: the one "
                             "beside --qemu, else on PATH)")
    if "qemu-io" in tools:
        ap.add_argument("--qemu-io", metavar="PATH",
                        help="qemu-io (default: the one beside --qemu, "
                             "else on PATH)")
    ap.add_argument("--machine", default="none",
                    help="machine type (default: none), e.g. pc-i440fx-7.2")
    return ap


def _on_signal(signum: int, frame: Any) -> None:
    raise SystemExit(f"ERROR: interrupted by {signal.Signals(signum).name}")


def main(description: str, run: Callable[[argparse.Namespace, Path], None],
         tools: Sequence[str] = (),
         extra: Callable[[argparse.ArgumentParser], None] | None = None
         ) -> NoReturn:
    """Parse the common options, run *run(args, workdir)* in a private
    temporary directory, kill every QEMU it left, and end with the final
    line and its exit status.  *run* ends by raising a Verdict."""
    ap = parser(description, tools)
    if extra:
        extra(ap)
    args = ap.parse_args()
    qemu = shutil.which(args.qemu)
    if qemu is None:
        print(f"CANNOT RUN: no QEMU binary {args.qemu!r}")
        sys.exit(EXIT["CANNOT RUN"])
    args.qemu = qemu
    for tool in tools:
        attr = tool.replace("-", "_")
        path = getattr(args, attr) or _default_tool(qemu, tool)
        found = shutil.which(path)
        if found is None:
            print(f"CANNOT RUN: no {tool} (give --{tool} PATH)")
            sys.exit(EXIT["CANNOT RUN"])
        setattr(args, attr, found)
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    kind, text = "ERROR", "the reproducer ended without a verdict"
    try:
        with tempfile.TemporaryDirectory(prefix="qemu-repro-") as d:
            try:
                run(args, Path(d))
            finally:
                for vm in Qemu.launched:
                    vm.kill()
    except Verdict as v:
        kind, text = v.kind, v.text
    except SystemExit as e:
        text = str(e.code)
        if text.startswith("ERROR: "):
            text = text[len("ERROR: "):]
    except HarnessError as e:
        text = str(e)
    except Exception as e:            # noqa: BLE001 - the reproducer's bug
        import traceback
        traceback.print_exc()
        text = f"{type(e).__name__}: {e}"
    print(f"{kind}: {text}", flush=True)
    sys.exit(EXIT[kind])


def start_note(vm: Qemu) -> None:
    note(f"{vm.binary}: QEMU {vm.version()}")


def run_tool(argv: Sequence[str], timeout: float = 60) -> str:
    """Run qemu-img or qemu-io; its output, or HarnessError."""
    try:
        p = subprocess.run(list(argv), capture_output=True, text=True,
                           timeout=timeout)
    except subprocess.TimeoutExpired:
        raise HarnessError(
            f"{' '.join(argv)} did not end in {timeout} s") from None
    if p.returncode != 0:
        raise HarnessError(f"{' '.join(argv)}: {describe_status(p.returncode)}"
                           f": {(p.stderr or p.stdout).strip()[-400:]}")
    return p.stdout
