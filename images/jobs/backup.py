"""The backup job: a point-in-time copy of a live disk into a target image (QEMU's
block/backup.c with its copy-before-write filter, done with our block layer).

What to copy is a ``DirtyBitmap`` of job clusters (QEMU's block-copy bitmap), set at
start from the sync mode: ``full`` the whole disk, ``top`` what the top image
allocates, ``incremental``/``bitmap`` what the user's bitmap has dirty.  The body
walks it, copying cluster runs from the source (read through its whole chain) to the
target and clearing their bits.  Point in time: a guest write (``GuestView``) first
calls ``before_write``, which copies the old data of the clusters not yet copied and
clears them, so the target ends up with the disk as it was when the job started.
Both copies happen under one lock, so a cluster is copied exactly once.  Whole
clusters of plain data that the target leaves unallocated are copied kernel-side
with the stream's batch copy (``copy_plan.plan_batch``, ``Qcow2Image.copy_batch``);
edges, compressed data and wrapped targets go through read and write, and with
``compress`` every copy goes through read and ``write_compressed`` (whole clusters,
deflated by the qcow2 target).

The user's bitmap is frozen while the job runs (new guest writes go to its
successor).  On success with bitmap-mode on-success or always it then holds only
the writes made since the start; on failure or cancel it keeps every bit (plus the
new ones), and with mode always it holds what was not copied plus the new writes.

The device is never switched; on success the target is flushed before
BLOCK_JOB_COMPLETED.
"""
import threading

from ..dirty_bitmap import DirtyBitmap
from ..chain import chain_of, extents_above
from ..driver import DATA, UNALLOCATED, Run
from ..errors import ImageIOError
from .blockjob import BlockJob
from .copy_plan import Writeback, fast_path_top, plan_batch

BACKUP_CLUSTER = 65536          # QEMU's minimum block-copy cluster
BACKUP_CHUNK = 4 << 20          # bytes copied under the lock at a time (as the stream)
WINDOW_EXTENTS = 64             # separate dirty extents copied under the lock at a time


