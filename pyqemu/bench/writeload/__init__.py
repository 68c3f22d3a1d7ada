"""``pyqemu bench migrate``, write-load part: live bitmap migration under
guest writes of several patterns and rates.

What ``dirty-bitmaps-live`` costs depends on the guest's writes: a chunk
(1 KiB of bitmap: 8192 granules, 32 MiB of disk at 4 KiB granularity,
512 MiB at 64 KiB) whose bits change after it was sent is sent again.  So
the Linux guest of :mod:`pyqemu.machine.linuxguest` (patched build, q35 on
the host's accelerator, KVM or TCG (:mod:`pyqemu.machine.accel`), O_DIRECT
writes to a 1 TiB virtio-blk disk on an iothread, bitmaps
at 4 KiB and 64 KiB granularity) writes with one pattern and rate per
boot, and is migrated several times in that boot (A -> B -> A' ...,
:class:`~pyqemu.machine.hops.Hops`; the guest keeps writing across the
hops and the bitmaps move with it):

* patterns: random over the whole disk; sequential (stride 4 KiB); a hot
  set of :data:`HOT_CHUNKS` 4 KiB-bitmap chunks (random writes in
  128 MiB); one write per chunk: stride 32 MiB + 4 KiB, so that every
  write lands in the next chunk *and* on a granule not written before (a
  stride of exactly 32 MiB rewrites the same 32768 granules after one
  lap of the disk, sets no new bit, and so changes no chunk at all);
* rates: idle (1 write/s), paced rates, and as fast as the guest goes.

Per boot: the write rate with no migration (bitmaps present), then
:data:`HOPS` live migrations, the rate again, then one migration without
bitmaps at the same bandwidth (last: it leaves the bitmaps behind), and
two more without bitmaps at a 1 ms downtime limit, which switch over
with as little RAM left as live mode does (see
:data:`.experiment.MATCHED_LIMIT`): each migration records the RAM sent
in its downtime and how QEMU came to switch over, so that downtimes are
compared for the same RAM left.  Then, for the first pattern at every
rate, a boot on the ``fixes`` build (the series' fixes without live
mode, :class:`.results.FixesResult`): its bitmaps go in the downtime,
with avail-switchover-bandwidth at the link's speed, and its guest's
downtime (source STOP to destination RESUME) is set against live
mode's under the same writes.  The
rate during each migration against the rate without one says what
migrating costs the guest; against the rate during the migration without
bitmaps it separates "the migration competes for the host's CPUs" from
"the meta bitmap costs the write path" (ratio live / no-bitmap).  As fast
as the guest goes, that ratio compares different QEMU processes, whose
rates differ by more than the effect; there a boot first measures the
guest's cost in one QEMU (:class:`.results.CostResult`), and the target uses that.

Four modules, one job each: :mod:`.model` (the workload and the model
of the resent chunks and of the convergence threshold), :mod:`.results`
(what a boot measured, and its JSON), :mod:`.experiment` (the boots and
migrations that measure it) and :mod:`.report` (tables, targets, plot).
"""
