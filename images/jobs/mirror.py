"""The mirror block job: keep a target equal to a live source, then switch to it (QEMU's block/mirror.c).

What is copied is what a ``DirtyBitmap`` says is dirty.  It starts with what the
sync mode must copy (``initial_dirty``: full = everything allocated anywhere in
the chain, top = what the top allocates, none = nothing; ``whole_disk`` = every
byte, for a target that cannot be assumed to read as zeros) and from then on
grows with every guest write, reported by a write notifier (``guest_write``, see
``guest_io``).  ``len`` = ``offset`` + dirty bytes, as QEMU counts it.

Ordering that makes "no write is lost" hold: the job cleans a range in the bitmap
and plans its copy while holding the source's lock; a guest write takes the same
lock and marks its range after the write.  So a write either lands before the
job plans, or re-dirties the range afterwards (the copy itself may then read old
or new bytes: the range is copied again either way).
In ``write-blocking`` copy mode the notifier writes the guest's bytes to the
target as well, still under the source's lock, so they cannot interleave with
the job's copy of the same range.

States: running until nothing is dirty; then the target is flushed and the job
turns ``ready`` (BLOCK_JOB_READY, once).  It then waits for dirt, copies it, and
waits again.  ``complete`` (or a soft cancel) makes the job drain the guests
(``drain``, given by the command layer: no guest request runs while it is held),
copy what is left, flush the target and, for complete, call ``pivot`` (the device
now uses the target), all in that one drained section; then the body returns and
the engine emits waiting, pending, BLOCK_JOB_COMPLETED.  A force cancel, or any
cancel before ready, leaves the device on the source: BLOCK_JOB_CANCELLED.
"""
from ..chain import block_status_above, chain_of, extents_above
from ..dirty_bitmap import DirtyBitmap
from ..driver import DATA, UNALLOCATED
from ..errors import ImageIOError, JobError
from .blockjob import ON_ERROR_POLICIES, BlockJob
from .copy_plan import Writeback, fast_path_top, plan_batch

MIRROR_CHUNK = 512 * 1024           # bytes per step while a speed limit is set
MIRROR_BATCH = 4 * 1024 * 1024      # bytes per step at full speed: short lock holds (guest p99)
DEFAULT_BUF_SIZE = 16 * 1024 * 1024
IDLE_WAIT = 1.0                     # seconds a ready job sleeps between looks (woken earlier)

SYNC_MODES = ("full", "top", "none")
COPY_MODES = ("background", "write-blocking")


def _no_drain(section):
    return section()


def initial_dirty(bitmap, source, sync, whole_disk=False):
    """Mark what ``sync`` must copy (caller holds ``source.lock``)."""
    if whole_disk:
        bitmap.set_dirty(0, source.virtual_size)
        return
    if sync == "none" or not source.virtual_size:
        return
    if sync == "full":
        runs = block_status_above(source, None, 0, source.virtual_size)
    else:
        runs = source.block_status(0, source.virtual_size)
    for run in runs:
        if run.kind != UNALLOCATED:
            bitmap.set_dirty(run.offset, run.length)


