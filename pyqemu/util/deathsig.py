"""``python3 -I -S deathsig.py PARENT_PID CMD...``: exec CMD with
PR_SET_PDEATHSIG, if PARENT_PID is still its parent.

A wrapper for processes launched by code that takes a command prefix but
no preexec_fn (qemu.machine's QEMUMachine); see
pyqemu.util.proc.deathsig_wrapper.  Standalone on purpose: it runs with
-I -S, without pyqemu on the path, to start fast.
"""

import ctypes
import os
import signal
import sys

PR_SET_PDEATHSIG = 1

if ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
    sys.exit("deathsig: prctl(PR_SET_PDEATHSIG) failed")
if os.getppid() != int(sys.argv[1]):    # the parent died before prctl
    sys.exit(1)
os.execvp(sys.argv[2], sys.argv[2:])
