"""``pyqemu check fuzz``: run a campaign, print and save its summary."""

from __future__ import annotations

import json

from ...paths import Layout
from .campaign import run


def main(layout: Layout, inputs: int, seed: int) -> int:
    s = run(layout, inputs, seed)
    (layout.root / "fuzz-summary.json").write_text(json.dumps({
        "inputs": s.inputs, "seed": seed, "seconds": round(s.seconds),
        "counts": s.counts,
        "findings": [[w, str(p), d] for w, p, d in s.findings]}, indent=1))
    print(f"{s.inputs} inputs in {s.seconds:.0f} s "
          f"({s.inputs / max(s.seconds, 1e-9):.1f}/s): " +
          ", ".join(f"{k} {v}" for k, v in sorted(s.counts.items())))
    for what, path, detail in s.findings:
        print(f"FINDING {path.name}: {what}\n  {detail}")
    return 1 if s.findings else 0
