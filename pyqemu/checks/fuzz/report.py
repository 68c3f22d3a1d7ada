"""``pyqemu check fuzz``: run a campaign, print and save its summary."""

from __future__ import annotations

from ...paths import Layout
from ...util.results import save
from .campaign import LABELS, Summary, run


def markdown(s: Summary, seed: int) -> str:
    rows = [f"| {LABELS.get(k, 'finding: ' + k)} | {v} |"
            for k, v in sorted(s.counts.items())]
    title = (f"# Stream fuzzing: {s.inputs} inputs, seed {seed}, "
             f"{s.seconds:.0f} s")
    out = [title, "", "| outcome | inputs |", "|---|---|", *rows]
    if s.findings:
        out += ["", "## Findings", ""]
        out += [f"- `{p}`: {w}: {d.splitlines()[0] if d else ''}"
                for w, p, d in s.findings]
    return "\n".join(out)


def main(layout: Layout, inputs: int, seed: int) -> int:
    s = run(layout, inputs, seed)
    out = save(layout, "fuzz", markdown(s, seed), {
        "inputs": s.inputs, "seed": seed, "seconds": round(s.seconds),
        "counts": s.counts,
        "findings": [[w, str(p), d] for w, p, d in s.findings]})
    print(f"{s.inputs} inputs in {s.seconds:.0f} s "
          f"({s.inputs / max(s.seconds, 1e-9):.1f}/s), seed {seed}: "
          f"{s.counts_line()}")
    for what, path, detail in s.findings:
        print(f"FINDING {path.name}: {what}\n  {detail}")
    for f in (out / "results.md", out / "results.json",
              *[p for _, p, _ in s.findings],
              *[p.with_suffix(".txt") for _, p, _ in s.findings]):
        print(f"wrote {f}")
    if s.findings:
        print(f"result: {len(s.findings)} FINDINGS in {s.inputs} inputs "
              "(inputs kept next to their description; see tests/fuzz/"
              "README.md to keep one as a regression input)")
        return 1
    print(f"result: no findings in {s.inputs} inputs: every stream loaded "
          "or was rejected cleanly")
    return 0
