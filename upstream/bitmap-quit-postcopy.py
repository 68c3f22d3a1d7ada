#!/usr/bin/env python3
"""Quitting the source while it sends bitmaps in postcopy: use after free.

In postcopy the migration thread sends bitmap chunks without the BQL,
walking the list of outgoing bitmaps (bulk_phase()).  When QEMU quits,
migration_shutdown() cancels the migration and then calls
dirty_bitmap_mig_cancel_outgoing(), which frees that list under the
BQL without waiting for the migration thread.  The thread, inside
bulk_phase_send_chunk(), then writes the chunk cursor into the freed
SaveBitmapState.

That changes nothing a release build would show: the stream has
failed by then, so the thread leaves bulk_phase() at its next rate
check, and from the freed state it reads and writes only the chunk
cursor and reads the node's size, no pointer (reading one would need
the free to land between the rate check and the next chunk's header, a
window of nanoseconds).  MALLOC_PERTURB_, even with glibc's thread cache
disabled so that every free() fills the block, left the exit status at
0 in all of 30 quits on 10.2.2, pinned as below.  So the reproducer needs a memory
checker: an AddressSanitizer build runs as it is, any other build runs
under valgrind (memcheck).

To pin the migration thread inside bulk_phase(), the destination is
stopped (SIGSTOP) as soon as postcopy is active, and the source gets
``quit`` once one of its threads sits blocked in a write (read from
/proc) and nothing more goes out.  That is deterministic; what is not is
who runs first after the quit has shut the socket down and woken the
thread: if the thread leaves bulk_phase() before the main thread frees
the list, nothing is used after the free.  Under valgrind on 10.2.2 the
main thread won in 24 of 24 first rounds here (with fully dirty bitmaps,
whose chunks the thread buffers, in 8 of 10), and up to ``--rounds`` (5)
quits are tried.

Here: 4 bitmaps of 64 KiB granularity on a 16 TiB null-co node (32 MiB
each; their chunks are all zeroes, a short header each, and the thread
flushes every one, so a stopped destination blocks it at once).
Reproduced when the checker reports a use of freed memory (or the
source does not exit with status 0).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

from _common import (
    HarnessError,
    KiB,
    Qemu,
    TiB,
    cannot_run,
    crash_evidence,
    main,
    not_reproduced,
    note,
    reproduced,
    start_note,
)

DISK = 16 * TiB
NB_BITMAPS = 4
GRANULARITY = 64 * KiB
#: quits tried before NOT REPRODUCED (see the docstring)
ROUNDS = 5
#: bytes/s in postcopy: keeps the thread from finishing before the
#: destination is stopped; a 100 ms window still holds far more than the
#: socket buffers
POSTCOPY_BW = 8 * 1024 * 1024


def is_asan(qemu: str) -> bool:
    """An AddressSanitizer build prints ASan's flags for help=1."""
    p = subprocess.run([qemu, "--version"], capture_output=True, text=True,
                       env=dict(os.environ, ASAN_OPTIONS="help=1"),
                       timeout=60)
    return "AddressSanitizer" in p.stderr + p.stdout


def node() -> str:
    return f"driver=null-co,node-name=drive0,size={DISK}"


#: write(2), writev(2), sendmsg(2) on x86_64: what a thread blocked on
#: a full socket sits in (/proc/<pid>/task/<tid>/syscall)
WRITES = {"1", "20", "46"}


def wait_blocked(src: Qemu, timeout: float) -> int:
    """Bytes the source has written once a thread of it sits blocked in a
    write and nothing more goes out.  Read from /proc, not QMP: a monitor
    may stop answering while the migration thread is blocked, which is
    another matter (the series' populate_info takes a lock it holds)."""
    assert src.proc is not None
    io = Path(f"/proc/{src.proc.pid}/io")
    deadline = time.monotonic() + timeout
    last = -1
    while time.monotonic() < deadline:
        time.sleep(0.3)
        m = re.search(r"wchar: (\d+)", io.read_text())
        if m is None:
            raise HarnessError(f"no wchar in {io}")
        wchar = int(m.group(1))
        writing = [t for t in threads(src.proc.pid)
                   if t[1] == "S" and t[2] in WRITES]
        if wchar == last and writing:
            return wchar
        last = wchar
    raise HarnessError(f"no thread of the source blocked in a write within "
                       f"{timeout:.0f} s: {threads(src.proc.pid)}")


def threads(pid: int) -> list:
    """(name, state, syscall) of every thread of *pid*, from /proc."""
    out = []
    for task in sorted(Path(f"/proc/{pid}/task").iterdir()):
        try:
            comm = (task / "comm").read_text().strip()
            state = (task / "stat").read_text().rsplit(")", 1)[1].split()[0]
            call = (task / "syscall").read_text().split()[0]
        except OSError:
            continue
        out.append((comm, state, call))
    return out


def checker(args: argparse.Namespace) -> list[str]:
    """The command line prefix that runs QEMU under a memory checker:
    nothing for an ASan build, valgrind's memcheck for any other."""
    if is_asan(args.qemu):
        note("checker: AddressSanitizer (built in)")
        return []
    vg = shutil.which(args.valgrind)
    if vg is None:
        cannot_run("not an AddressSanitizer build, and no valgrind "
                   "(give --valgrind PATH)")
    note(f"checker: {vg} memcheck")
    return [vg, "--tool=memcheck", "--undef-value-errors=no",
            "--num-callers=12"]


