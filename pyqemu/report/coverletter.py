"""``pyqemu series cover-letter``: patches/qemu/0000-cover-letter.patch.

The letter is ``git format-patch --cover-letter`` output from the patched
tree (so its shortlog and diffstat are git's), with the subject and blurb
filled in: the problem, the design, compatibility, and the benchmark
table of ``pyqemu bench migrate`` -- run by this command, stock and
patched in the same run, or with ``--reuse`` the last saved results.
Numbers in the letter always come from a measurement, never from a hand.
"""

from __future__ import annotations

import json
import tempfile
import textwrap
from pathlib import Path

from ..bench import compare, safety
from ..bench import hbitmap as bench_hbitmap
from ..bench import migrate as bench_migrate
from ..bench.writeload import report as writeload_report
from ..bench.writeload.results import load_results
from ..errors import PyqemuError
from ..paths import Layout
from ..tree import series
from ..tree.git import git
from ..tree.stock import BASE_TAG
from ..util.table import markdown_table
from ..util.units import MiB, fmt_bytes

TITLE = "Live migration of dirty bitmaps"
#: The series' version, in every subject ("[PATCH v2 03/20]")
SUBJECT_PREFIX = "PATCH v3"


#: The benchmarks the letter quotes, and the command that saves each one's
#: results.
BENCHES = {"migrate": "./run bench migrate", "hbitmap": "./run bench hbitmap"}


def saved(layout: Layout, name: str) -> Path:
    """Where benchmark *name* keeps its results.json."""
    return layout.results(name) / "results.json"


def require_saved(layout: Layout) -> None:
    """``--reuse`` means no measuring: without saved results, fail and say
    what to run, rather than start the 20-minute benchmark unasked."""
    missing = [cmd for name, cmd in BENCHES.items()
               if not saved(layout, name).exists()]
    if missing:
        raise PyqemuError(
            f"--reuse: no saved benchmark results in {layout.root / 'bench'}"
            f": run {' and '.join(repr(m) for m in missing)} first, or "
            "leave out --reuse to measure now")


def _results(layout: Layout, reuse: bool) -> dict:
    if not reuse:
        bench_migrate.main(layout, quick=False)
    return dict(json.loads(saved(layout, "migrate").read_text()))


def _meta_overhead(layout: Layout, reuse: bool) -> float:
    """Largest meta-bitmap overhead on hbitmap_set (bench hbitmap)."""
    if not reuse:
        bench_hbitmap.main(layout, quick=True)
    data = json.loads(saved(layout, "hbitmap").read_text())
    return max(m["meta_overhead"] for m in data["meta"])


def _fuzzing(layout: Layout) -> str:
    """What the last full fuzz campaign (./run check fuzz) did, if any."""
    try:
        f = json.loads(saved(layout, "fuzz").read_text())
    except (OSError, ValueError):
        return "a stream fuzzer (not run in full for this letter)"
    return (f"{f['inputs']:,} mutated incoming streams on an ASan/UBSan "
            f"build ({len(f['findings'])} findings)")


def _para(text: str) -> str:
    """One paragraph, refilled to 72 columns (bullets keep their indent)."""
    if text.lstrip().startswith("- "):
        return textwrap.fill(" ".join(text.split()[1:]), 72,
                             initial_indent="- ", subsequent_indent="  ",
                             break_on_hyphens=False, break_long_words=False)
    return textwrap.fill(" ".join(text.split()), 72, break_on_hyphens=False,
                         break_long_words=False)


