#!/usr/bin/env python3
"""Quitting the source while it sends bitmaps in postcopy: use after free.

In postcopy the migration thread sends bitmap chunks without the BQL,
walking the list of outgoing bitmaps (bulk_phase()).  When QEMU quits,
migration_shutdown() cancels the migration and then calls
dirty_bitmap_mig_cancel_outgoing(), which frees that list under the
BQL without waiting for the migration thread.  The thread, inside
bulk_phase_send_chunk(), then writes the chunk cursor into the freed
SaveBitmapState.

That write changes nothing a release build would show: the stream has
failed by then, so the thread leaves bulk_phase() at its next rate
check, and it reads no pointer from the freed state (that would need
the free to land between the rate check and the next chunk's header, a
window of nanoseconds).  MALLOC_PERTURB_, even with glibc's thread cache
disabled so that every free() is filled, leaves the exit status at 0.
So the reproducer needs a memory checker: an AddressSanitizer build is
run as it is; any other build runs under valgrind (memcheck), which
reports the invalid write deterministically.

To pin the migration thread inside bulk_phase(), postcopy is limited to
8 MiB/s and the destination is stopped (SIGSTOP) as soon as postcopy is
active: the thread's next 100 ms window of chunks overflows the socket
buffers, and it blocks in a write of a bitmap chunk when the source
gets ``quit``.

Here: 4 fully dirty bitmaps of 512-byte granularity on a 16 GiB null-co
node (16 MiB of bitmap data).
Reproduced when the checker reports an invalid access (or the source
does not exit with status 0).
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

from _common import (GiB, HarnessError, Qemu, cannot_run, crash_evidence,
                     main, note, not_reproduced, reproduced, start_note)

DISK = 16 * GiB
NB_BITMAPS = 4
GRANULARITY = 512
#: bytes/s in postcopy: a window of 100 ms sends far more than the
#: socket buffers hold, and the 16 MiB of bitmaps take 2 s
POSTCOPY_BW = 8 * 1024 * 1024


def is_asan(qemu: str) -> bool:
    """An AddressSanitizer build prints ASan's flags for help=1."""
    p = subprocess.run([qemu, "--version"], capture_output=True, text=True,
                       env=dict(os.environ, ASAN_OPTIONS="help=1"),
                       timeout=60)
    return "AddressSanitizer" in p.stderr + p.stdout


def node() -> str:
    return f"driver=null-co,node-name=drive0,size={DISK}"


def wait_stalled(src: Qemu, timeout: float) -> int:
    """Bytes the source has written once its writes block.  Read from
    /proc, not QMP: a monitor may stop answering while the migration
    thread is blocked, which is another matter."""
    assert src.proc is not None
    io = Path(f"/proc/{src.proc.pid}/io")
    deadline = time.monotonic() + timeout
    last = -1
    while time.monotonic() < deadline:
        time.sleep(0.5)
        m = re.search(r"wchar: (\d+)", io.read_text())
        if m is None:
            raise HarnessError(f"no wchar in {io}")
        wchar = int(m.group(1))
        if wchar == last:
            return wchar
        last = wchar
    raise HarnessError(f"the source kept writing for {timeout:.0f} s")


def run(args: argparse.Namespace, workdir: Path) -> None:
    asan = is_asan(args.qemu)
    wrapper: list = []
    if not asan:
        vg = shutil.which(args.valgrind)
        if vg is None:
            cannot_run("not an AddressSanitizer build, and no valgrind "
                       "(give --valgrind PATH)")
        wrapper = [vg, "--tool=memcheck", "--undef-value-errors=no",
                   "--num-callers=12"]
    sock = workdir / "mig.sock"
    src = Qemu(args.qemu, workdir, "src", machine=args.machine,
               args=("-blockdev", node()))
    src.argv = wrapper + src.argv
    src.launch()
    dst = Qemu(args.qemu, workdir, "dst", machine=args.machine,
               args=("-blockdev", node(),
                     "-incoming", f"unix:{sock}")).launch()
    start_note(src)
    note("checker: " + ("AddressSanitizer (built in)" if asan
                        else f"{wrapper[0]} memcheck"))
    for i in range(NB_BITMAPS):
        src.cmd("block-dirty-bitmap-add", node="drive0", name=f"bitmap{i}",
                granularity=GRANULARITY)
    for off in range(0, DISK, GiB):
        src.hmp(f'qemu-io drive0 "write {off} 1G"')
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
    assert dst.proc is not None
    os.kill(dst.proc.pid, signal.SIGSTOP)
    written = wait_stalled(src, 120)
    ended = src.wait_migration(("completed", "failed", "cancelled"), 0.1)
    if ended is not None:
        raise HarnessError(f"the migration ended ({ended}) before the "
                           f"destination stopped")
    note(f"postcopy active, destination stopped, source blocked after "
         f"writing {written} bytes: quit")
    try:
        src.cmd("quit", _timeout=60)
    except Exception as e:              # noqa: BLE001 - it may die first
        note(f"quit got no reply ({type(e).__name__})")
    status = src.wait_exit(120)
    os.kill(dst.proc.pid, signal.SIGCONT)
    if status is None:
        raise HarnessError("the source did not exit within 120 s of quit")
    findings = use_after_free(src.log())
    note(f"source {crash_evidence(src)}")
    if findings:
        reproduced(f"quit during bitmap postcopy: {findings[0]}")
    if status != 0:
        reproduced(f"quit during bitmap postcopy: {crash_evidence(src)}")
    not_reproduced("the source exited with status 0 and the checker "
                   "reported no use of freed memory")


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
    ap.add_argument("--valgrind", default="valgrind", metavar="PATH",
                    help="valgrind, for builds without AddressSanitizer")


if __name__ == "__main__":
    main(__doc__.splitlines()[0], run, extra=options)
