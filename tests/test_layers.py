"""Imports point down the data flow only: tree -> build -> shim, machine
-> bench -> report -> checks -> cli, with util/ and the few modules at
the package's root (errors, log, paths) beneath them all.  A module may
import its own package and any package below its own, never one above
or beside it; the arrows are read from the code (ast), so the picture
cannot drift from it."""

from __future__ import annotations

import ast
from pathlib import Path

from pyqemu.paths import PACKAGE

#: stage -> rank; a stage imports only stages of a lower rank
RANKS = {
    "errors": 0, "log": 0,
    "paths": 1,
    "util": 2,
    "tree": 3,
    "build": 4,
    "shim": 5, "machine": 5,
    "bench": 6,
    "report": 7,
    "checks": 8,
    "cli": 9,
    "__main__": 10,
}


def _stage(module: str) -> str:
    """'pyqemu.machine.vm' -> 'machine'; 'pyqemu' -> ''."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def imports(path: Path) -> list[tuple[str, int]]:
    """(pyqemu module imported, line) of one source file."""
    module = ".".join(path.relative_to(PACKAGE.parent).with_suffix("")
                      .parts).removesuffix(".__init__")
    package = module if path.name == "__init__.py" else \
        module.rpartition(".")[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(a.name, node.lineno) for a in node.names
                    if a.name.startswith("pyqemu")]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                name = ".".join(base + ([node.module] if node.module
                                        else []))
            else:
                name = node.module or ""
            if name.startswith("pyqemu"):
                if name == "pyqemu" or not node.module and node.level:
                    # "from . import x": x is the module imported
                    out += [(f"{name}.{a.name}", node.lineno)
                            for a in node.names]
                else:
                    out.append((name, node.lineno))
    return out


def test_every_stage_has_a_rank() -> None:
    stages = {p.stem if p.is_file() else p.name
              for p in PACKAGE.iterdir()
              if (p.suffix == ".py" and p.stem != "__init__") or
              (p / "__init__.py").exists()}
    assert stages == set(RANKS), stages ^ set(RANKS)


def test_imports_point_down_only() -> None:
    upward = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE.parent)
        here = _stage(".".join(rel.with_suffix("").parts))
        if here == "__init__":
            continue
        for name, line in imports(path):
            there = _stage(name)
            if there in ("", here):
                continue
            if RANKS[there] >= RANKS[here]:
                upward.append(f"{rel}:{line}: {here} imports {name}")
    assert not upward, "\n".join(upward)
