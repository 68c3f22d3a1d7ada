"""The project's own errors, one family so that ``cli.main`` can turn any
of them into a one-line message.

Modules raise a subclass that names their stage (build, tree, machine...);
callers that only want "did pyqemu fail" catch :class:`PyqemuError`.
"""

from __future__ import annotations

from typing import Sequence


class PyqemuError(RuntimeError):
    """Something pyqemu could not do; the message says what and why."""


class CommandError(PyqemuError):
    """An external command failed.

    Carries the command and the tail of its stderr (or stdout, for tools
    that report there), because a bare "exit status 1" from git, apt, gcc
    or tc tells a user nothing.
    """

    def __init__(self, cmd: Sequence[str], returncode: int, output: str,
                 what: str | None = None) -> None:
        self.cmd = list(cmd)
        self.returncode = returncode
        self.output = output
        tail = "\n".join(output.strip().splitlines()[-8:])
        name = what or " ".join(self.cmd[:4])
        super().__init__(f"{name} failed (exit {returncode})"
                         + (f": {tail}" if tail else ""))
