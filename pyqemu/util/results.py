"""Writing a measurement's results: markdown and JSON side by side in
:meth:`~pyqemu.paths.Layout.results` (``<cache>/bench/<name>/``).

Benchmarks and checks both report this way, so it sits below both;
whoever reads a result back (the cover letter) asks the layout where."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..paths import Layout


def save(layout: Layout, name: str, markdown: str, data: Any) -> Path:
    """Write ``results.md`` and ``results.json`` of *name*; return their
    directory (plots go beside them)."""
    d = layout.results(name)
    d.mkdir(parents=True, exist_ok=True)
    (d / "results.md").write_text(markdown + "\n")
    (d / "results.json").write_text(json.dumps(data, indent=1) + "\n")
    return d
