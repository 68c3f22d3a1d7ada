"""Where benchmark results go: markdown and JSON under ``<cache>/bench/``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..paths import Layout


def out_dir(layout: Layout, name: str) -> Path:
    d = layout.root / "bench" / name
    d.mkdir(parents=True, exist_ok=True)
    return d


def save(layout: Layout, name: str, markdown: str, data: Any) -> Path:
    d = out_dir(layout, name)
    (d / "results.md").write_text(markdown + "\n")
    (d / "results.json").write_text(json.dumps(data, indent=1) + "\n")
    return d
