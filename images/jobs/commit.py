"""The commit block jobs: merge the layers from ``top`` down into ``base`` (QEMU's block/commit.c).

Intermediate commit (``CommitJob``, top below the active image): the data that the
layers from ``top`` down to just above ``base`` decide is copied into ``base``,
front to back, with the stream's loop (``range_copy``) and copy step
(``copy_plan.copy_extents``, here overwriting what base already holds).  Every
byte written into base is still masked by the layer that decides it, so the guest
never sees the copy happen.  On success base is flushed *before* the overlay (the
image above top) stops naming the committed-over layers; then the overlay names
base (relatively when it named its backing file relatively; ``backing-file``
overrides) and is flushed.  A cancel, an error or a kill leaves the chain as it
was: base holds some extra, masked data.

Active commit (``ActiveCommitJob``, top is the active image) is the mirror
(``mirror.MirrorJob``) with ``"type": "commit"``, its target the base: the dirty
bitmap starts with everything the layers above base hold and grows with the
guest's writes; each dirty range is copied into base with the same copy step.
READY once base is in sync (and flushed); ``complete`` switches the device to base
(the layers above it leave the chain); a soft cancel at READY ends in sync without
the switch, a force cancel at once; either leaves the copied data in base, still
masked by the layers above it.

Base is reopened read-write when the job is created (QEMU's commit_start) and back
to read-only when it ends (unless it became the active image).  ``commit_to_backing``
is HMP ``commit``: the active image's data into its backing file, synchronously,
then the active image emptied.
"""
import contextlib
import os

from ..chain import chain_of, extents_above
from ..driver import UNALLOCATED, ZERO
from ..errors import ImageError, ImageLockError
from ..locking import JOB_WRITER
from .copy_plan import clipped, copy_extents, work_extents
from .mirror import MirrorJob
from .range_copy import RangeCopyJob
from .stream import backing_reference_for

# The step at full speed.  Larger than the stream's: the commit holds base's lock, not
# the active image's, so guest writes never wait for it (only reads that reach base).
COMMIT_BATCH = 16 * 1024 * 1024


def committed_extents(top, base, offset, length):
    """What a commit of [offset, offset+length) writes into ``base``: the extents the
    layers from ``top`` down to above ``base`` decide (depth counts from ``top``)."""
    return [run for run in extents_above(top, base, offset, length) if run.kind != UNALLOCATED]


def _copy_into_base(top, base, extents):
    """Copy committed extents into base; holds base's lock (guest reads of base wait)."""
    with base.lock:
        return copy_extents(base, [base] + chain_of(top), extents, overwrite=True)


def reopen_for_writing(image):
    """Base (or an overlay) opened read-write for a commit; QEMU's reopen failure text."""
    try:
        image.set_read_only(False)
    except ImageLockError:
        raise       # QEMU's own text and hint: Failed to get "write" lock
    except ImageError as err:
        reason = err.desc.rsplit(": ", 1)[-1] if ": " in err.desc else err.desc
        raise ImageError("Could not reopen file: %s" % reason, path=image.path) from err


@contextlib.contextmanager
def writable_for_now(image):
    """``image`` read-write inside the block, and read-only again after it if it was."""
    was_read_only = image.read_only
    if was_read_only:
        reopen_for_writing(image)
    try:
        yield image
    finally:
        if was_read_only:
            image.set_read_only(True)


class _WritesBase:
    """What both commit jobs do to base: reopen it read-write once the job exists
    (QEMU's commit_start: a base that cannot be is a refusal, the job goes to 'null'),
    and back to read-only at the end unless it became the active image."""

    _base_was_read_only = False
    _base_taken = False

    def create(self):
        super().create()
        with self._lock:
            if self.status != "created" or self._base_taken:
                return
            try:
                self._take_base()
            except ImageError:
                self._transition("null")
                raise

    def _take_base(self):
        """Base read-write, with the lock bytes of a job writing into it (as a stream
        holds on its top); on a conflict nothing is left changed."""
        base = self.base
        if base.read_only:
            reopen_for_writing(base)
            self._base_was_read_only = True
        try:
            base.claim_permissions(self, JOB_WRITER)
        except BaseException:
            self._restore_base()
            raise
        self._base_taken = True

    def _restore_base(self, keep_writable=False):
        self.base.release_permissions(self)
        if self._base_was_read_only and not keep_writable and not self.base.read_only:
            self.base.set_read_only(True)


