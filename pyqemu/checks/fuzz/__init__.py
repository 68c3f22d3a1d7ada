"""Fuzzing the incoming dirty-bitmap migration stream.

Seeds are real migration streams, captured with ``migrate`` to a file from
the patched QEMU (live and not, one and two nodes).  The bitmap sections of
a seed are parsed into records (START, BITS, COMPLETE, EOS, with their
names and fields), and each input mutates them: fields replaced with
boundary values, flags changed, records dropped, repeated, swapped or cut,
payload bits flipped.  Other sections are left alone, so the input reaches
the bitmap loader instead of failing in the stream header.

Every input is loaded by a destination QEMU built with ASan and UBSan
(``pyqemu build --asan``).  Acceptable outcomes: the migration loads, or
fails with an error message.  Anything else -- a signal, a sanitizer
report, no message, no end within the timeout -- is a finding; its input
is saved so that it can become a regression test (tests/fuzz/).

The pieces, in the order an input flows through them: :mod:`stream`
(the codec of the bitmap sections), :mod:`seeds` (real streams captured
from the patched QEMU), :mod:`mutate`, :mod:`load` (one input on a
sanitized destination, through :class:`pyqemu.machine.vm.VM`),
:mod:`campaign` (many inputs, findings saved) and :mod:`report` (what
``pyqemu check fuzz`` prints).
"""