def measured(results: dict) -> dict[str, str]:
    """The numbers the letter quotes, from ``bench migrate``'s results."""
    sums = compare.load_summaries(results["summaries"])
    params = results["params"]
    by = {(x.mode, x.size, x.density): x for x in sums}
    cases = sorted({(x.size, x.density) for x in sums if x.mode == "live"})
    precopy = [by[("stock precopy", *c)] for c in cases
               if ("stock precopy", *c) in by]
    early = [by[("stock postcopy, early", *c)] for c in cases
             if ("stock postcopy, early", *c) in by]
    live = [by[("live", *c)] for c in cases]
    deltas = []
    for x in live:
        floor = by.get(("no bitmaps", x.size, x.density))
        if x.visible and floor and floor.visible:
            deltas.append(x.visible.median - floor.visible.median)
    big = max(cases, key=lambda c: (c[0], compare.fill.DENSITIES.index(c[1])))
    big_live = by[("live", *big)]
    big_floor = by[("no bitmaps", *big)]
    big_early = by.get(("stock postcopy, early", *big))

    def worst(xs: list[compare.Summary], f: str) -> float:
        vals = [getattr(x, f).high for x in xs if getattr(x, f)]
        return max(vals) if vals else 0.0

    return {
        # results from before the bench recorded it were all on TCG
        "accel": results.get("accel", {}).get("label", "TCG"),
        "bandwidth": f"{params['max-bandwidth'] // MiB} MiB/s",
        "limit": f"{params['downtime-limit']} ms",
        "runs": str(results["runs"]),
        "precopy_ok": f"{sum(1 for x in precopy if x.converged == x.runs)}",
        "precopy_all": f"{len(precopy)}",
        "early_worst_downtime": f"{worst(early, 'visible'):.0f} ms",
        "early_risk_ms": f"{worst(early, 'risk'):.0f} ms",
        "early_at_risk": fmt_bytes(max((x.at_risk or 0) for x in early)
                                   if early else 0),
        "live_delta": ("no higher than" if deltas and max(deltas) <= 0
                       else f"at most {max(deltas):.1f} ms above")
        if deltas else "?",
        "live_converged": f"{sum(x.converged for x in live)}/"
                          f"{sum(x.runs for x in live)}",
        "live_at_risk": fmt_bytes(max((x.at_risk or 0) for x in live)),
        "big": f"{big[0] >> 40} TiB x {compare.BITMAPS} {big[1]}",
        "big_live": f"{big_live.visible.median:.1f} ms"
                    if big_live.visible else "-",
        "big_floor": f"{big_floor.visible.median:.1f} ms"
                     if big_floor.visible else "-",
        "big_live_usable": f"{big_live.usable.median:.0f} ms"
                           if big_live.usable else "-",
        "big_early_usable": f"{big_early.usable.median:.0f} ms"
                            if big_early and big_early.usable else "-",
        "wire": f"{max(x.wire_ratio or 0 for x in live):.3f}",
        **_writeload(results.get("writeload", [])),
        "safety_setup": (f"{fmt_bytes(safety.Setup().serialized())} of "
                         f"bitmaps at {safety.Setup().bandwidth // MiB} "
                         "MiB/s between two network namespaces"),
    }


def safety_table(rows: list[dict]) -> str:
    """Per mode and fault (first run): complete bitmaps on each side and
    where the guest runs, from ``bench migrate``'s safety part."""
    out = []
    for r in rows:
        if r["run"] or r["error"]:
            continue

        def complete(side: dict) -> str:
            if side["migration"] == "-":
                return "(killed)"
            states = list(side["bitmaps"].values())
            out = f"{states.count('equal')}/{len(states)}"
            busy = sum(v.startswith("busy") for v in states)
            return out + (f" ({busy} stuck busy)" if busy else "")

        where = [n for n, side in (("source", r["source"]),
                                   ("destination", r["destination"]))
                 if side["state"] == "running"]
        out.append((r["mode"], r["fault"], fmt_bytes(r["unsent_at_fault"]),
                    complete(r["destination"]), complete(r["source"]),
                    " and ".join(where) or "nowhere"))
    return markdown_table(
        ("mode", "fault after the switchover", "bitmap data unsent",
         "complete bitmaps: destination", "source", "guest runs on"), out)