class CommitJob(_WritesBase, RangeCopyJob):
    """Intermediate commit: ``top`` .. above ``base`` into ``base``; ``overlay`` is the
    image whose backing file is ``top`` (it will name ``base``)."""

    job_type = "commit"

    def __init__(self, job_id, events, top, base, overlay, *, backing_file=None,
                 on_finished=None, batch_size=COMMIT_BATCH, **job_options):
        super().__init__(job_id, events, batch_size=batch_size, **job_options)
        self.top = top
        self.base = base
        self.overlay = overlay
        self.new_backing_name = backing_reference_for(overlay, base, backing_file)
        self.new_backing_format = base.format_name
        self._on_finished = on_finished
        self.set_len(top.virtual_size)

    # -- the body ------------------------------------------------------------
    def copy_window(self, offset, window, step):
        extents = self.plan(lambda at, n: committed_extents(self.top, self.base, at, n),
                            offset, window, step)
        if not extents:
            return window, 0
        start = max(offset, extents[0].offset // self.base.cluster_size * self.base.cluster_size)
        end = min(offset + window, start + step)
        self.attempted = (start, end)
        copied, written = _copy_into_base(self.top, self.base, clipped(extents, start, end))
        self.writeback.start_all(self.base.data_fd(), written)
        return end - offset, copied

    def after_copy(self):
        """fsync base before prepare, which holds the overlay's lock for its flushes."""
        fd = self.base.data_fd()
        if fd is not None:
            try:
                os.fsync(fd)
            except OSError:
                pass    # prepare's flush reports the error

    # -- completion ----------------------------------------------------------
    def prepare(self):
        self.base.flush()   # durable before any header stops naming the layers above it
        overlay = self.overlay
        with overlay.lock, writable_for_now(overlay):
            overlay.set_backing_reference(self.new_backing_name, self.new_backing_format)
            overlay.flush()
            overlay.backing = self.base

    def clean(self):
        self._restore_base()
        if self._on_finished is not None:
            self._on_finished(self)


class ActiveCommitJob(_WritesBase, MirrorJob):
    """Active commit: the mirror of the active image ``top`` into ``base``, type commit.
    Build it with ``top.lock`` held and register ``guest_write`` before releasing it."""

    job_type = "commit"

    def __init__(self, job_id, events, top, base, **options):
        super().__init__(job_id, events, top, base, sync="none", **options)
        self.top, self.base = top, base
        for run in committed_extents(top, base, 0, top.virtual_size):
            self.bitmap.set_dirty(run.offset, run.length)
        self.len = self.bitmap.count()      # QEMU: the bytes allocated above base

    def _copy_small(self, runs):
        """(Top's lock held.)  The dirty ranges as the commit copies them: what the layers
        above base decide there, into base; nothing is left for the bulk pass."""
        copied, written = 0, []
        for offset, length in runs:
            done, ranges = _copy_into_base(self.top, self.base,
                                           committed_extents(self.top, self.base, offset, length))
            copied += done
            written += ranges
        self._writeback.start_all(self.base.data_fd(), written)
        return copied, []

    def clean(self):
        self._restore_base(keep_writable=self.pivoted)
        super().clean()


def commit_to_backing(top, chunk=4 * 1024 * 1024):
    """HMP ``commit``: copy what ``top`` itself holds into its backing file, flush it,
    then empty ``top`` (QEMU's bdrv_commit + bdrv_make_empty).  Synchronous: holds
    top's lock, so guest requests wait.  A kill leaves top masking base as before."""
    base = top.backing
    with top.lock, writable_for_now(base):
        for offset in range(0, top.virtual_size, chunk):
            length = min(chunk, top.virtual_size - offset)
            _copy_into_base(top, base, committed_extents(top, base, offset, length))
        base.flush()
        top.make_empty()
        top.flush()


def merge_cost(top, base):
    """What each merge of the chain above ``base`` into one layer would write, from
    block status: {'stream': (data bytes, zero bytes), 'commit': (...)}.  A stream
    onto base writes into top what the layers between leave visible (what top does
    not hold); a commit of top into base writes everything the layers above base hold."""
    with top.lock:
        # a stream onto the direct backing file copies nothing (QEMU: len 0)
        stream = [] if top.backing is base else work_extents(top, base, 0, top.virtual_size)
        commit = committed_extents(top, base, 0, top.virtual_size)
    return {"stream": _data_and_zero(stream), "commit": _data_and_zero(commit)}


def _data_and_zero(runs):
    zero = sum(run.length for run in runs if run.kind == ZERO)
    return sum(run.length for run in runs) - zero, zero