def one_round(args: argparse.Namespace, workdir: Path, n: int,
              wrapper: list[str]) -> None:
    """Quit once while the migration thread is blocked in bulk_phase();
    raises the verdict if the checker saw the use after free."""
    sock = workdir / f"mig{n}.sock"
    src = Qemu(args.qemu, workdir, f"src{n}", machine=args.machine,
               args=("-blockdev", node()))
    src.argv = wrapper + src.argv
    src.launch()
    dst = Qemu(args.qemu, workdir, f"dst{n}", machine=args.machine,
               args=("-blockdev", node(),
                     "-incoming", f"unix:{sock}")).launch()
    assert src.proc is not None and dst.proc is not None
    try:
        if n == 1:
            start_note(src)
        for i in range(NB_BITMAPS):
            src.cmd("block-dirty-bitmap-add", node="drive0",
                    name=f"bitmap{i}", granularity=GRANULARITY)
        for vm in (src, dst):
            vm.set_caps(events=True, **{"dirty-bitmaps": True})
        # precopy must not converge before postcopy starts
        src.cmd("migrate-set-parameters", **{
            "downtime-limit": 1, "max-postcopy-bandwidth": POSTCOPY_BW})
        src.cmd("migrate", uri=f"unix:{sock}")
        src.cmd("migrate-start-postcopy")
        if src.wait_migration(("postcopy-active", "completed", "failed"),
                              120) != "postcopy-active":
            raise HarnessError(f"postcopy did not start: "
                               f"{src.cmd('query-migrate')['status']}")
        os.kill(dst.proc.pid, signal.SIGSTOP)
        written = wait_blocked(src, 120)
        ended = src.wait_migration(("completed", "failed", "cancelled"), 0.1)
        if ended is not None:
            raise HarnessError(f"the migration ended ({ended}) before the "
                               f"destination stopped")
        note(f"round {n}: postcopy active, destination stopped, source "
             f"blocked after writing {written} bytes; threads (name, state,"
             f" syscall) {threads(src.proc.pid)}: quit")
        try:
            src.cmd("quit", _timeout=60)
        except Exception as e:          # noqa: BLE001 - it may die first
            note(f"quit got no reply ({type(e).__name__})")
        status = src.wait_exit(120)
        if status is None:
            raise HarnessError("the source did not exit within 120 s of quit")
        findings = use_after_free(src.log())
        note(f"round {n}: source {crash_evidence(src)}")
        if findings:
            reproduced(f"quit during bitmap postcopy, round {n}: "
                       f"{findings[0]}")
        if status != 0:
            reproduced(f"quit during bitmap postcopy, round {n}: "
                       f"{crash_evidence(src)}")
    finally:
        if dst.alive():
            os.kill(dst.proc.pid, signal.SIGCONT)
        src.kill()
        dst.kill()


def run(args: argparse.Namespace, workdir: Path) -> None:
    wrapper = checker(args)
    for n in range(1, args.rounds + 1):
        one_round(args, workdir, n, wrapper)
    not_reproduced(f"the source exited with status 0 and the checker "
                   f"reported no use of freed memory, in {args.rounds} "
                   f"rounds")


def use_after_free(log: str) -> list:
    """The checker's reports of freed memory used, one line each: for
    valgrind the error blocks that name a free'd block (QEMU's coroutine
    stacks make it report other, unrelated errors), for ASan its
    heap-use-after-free reports."""
    found = []
    for block in re.split(r"==\d+== \n", log):
        lines = [re.sub(r"^==\d+==\s*", "", ln) for ln in block.splitlines()
                 if re.match(r"==\d+==", ln)]
        if "ERROR: AddressSanitizer: heap-use-after-free" in block:
            head = next(ln for ln in lines if "AddressSanitizer" in ln)
            frames = [ln for ln in lines if re.match(r"#\d+ 0x", ln)]
        elif any("free'd" in ln for ln in lines):
            head = lines[0]
            frames = [ln for ln in lines if re.match(r"(?:at|by) 0x", ln)]
        else:
            continue
        where = [re.sub(r"^(?:at|by|#\d+) 0x[0-9a-fA-F]+:?\s*(?:in )?", "", f)
                 .split(" (")[0] for f in frames]
        addr = next((ln for ln in lines if "free'd" in ln or
                     "freed by thread" in ln), "")
        found.append(f"{head}, in {' <- '.join(where[:3])}; {addr}"
                     + (f", freed in {' <- '.join(_freed_in(lines))}"
                        if _freed_in(lines) else ""))
    return found


def _freed_in(lines: list) -> list:
    """The first frames of the stack that freed the memory, without the
    allocator's own."""
    out, on = [], False
    for ln in lines:
        if "free'd" in ln or "freed by thread" in ln:
            on = True
            continue
        if on:
            m = re.match(r"(?:at|by|#\d+) 0x[0-9a-fA-F]+:?\s*(?:in )?(\S+)", ln)
            if not m:
                break
            if m.group(1) not in ("free", "g_free", "__interceptor_free"):
                out.append(m.group(1))
            if len(out) == 3:
                break
    return out


def options(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--rounds", type=int, default=ROUNDS,
                    help=f"quit up to this many times (default {ROUNDS})")
    ap.add_argument("--valgrind", default="valgrind", metavar="PATH",
                    help="valgrind, for builds without AddressSanitizer")


if __name__ == "__main__":
    main(__doc__.splitlines()[0], run, extra=options)