class BackupJob(BlockJob):
    job_type = "backup"

    def __init__(self, job_id, events, source, target, sync, *, bitmap=None, bitmaps=None,
                 bitmap_mode="on-success", target_is_fresh=False, compress=False,
                 on_finished=None,
                 on_source_error="report", on_target_error="report", on_error=None,
                 **job_options):
        # drive-backup has no on-error: the two policies below replace it
        super().__init__(job_id, events, on_error=on_target_error, **job_options)
        self.on_source_error, self.on_target_error = on_source_error, on_target_error
        self.source, self.target, self.sync = source, target, sync
        self.bitmap, self.bitmaps, self.bitmap_mode = bitmap, bitmaps, bitmap_mode
        self.cluster = max(BACKUP_CLUSTER, target.cluster_size)
        self.target_is_fresh = target_is_fresh
        self.compress = compress        # the target offers write_compressed
        self._on_finished = on_finished
        self._copy_lock = threading.Lock()
        self._writeback = Writeback()
        self.todo = DirtyBitmap(None, source.virtual_size, self.cluster)

    def start(self):
        """The point in time: what to copy is fixed, the bitmap frozen and the
        copy-before-write hook in place at once (under the source's lock)."""
        with self.source.lock:
            self._plan()
            if self.bitmap is not None:
                self.bitmaps.freeze(self.bitmap)
            self.source.before_guest_write.append(self.before_write)
        self.set_len(sum(length for _, length in self.todo.extents()))
        super().start()

    def _plan(self):
        size = self.source.virtual_size
        if self.sync in ("full", "none"):     # none: nothing by itself, all by copy-before-write
            self.todo.set_dirty(0, size)
        elif self.sync == "top":
            for run in self.source.block_status(0, size) if size else []:
                if run.kind != UNALLOCATED:
                    self.todo.set_dirty(run.offset, run.length)
        elif self.sync in ("incremental", "bitmap"):
            self.todo.merge_from(self.bitmap)

    # -- copying ------------------------------------------------------------------
    def before_write(self, offset, length):
        """Copy-before-write: the old data of not yet copied clusters goes first."""
        with self._copy_lock:
            copied = self._copy_locked(offset, length)
        if copied:
            self.progress(copied)

    def _copy_locked(self, offset, length):
        """Copy every not yet copied job cluster that [offset, offset+length) touches,
        as one batch; returns the bytes copied."""
        runs = []
        for start, n in self.todo.extents(offset, length):
            lo = start // self.cluster * self.cluster
            hi = min(self.source.virtual_size, -(-(start + n) // self.cluster) * self.cluster)
            runs.extend(self.todo.extents(lo, hi - lo))   # todo's extents are whole clusters
        if runs:
            self._copy_runs(runs)
        for run_start, run_len in runs:
            self.todo.reset(run_start, run_len)
        return sum(n for _, n in runs)

    def _copy_runs(self, runs):
        """Whole clusters of plain data go kernel-side in one batch (the stream's batch
        copy) when the target leaves them unallocated; the rest through read and write."""
        if self.compress or not fast_path_top(self.target):
            for offset, length in runs:
                self._copy_slow(DATA, offset, length)
            return
        # The target's lock first: a reader of the target (an NBD export of a sync=none
        # target) holds it while it reads through to the source.
        with self.target.lock, self.source.lock:
            extents, rest = [], []
            for offset, length in runs:
                if any(r.kind != UNALLOCATED for r in self.target.block_status(offset, length)):
                    rest.append(Run(DATA, offset, length))
                else:
                    extents.extend(extents_above(self.source, None, offset, length))
            fast, slow = plan_batch(extents, [self.target] + chain_of(self.source),
                                    self.target.cluster_size)
            written = self.target.copy_batch(fast)
            for run in sorted(rest + slow, key=lambda r: r.offset):
                self._copy_slow(run.kind, run.offset, run.length)
            fd = self.target.data_fd() if written[1] else -1
        # Outside the locks: the flush before BLOCK_JOB_COMPLETED has little left to write.
        self._writeback.start(fd, *written)

    def _copy_slow(self, kind, offset, length):
        data = self.source.read(offset, length) if kind == DATA else bytes(0)
        if kind != DATA or data.count(0) == len(data):
            if self.target_is_fresh and self.target.backing is None:
                return          # a new image without backing reads as zeros already
            self.target.write_zeroes(offset, length)
        elif self.compress:
            self.target.write_compressed(offset, data)
        else:
            self.target.write(offset, data)

    def error_action(self, exc):
        """on-source-error for failed reads, on-target-error for failed writes."""
        source = getattr(exc, "operation", "read") == "read"
        self.on_error = self.on_source_error if source else self.on_target_error
        return super().error_action(exc)

    def run(self):
        with self._lock:        # QEMU: every backup blinks paused/running as it starts
            self._transition("paused")
            self._transition("running")
        if self.sync == "none":     # only copy-before-write: runs until cancelled
            while self.checkpoint():
                with self._lock:
                    self._wake.wait(0.5)
            return
        pos = 0
        while True:
            if not self.checkpoint():
                return
            window = self._next_window(pos)
            if window is None:
                return
            start, length = window
            try:
                with self._copy_lock:
                    copied = self._copy_locked(start, length)
            except ImageIOError as err:
                action = self.error_action(err)
                if action == "retry":
                    continue
                if action != "ignore":
                    raise
                copied = 0
            self.account_copied(copied)
            self.progress(copied)
            pos = start + length

    def _next_window(self, pos):
        """(start, length) from the first extent left at or after ``pos``, covering up
        to BACKUP_CHUNK dirty bytes in at most WINDOW_EXTENTS extents: a sparse bitmap
        (an incremental backup) is copied in few batches, a dense one in 4 MiB steps."""
        extent = self.todo.next_extent(pos)
        if extent is None:
            return None
        start, end, dirty = extent[0], extent[0], 0
        for _ in range(WINDOW_EXTENTS):
            offset, length = extent
            take = min(length, BACKUP_CHUNK - dirty)
            end, dirty = offset + take, dirty + take
            if take < length or dirty >= BACKUP_CHUNK:
                break
            extent = self.todo.next_extent(end)
            if extent is None:
                break
        return start, end - start

    # -- completion ----------------------------------------------------------------
    def prepare(self):
        self._detach()
        self.target.flush()
        if self.bitmap is not None:
            if self.bitmap_mode == "never":
                self.bitmaps.reclaim(self.bitmap)
            else:
                self.bitmaps.abdicate(self.bitmap)

    def abort(self):
        self._detach()
        if self.bitmap is not None and self.bitmap.successor is not None:
            remaining = self.todo if self.bitmap_mode == "always" else None
            self.bitmaps.reclaim(self.bitmap, also=remaining)

    def _detach(self):
        with self._copy_lock:
            if self.before_write in self.source.before_guest_write:
                self.source.before_guest_write.remove(self.before_write)

    def clean(self):
        self._detach()
        if self._on_finished is not None:
            self._on_finished(self)
