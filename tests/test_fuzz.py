"""The incoming dirty-bitmap stream against malformed input, on the
patched tree built with ASan and UBSan: every input must load, or fail
with an error message -- never crash, trip a sanitizer or hang.

CI runs a small budget of fresh mutations, from a new seed each run
(printed, and given back by PYQEMU_FUZZ_SEED to repeat a run), plus the
saved regression inputs (tests/fuzz/); ``./run check fuzz`` runs the full
campaign.
"""

from __future__ import annotations

import os
import random

import pytest

from pyqemu.checks.fuzz import campaign
from pyqemu.paths import SANITIZED

#: built in the background by ./run test: wait for it
pytestmark = pytest.mark.usefixtures("sanitized")

REGRESSIONS = sorted(campaign.REGRESSIONS.glob("*.bin"))
#: Set it to a seed a failed run printed, to run the same inputs again.
SEED_VARIABLE = "PYQEMU_FUZZ_SEED"


def test_fuzz_small_budget(layout):
    seed = int(os.environ.get(SEED_VARIABLE) or random.randrange(2**31))
    again = f"seed {seed}: {SEED_VARIABLE}={seed} runs the same inputs"
    print(again)
    s = campaign.run(layout, inputs=200, seed=seed)
    assert s.inputs == 200, again
    assert not s.findings, again + "\n" + "\n".join(
        f"{w}: {p} {d}" for w, p, d in s.findings)
    # the mutations reach both outcomes: not all rejected up front
    assert s.counts.get("loaded", 0) > 0 and s.counts.get("error", 0) > 0, \
        f"{again}: {s.counts}"


@pytest.mark.parametrize("stream", REGRESSIONS, ids=lambda p: p.stem)
def test_regression_input_is_handled(layout, stream):
    qemu = layout.binary("qemu-system-x86_64", SANITIZED)
    outcome = campaign.replay(layout, qemu, stream)
    expected = stream.with_suffix(".expect").read_text().split()
    assert outcome.verdict in expected, outcome