class MirrorJob(BlockJob):
    job_type = "mirror"
    supports_complete = True

    def __init__(self, job_id, events, source, target, *, sync="full", granularity=65536,
                 buf_size=DEFAULT_BUF_SIZE, copy_mode="background", on_source_error="report",
                 on_target_error="report", whole_disk=False, drain=None, pivot=None,
                 detach=None, on_finished=None, **job_options):
        """Build the job and its initial bitmap; call with ``source.lock`` held when
        guests may write, and register ``guest_write`` before releasing it."""
        super().__init__(job_id, events, on_error=on_source_error, **job_options)
        if on_target_error not in ON_ERROR_POLICIES:
            raise JobError("Parameter 'on-target-error' does not accept value '%s'"
                           % (on_target_error,))
        self.source = source
        self.target = target
        self.sync = sync
        self.copy_mode = copy_mode
        self.on_source_error = on_source_error
        self.on_target_error = on_target_error
        self.batch = max(min(buf_size, MIRROR_BATCH), granularity)
        self.chunk = max(MIRROR_CHUNK, granularity)
        self.bitmap = DirtyBitmap(None, source.virtual_size, granularity)
        # QEMU accepts the command and fails the job at once (len 0, offset 0).
        self.size_mismatch = target.virtual_size != source.virtual_size
        if not self.size_mismatch:
            initial_dirty(self.bitmap, source, sync, whole_disk)
        self.len = self.bitmap.count()
        self._drain = drain or _no_drain
        self._pivot = pivot
        self._detach = detach
        self._on_finished = on_finished
        self._writeback = Writeback()
        self._cursor = 0
        self._ready_reported = False
        self._should_complete = False
        self._soft_cancel = False
        self._failed_since_progress = set()
        self._switch_error = None
        self.pivoted = False

    @property
    def switch_at_finalize(self) -> bool:
        """Complete with auto-finalize off: the switch waits for job-finalize (QEMU
        pivots in the job's prepare), and guest writes stay tracked until then."""
        return (self._should_complete and not self.auto_finalize and not self._cancelled
                and self._pivot is not None)

    @property
    def finishing(self) -> bool:
        """Asked to complete or soft-cancelled: the job ends once in sync."""
        return self._should_complete or self._soft_cancel

    # -- the guest's writes --------------------------------------------------------
    def guest_write(self, kind, offset, length, data):
        """Write notifier: called after a guest write to the source, source lock held."""
        if self.copy_mode == "write-blocking" and kind != "discard" and self._write_through(
                kind, offset, length, data):
            return
        self.bitmap.set_dirty(offset, length)
        with self._lock:
            self.len = self.offset + self.bitmap.count()
            self._wake.notify_all()

    def _write_through(self, kind, offset, length, data) -> bool:
        """Write-blocking mode: the guest's change goes to the target too (False: failed,
        the range is then left to the background copy, which reports the error)."""
        if self.status not in ("running", "ready", "standby", "paused") or self.pivoted:
            return False
        try:
            if kind == "write":
                self.target.write(offset, data)
            else:
                self.target.write_zeroes(offset, length)
        except ImageIOError:
            return False
        with self._lock:
            self.len += length
            self.offset += length
        return True

    # -- the body ----------------------------------------------------------------
    def run(self):
        try:
            self._run_body()
        finally:
            # Unhook from the guest path here, holding no job lock: a guest write in
            # flight may still call guest_write, which takes the job's lock.
            if self._detach is not None and not self.switch_at_finalize:
                self._detach(self)

    def _run_body(self):
        if self.size_mismatch:
            raise JobError("Source and target image have different sizes")
        while True:
            if not self.checkpoint():
                return
            if self._copy_step():
                continue
            if not self._ready_reported:
                self._become_ready()
                continue
            if self._should_complete or self._soft_cancel:
                if self._drain(self._finish_in_sync):
                    return
                continue
            self._wait_for_work()

    def _copy_step(self) -> bool:
        """Copy up to one step of dirty ranges; False when nothing was dirty.

        Planned, and the small parts (edges, zeros) copied, under the source's lock;
        the bulk (whole clusters of plain data, copied in the kernel) under the
        target's lock only, so guest writes to the source do not wait for it.  A
        source cluster that changes meanwhile was re-dirtied by its write (or, in
        write-blocking mode, is written to the target after this copy)."""
        step = self.chunk if self.speed else self.batch
        with self.source.lock:
            runs = self._take(self._cursor, step)
            if not runs and self._cursor:
                self._cursor = 0
                runs = self._take(0, step)
            if not runs:
                return False
            self._cursor = runs[-1][0] + runs[-1][1]
            try:
                copied, batches = self._copy_small(runs)
            except ImageIOError as err:
                return self._copy_failed(err, runs)
        try:
            done, written = self._copy_bulk(batches)
        except ImageIOError as err:
            return self._copy_failed(err, runs)
        for fd, host, length in written:
            self._writeback.start(fd, host, length)
        advanced = sum(length for _offset, length in runs)
        self._failed_since_progress.clear()
        with self._lock:
            self.offset += advanced
            self.len = self.offset + self.bitmap.count()
        self.account_copied(copied + done)
        return True

    def _take(self, offset, limit):
        """Reset and return up to ``limit`` bytes of dirty ranges from ``offset`` on
        (whole granules, at least one); looks ahead a window first, then to the end."""
        granule = self.bitmap.granularity
        extents = self.bitmap.extents(offset, 64 * limit) or self.bitmap.extents(offset)
        taken, budget = [], max(limit, granule)
        for start, length in extents:
            if length > budget:
                length = max(budget // granule * granule, granule)
            taken.append((start, length))
            self.bitmap.reset(start, length)
            budget -= length
            if budget <= 0:
                break
        return taken

    def _copy_failed(self, err, runs) -> bool:
        """The on-source-error / on-target-error policy for a failed copy.

        The range stays dirty whatever the policy (QEMU's mirror re-dirties it), so
        'ignore' and a resumed 'stop' copy it again on a later pass.  'ignore' differs
        from QEMU in one way: a range failing again before any copy succeeded since
        its last failure (a whole pass without progress) fails the job with that
        error, where QEMU retries forever.  While the switch waits for job-finalize
        (status 'pending') there is no policy: the error fails the job."""
        for offset, length in runs:
            self.bitmap.set_dirty(offset, length)
        if self.status == "pending":
            raise err
        self.on_error = self.on_target_error if err.operation == "write" else self.on_source_error
        action = self.error_action(err)
        if action == "report":
            raise err
        if action == "ignore":
            # Retried below, not remembered: the job succeeds once the retry copies it.
            self._ignored_error = None
            if runs[0][0] in self._failed_since_progress:
                raise err
            self._failed_since_progress.add(runs[0][0])
        return True

    def _copy_small(self, runs):
        """(Source lock held.)  Plan each range; write what the kernel copy cannot do
        (edges, compressed data, zeros) at once; return (bytes copied, bulk batches)."""
        copied, batches = 0, []
        for offset, length in runs:
            extents = extents_above(self.source, None, offset, length)
            data = [run for run in extents if run.kind == DATA]
            if data and fast_path_top(self.target) and self._target_unallocated(offset, length):
                pieces, data = plan_batch(data, [self.target] + chain_of(self.source),
                                          self.target.cluster_size)
                if pieces:
                    batches.append((offset, length, pieces))
            for run in data:
                self.target.write(run.offset, self.source.read(run.offset, run.length))
                copied += run.length
            for run in extents:
                if run.kind != DATA and not self._target_reads_zero(run.offset, run.length):
                    self.target.write_zeroes(run.offset, run.length)
                    copied += run.length
        return copied, batches

    def _copy_bulk(self, batches):
        """(Target lock only.)  The kernel-side copies; a range the guest wrote into the
        target meanwhile (write-blocking) is left dirty for the next pass."""
        copied, written = 0, []
        with self.target.lock:
            for offset, length, pieces in batches:
                if not self._target_unallocated(offset, length):
                    self.bitmap.set_dirty(offset, length)
                    continue
                host, done = self.target.copy_batch(pieces)
                written.append((self.target.data_fd(), host, done))
                copied += done
        return copied, written

    def _target_unallocated(self, offset, length) -> bool:
        return all(run.kind == UNALLOCATED for run in self.target.block_status(offset, length))

    def _target_reads_zero(self, offset, length) -> bool:
        return all(run.kind != DATA for run in block_status_above(self.target, None, offset, length))

    def _become_ready(self):
        """Nothing dirty: flush the target, then (still nothing dirty) report READY once."""
        self.target.flush()
        with self._lock:
            if self.bitmap.count() or self._cancelled:
                return
            self._transition("ready")
            self._ready_reported = True
            self.events.publish("BLOCK_JOB_READY", {
                "type": self.job_type, "device": self.id, "len": self.len,
                "offset": self.offset, "speed": self.speed})

    def _wait_for_work(self):
        with self._lock:
            if (self.bitmap.count() or self._should_complete or self._soft_cancel
                    or self._cancelled or self._pause_count):
                return
            self.busy = False
            self._wake.wait(IDLE_WAIT)
            self.busy = True

    def _finish_in_sync(self) -> bool:
        """Guests are drained: copy the rest, flush the target, pivot on complete.
        True when the job is done (the body returns)."""
        while self._copy_step():
            if self._cancelled:
                return True
        self.target.flush()
        with self._lock:
            if self._cancelled:
                return True
            if self._ignored_error is not None:
                raise self._ignored_error
            if self._should_complete and self._pivot is not None and self.auto_finalize:
                self._pivot(self)
                self.pivoted = True
        return True

    def _switch_in_sync(self):
        """job-finalize of a completed job (guests drained): copy what the guests wrote
        while it was pending, flush the target, switch."""
        while self._copy_step():
            pass
        self.target.flush()
        with self._lock:
            if self._cancelled or self.status != "pending":
                return
            self._pivot(self)
            self.pivoted = True

    # -- verbs ---------------------------------------------------------------------
    def on_complete(self):
        self._should_complete = True
        self._wake.notify_all()

    def cancel(self, force=False):
        """A soft cancel of a ready job ends it in sync, without the switch (COMPLETED)."""
        with self._lock:
            if self.pivoted:
                return      # the switch is done; the job is finishing successfully
            if not force and self.status == "ready" and not self.user_paused:
                self._apply_verb("cancel")
                self._soft_cancel = True
                self._wake.notify_all()
                return
        super().cancel(force)

    def finalize(self):
        """job-finalize: the switch, drained, before the generic finalize (whose
        prepare fails the job if the switch failed).  Run without the job's lock:
        guest writes take it from inside their own locks."""
        with self._lock:
            self._apply_verb("finalize")
            switch = self.switch_at_finalize and not self.pivoted
        if switch:
            try:
                self._drain(self._switch_in_sync)
            except Exception as exc:    # the job fails with it, as a failed prepare
                self._switch_error = exc
        super().finalize()

    def prepare(self):
        if self._switch_error is not None:
            raise self._switch_error

    def clean(self):
        if self._on_finished is not None:
            self._on_finished(self)