def _writeload(rows: list[dict]) -> dict[str, str]:
    v = writeload_report.target_values(load_results(rows))

    def spread(key: str, fmt: str) -> str:
        x = v[key]
        return "-" if x is None else (
            f"{x.median:{fmt}} ({x.low:{fmt}}-{x.high:{fmt}}, n={x.n})")

    top = v["ratio_max"]
    if top is None:
        max_note = "not measured"
    elif top.low <= 1.0 <= top.high:
        max_note = ("its spread over patterns is larger than the meta "
                    "bitmap's cost")
    elif top.low > 1.0:
        max_note = "no cost is measurable there"
    else:
        max_note = ("that is what live bitmaps cost a guest writing as "
                    "fast as it can, measured in one QEMU")
    return {"wl_live": spread("live_downtime", ".0f"),
            "wl_plain": spread("plain_downtime", ".0f"),
            "wl_paced": spread("ratio_paced", ".2f"),
            "wl_max": spread("ratio_max", ".2f"),
            "wl_max_note": max_note}


def fixes_only(results: dict) -> str:
    """When is the feature needed: the fixes alone, with
    avail-switchover-bandwidth set as a careful operator would, against
    live mode, from the same bench run."""
    sums = compare.load_summaries(results["summaries"])
    mode = next((x.mode for x in sums if x.mode.startswith("fixes")), None)
    if mode is None:
        return """(The fixes-only comparison was not part of the benchmark
        run this letter was made from.)"""
    by = {(x.mode, x.size, x.density): x for x in sums}
    limit = results["params"]["downtime-limit"]
    ok, within, not_ok = [], [], []
    for x in sorted((x for x in sums if x.mode == mode),
                    key=lambda x: (x.size, x.density)):
        case = f"{x.size >> 40} TiB {x.density}"
        live = by.get(("live", x.size, x.density))
        if x.converged == x.runs and x.visible:
            ok.append(f"{case}: {x.visible.median:.0f} ms"
                      + (f" (live {live.visible.median:.0f} ms)"
                         if live and live.visible else ""))
            if x.visible.high <= limit:
                within.append(case)
        else:
            not_ok.append(f"{case} ({x.converged}/{x.runs})")
    text = (f"""When is the feature needed?  The fixes alone (patches
        1-{series.FIXES}) cure the bits-as-bytes estimate; with
        avail-switchover-bandwidth set to the link's speed, as a careful
        operator would ({mode}),
        precopy converged with this median downtime: {'; '.join(ok) or
        'in no case'}.""")
    if within:
        # the guest's own downtime, every run: the limit QEMU was given
        text += (f"""  Every run of {', '.join(within)} stayed within the
        {limit} ms limit: there the fixes alone are enough.""")
    if not_ok:
        text += (f"""  It did not converge in every run, or not at all, for
        {', '.join(not_ok)}: there only live mode keeps the downtime within
        the limit.""")
    return text


def interface(results: dict, overhead: float, m: dict[str, str]) -> str:
    """Why a capability of its own, required to be set with dirty-bitmaps
    (the postcopy-preempt precedent), rather than how dirty-bitmaps
    simply behaves: with the numbers."""
    return f"""Why a capability, and why an error without dirty-bitmaps:
        making live mode simply how dirty-bitmaps behaves would give it to
        every manager without asking, but would leave no way to tell
        whether a source sends its bitmaps live, and a manager needs that
        before it turns dirty-bitmaps on where it does not today.  libvirt
        9.0 leaves dirty-bitmaps off with shared storage, so that qcow2
        stores the persistent bitmaps at the source's inactivation and
        the destination loads them at activation, both inside the
        downtime; turning dirty-bitmaps on there pays off only when the
        source sends them live, and would otherwise put all of them into
        the stream's downtime instead (or, with stock's estimate, never
        converge).  A capability is what query-migrate-capabilities
        reports, so a manager can probe it; the companion libvirt series
        does, and enables it with dirty-bitmaps.  Its cost when enabled is
        small but not nil: hbitmap_set() does up to {overhead * 100:.1f} %
        more instructions with a meta bitmap attached, the guest's write
        rate during a live migration was {m['wl_max']} of its rate during
        one without bitmaps, and chunks that change after they were sent
        cost their bytes again.  Setting it without dirty-bitmaps is an
        error, as postcopy-preempt is without postcopy-ram: a manager
        that asked for live bitmaps but not for bitmaps would otherwise be
        mistaken about what happens to them."""


