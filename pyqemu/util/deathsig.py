"""``python3 -I -S deathsig.py CMD...``: exec CMD with PR_SET_PDEATHSIG.

A wrapper for processes launched by code that takes a command prefix but
no preexec_fn (qemu.machine's QEMUMachine).  Standalone on purpose: it
runs with -I -S, without pyqemu on the path, to start fast.
"""

import ctypes
import os
import signal
import sys

parent = os.getppid()
if ctypes.CDLL(None).prctl(1, signal.SIGKILL, 0, 0, 0) != 0:  # PR_SET_PDEATHSIG
    sys.exit("deathsig: prctl(PR_SET_PDEATHSIG) failed")
if os.getppid() != parent:
    sys.exit(1)
os.execvp(sys.argv[1], sys.argv[1:])