def blurb(results: dict, overhead: float, fuzzing: str) -> str:
    m = measured(results)
    table = compare.letter_table(
        compare.load_summaries(results["summaries"]))
    paragraphs = [
        """Where this series can go: it is a downstream patch set, of the
        kind distributions carry, not a submission to qemu-devel.  QEMU's
        docs/devel/code-provenance.rst declines every contribution that
        includes or derives from generated content, and this series is
        such content.  What upstream can take without taking this code is
        evidence: the project that carries the series keeps, for every
        upstream defect fixed here, a reproducer that runs against any
        QEMU binary and prints whether the defect shows and how (exit
        status, assertion), with a short report per defect
        (upstream/README.md).""",
        """QEMU migrates dirty bitmaps only once the source is stopped: in
        the stop-and-copy phase of precopy, or in postcopy.  Their data
        adds to the downtime, and since the pending estimate counts bitmap
        bits as bytes and no bitmap data is sent while the guest runs,
        precopy with large bitmaps may never converge.  The answer on the
        list for gitlab #1203 was to switch to postcopy and accept that a
        failure after the switchover loses the bitmaps.  Deployments that
        never enter postcopy stay stuck, and those that do put every bitmap
        at risk for as long as postcopy lasts.""",
        f"""Measured below (pyqemu bench migrate: a -machine pc
        {m['accel']} guest, 8 bitmaps at 64 KiB granularity on 1-16 TiB
        disks, sparse, half
        or fully dirty, {m['bandwidth']} for precopy and postcopy alike,
        downtime-limit {m['limit']}, {m['runs']} interleaved runs, the
        downtime as the guest sees it: the destination's RESUME minus the
        source's STOP): stock precopy completes {m['precopy_ok']} of
        {m['precopy_all']} cases.  Early postcopy does keep the downtime
        low while its request wins the race with completion; its worst run
        stopped the guest for {m['early_worst_downtime']}.  And after each
        switchover the guest ran on the destination for up to
        {m['early_risk_ms']} with up to {m['early_at_risk']} of bitmap data
        still on its way: data that a broken connection or a crashed
        source loses.""",
        f"""That worst case is real.  Fault injected as soon as the
        destination runs (bench migrate: {m['safety_setup']}; stock postcopy
        requested at once): stock loses every bitmap, and when the source
        dies or the link is cut, the destination still reports its
        migration completed.  Live mode has nothing left to send, and
        loses nothing:""",
        "SAFETY_TABLE",
        f"""With the series, live mode converges in
        {m['live_converged']} runs; its median downtime is
        {m['live_delta']} that of the same VM without bitmaps in every case
        ({m['big_live']} against {m['big_floor']} for {m['big']}); every
        bitmap is complete on the destination before the guest resumes
        there ({m['big_live_usable']} after the start for {m['big']},
        against {m['big_early_usable']} with early postcopy); bitmap bytes
        sent after the switchover: {m['live_at_risk']}; wire bytes are at
        most {m['wire']} x the serialized size.  Downtime (ms) / bitmaps
        usable on the destination (ms from the start) / bitmap bytes sent
        after the switchover, medians:""",
        "BENCH_TABLE",
        f"""Under a Linux guest writing all through the migration
        (virtio-blk on an iothread, 4 KiB and 64 KiB bitmaps of a 1 TiB
        disk, random, sequential, hot-set and one-write-per-chunk patterns
        at up to the guest's maximum rate, 64 MiB/s), the chunks changed
        after they were sent are sent again, close to what a model of the
        writes predicts.  Live mode's downtime, median (range, count), was
        {m['wl_live']} ms against {m['wl_plain']} ms for the same
        migrations without bitmaps.  The guest's write rate during a live
        migration divided by its rate during one without bitmaps was
        {m['wl_paced']} at paced rates and {m['wl_max']} as fast as it
        goes (there measured in one QEMU, migrations of each kind held
        active in turn, since the rate at full speed differs by up to 20%
        between QEMU processes); {m['wl_max_note']}.""",
        "FIXES_ONLY",
        """The series applies to 10.2.2.  It starts with a test fix:
        nbd_server_stop() in the iotests returned before qemu-nbd had
        exited and released the image's locks, and upstream's
        qemu-img-bitmaps failed on a loaded host for that reason.  Then
        come stand-alone fixes, each with its own regression test that
        fails on the patch's parent (the use after free shows only under
        a sanitizer or valgrind), most with Cc: qemu-stable:""",
        """- hbitmap_deserialize_ones() set bits past the end of a bitmap,
        which showed up once the bitmap grew;""",
        "- the pending estimate counted bitmap bits as bytes;",
        """- persistent bitmaps were dropped from the image after a
        cancelled or failed migration: whether the destination took them
        over is now decided by the node's state at cleanup;""",
        """- a destination node smaller than the source's (a hot-plugged
        disk, gitlab #2650), a larger one whose source size was not
        serialization-aligned, or a corrupt stream aborted the
        destination on hbitmap assertions;""",
        """- from 256 MiB granularity on, a chunk's be32 sector count
        wrapped to 0 and the source spun forever with the VM stopped;""",
        """- block_resize of a node whose bitmap migrates aborted QEMU;""",
        """- a guest write that grew a file node (qcow2 appending a
        cluster) while a bitmap of that node migrated, or was held by a
        backup, aborted QEMU: busy bitmaps may now grow, and the
        migration fails cleanly instead of losing the grown part;""",
        """- quitting QEMU while the migration thread sent bitmaps freed
        them under it (a use after free); the outgoing state now has a
        mutex, never held across a write to the stream;""",
        """- a bitmap held by an incremental backup job made every
        migration of the VM fail at once; it now migrates as what it
        would be if the backup failed (its frozen bits and its
        successor's), and the job itself must end before the switchover,
        as before;""",
        """- once a migration with dirty-bitmaps had found no bitmap to
        migrate, every later migration of the same QEMU process migrated
        none, whatever bitmaps the VM had by then.""",
        "Then the feature, which sends bitmaps while the guest runs, like RAM:",
        f"""- hbitmap gains meta bitmaps: a coarse bitmap marking every chunk
        of a bitmap whose bits change (set or cleared), cheap enough that
        hbitmap_set() with one attached costs at most
        {overhead * 100:.1f} % more instructions;""",
        """- with the new source-only capability dirty-bitmaps-live,
        migration sends every chunk once during the iterations, then the
        chunks whose meta bit was set again, each bitmap walked from a
        cursor so that a hot chunk cannot starve the others; the
        switchover waits until every bitmap was sent once, and
        stop-and-copy makes one bounded pass over what changed last.  A
        chunk is reset in the meta bitmap and serialized under the bitmap
        lock, so a racing guest write cannot be lost;""",
        """- the destination finishes each chunk as it arrives, in time
        proportional to the chunk (hbitmap (de)serialization also becomes
        a memcpy on little-endian hosts), so COMPLETE costs nothing in the
        downtime;""",
        """- in live mode the source sends a run of clear chunks as one
        chunk of zeroes, flushed with its buffer, and the destination
        skips zeroes for a range that is already clear instead of
        faulting in the memory to clear it: a sparse bitmap costs a few
        headers, and memory only where it has bits set, so the
        destination never falls behind the source;""",
        """- query-migrate and HMP info migrate report dirty-bitmaps
        statistics, read without any lock, so that a destination that
        stops reading blocks only the migration thread, never the
        monitor.""",
        """Last come two patches of other concerns: HMP qemu-io refuses
        to write to an inactive node (a regression since 7.2, which
        refused it too), and x-debug-block-dirty-bitmap-regions (with HMP
        info dirty-bitmap-regions) shows where a bitmap is dirty, which
        makes bitmap tests readable.""",
        """Compatibility: the stream format is unchanged.  Destinations have
        always accepted any number of data chunks for a bitmap before its
        COMPLETE, a later one replacing an earlier one, so live mode needs
        no negotiation: only the source enables it, and it migrates to
        QEMU 7.2 and stock 10.2 destinations, and from a 7.2 source.""",
        "INTERFACE",
    ]
    tests = f"""Tests: new unit tests in test-hbitmap (meta bitmaps, range
        counts and finish, the partial last word); iotests
        migrate-bitmaps-pending, -cancel, -size-mismatch,
        -huge-granularity, -resize, -grow, -quit, -backup,
        qemu-io-inactive-node, migrate-bitmaps-live (postcopy started
        during the bulk phase, a destination stopped with SIGSTOP, a
        bitmap whose chunks keep changing beside one that changed once),
        migrate-bitmaps-sparse and dirty-bitmap-regions; the existing
        bitmap iotests pass.  Every patch builds and passes test-hbitmap
        on its own, every fix's test passes on its own prefix and fails
        on its parent.  Outside the series, the same changes were
        exercised with a Linux guest writing through virtio-blk during
        migration, migrations to and from Debian's QEMU 7.2, migrations
        between network namespaces broken by cancel, yank, a killed
        destination, a cut link and a partition, over links with added
        latency, loss or too little bandwidth, through libvirt 9.0 with
        and without the libvirt series, and {fuzzing}."""
    changes = """Changes since v2: the outgoing state's mutex is no longer
        held across writes to the stream, and query-migrate reads the
        statistics without it (v2 froze the monitor of a source whose
        destination stopped reading); dirty-bitmaps-live is an error
        without dirty-bitmaps, and the x- migration property is gone; the
        bitmaps take turns in the dirty phase; only the exact pending
        figure is held above the threshold during the bulk phase, so RAM's
        dirty-log sync is not put off; 'transferred' counts the bitmaps'
        own bytes; two new fixes (a write growing a busy bitmap's node, a
        bitmap held by a backup job); asserts where a meta bitmap would be
        swapped out or the upper levels are stale; v2's 18 and 19 are one
        patch; the qemu-io and regions patches come last."""
    out: list[str] = []
    for p in paragraphs:
        if p == "BENCH_TABLE":
            out += ["", table]
            continue
        if p == "SAFETY_TABLE":
            out += ["", safety_table(results.get("safety", []))]
            continue
        if p == "FIXES_ONLY":
            p = fixes_only(results)
        elif p == "INTERFACE":
            p = interface(results, overhead, m)
        bullet = p.lstrip().startswith("- ")
        if out and not (bullet and out[-1].lstrip().startswith(
                ("- ", "This", "The series", "Then"))):
            out.append("")
        out.append(_para(p))
    return ("\n".join(out) + "\n\n" + _para(tests)
            + "\n\n" + _para(changes))


def write(layout: Layout, reuse: bool = False) -> Path:
    """Regenerate patches/qemu/0000-cover-letter.patch from *layout*'s patched
    tree; returns its path."""
    if reuse:
        require_saved(layout)
    tree = layout.source("patched")
    base = git(tree, "rev-parse", BASE_TAG).stdout.strip()
    results = _results(layout, reuse)
    overhead = _meta_overhead(layout, reuse)
    with tempfile.TemporaryDirectory() as tmp:
        git(tree, "format-patch", "-q", "--zero-commit", "--cover-letter",
            "--numbered", f"--subject-prefix={SUBJECT_PREFIX}", "-o", tmp,
            f"{base}..HEAD")
        letter = Path(tmp, "0000-cover-letter.patch").read_text()
    author = git(tree, "log", "-1", "--format=%an <%ae>").stdout.strip()
    text = letter.replace("*** SUBJECT HERE ***", TITLE)
    text = text.replace("*** BLURB HERE ***",
                        blurb(results, overhead,
                              _fuzzing(layout)).strip() +
                        f"\n\nSigned-off-by: {author}")
    out = series.PATCH_DIR / "0000-cover-letter.patch"
    out.write_text(text)
    return out
