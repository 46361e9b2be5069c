"""The stream block job: copy a backing chain's data into the image above it.

QEMU's block/stream.c, done with our own block layer.  For every chunk of the top
image that the top does not allocate, the ranges that some layer between the top
and ``base`` (exclusive) allocates are copied into the top: data as data, zero
ranges as zero clusters.  The check and the copy happen under the top's lock, so
a guest write that lands first is never overwritten, and a guest read always
sees the current content (both the chain and the copy read the same bytes).

On success the top is flushed *before* its header stops naming the old backing
file (the data must be durable first), then the backing reference is rewritten to
``base`` (or dropped) and flushed again.  On cancel or error nothing but the copied
clusters changes; they equal what the chain returned, so the image stays right.
While it runs the job holds QEMU's lock bytes of a stream on the top (images/locking.py)
and gives them back when it ends.
"""
import os

from ..chain import chain_of
from ..errors import BlockError
from ..locking import JOB_WRITER
from .copy_plan import clipped, copy_extents, fast_path_top, work_extents
from .range_copy import COPY_BATCH, COPY_CHUNK, RangeCopyJob

STREAM_CHUNK = COPY_CHUNK
STREAM_BATCH = COPY_BATCH


def backing_reference_for(top, base, explicit=None):
    """The string to store as the top's new backing name.

    ``explicit`` (QMP ``backing-file``) wins.  Otherwise keep the style the chain
    used: if the top named its backing file relatively, name the base relatively
    to the top's directory (QEMU writes an absolute path here; users dislike it).
    """
    if explicit is not None:
        return explicit
    if base is None:
        return None
    old = top.backing_name or ""
    if old and not os.path.isabs(old):
        return os.path.relpath(base.path, os.path.dirname(top.path))
    return base.path


class StreamJob(RangeCopyJob):
    job_type = "stream"
    # QEMU's stream_run passes is_read=true: the failed request is the copy-on-read
    # prefetch, even when it was the write into the top that failed.
    error_operation = "read"

    def __init__(self, job_id, events, top, base, *, backing_file=None,
                 on_finished=None, **job_options):
        super().__init__(job_id, events, **job_options)
        self.top = top
        self.base = base
        self.new_backing_name = backing_reference_for(top, base, backing_file)
        self.new_backing_format = base.format_name if base is not None else None
        self._on_finished = on_finished
        self._was_read_only = top.read_only
        # QEMU: streaming onto the direct backing file (or without one) copies
        # nothing and reports len 0; otherwise len is known before block-stream
        # returns, so 'info block-jobs' typed at once never shows "of 0 bytes".
        # The top's backing cannot change meanwhile: the job holds the top busy.
        self.nothing_to_stream = top.backing is base
        if not self.nothing_to_stream:
            self.set_len(top.virtual_size)

    @property
    def nothing_to_copy(self) -> bool:
        return self.nothing_to_stream

    # -- rights on the top ---------------------------------------------------
    def start(self):
        """QEMU's stream_start reopens the top read-write and takes the job's rights
        (a backing file whose header the job rewrites included) before block-stream
        returns: a conflict with another process refuses the command and no job is
        left.  clean() gives them back."""
        with self._lock:
            self.create()
        try:
            self._take_rights()
        except BlockError:
            with self._lock:
                self._transition("null")
            if self._on_finished is not None:
                self._on_finished(self)
            raise
        super().start()

    def _take_rights(self):
        top = self.top
        if self._was_read_only:
            top.set_read_only(False)
        try:
            top.claim_permissions(self, JOB_WRITER)
        except BaseException:
            if self._was_read_only:
                top.set_read_only(True)
            raise

    # -- the body ------------------------------------------------------------

    def copy_window(self, offset, window, step):
        """Find the first range in [offset, offset+window) that needs copying and copy
        at most ``step`` bytes from there; returns (bytes advanced, bytes copied).

        Planned once under the top's lock: the ranges the top leaves unallocated,
        the extents below them, whole clusters of plain data copied in the kernel
        (copy_plan, then the top's copy_batch), the rest (edges, compressed, zeros)
        through the write path.
        """
        top = self.top
        with top.lock:
            extents = self.plan(lambda at, n: work_extents(top, self.base, at, n),
                                offset, window, step)
            if not extents:
                return window, 0
            start = max(offset, extents[0].offset // top.cluster_size * top.cluster_size)
            end = min(offset + window, start + step)
            self.attempted = (start, end)
            copied, written = copy_extents(top, chain_of(top), clipped(extents, start, end))
            fd = top.data_fd() if written else -1
        self.writeback.start_all(fd, written)   # outside the lock: guest I/O goes on
        return end - offset, copied

    def after_copy(self):
        """fsync the top without its lock, so that the locked flush in prepare (which
        makes the completion durable) has little left and guest writes wait less."""
        if fast_path_top(self.top):
            try:
                os.fsync(self.top.data_fd())
            except OSError:
                pass    # prepare's flush reports the error

    # -- completion ----------------------------------------------------------
    def prepare(self):
        if self.nothing_to_stream:
            return
        top = self.top
        with top.lock:
            top.flush()  # the copied data must be durable before the backing file goes
            top.set_backing_reference(self.new_backing_name, self.new_backing_format)
            top.flush()
            top.backing = self.base

    def clean(self):
        self.top.release_permissions(self)
        if self._was_read_only and not self.top.read_only:
            self.top.set_read_only(True)
        if self._on_finished is not None:
            self._on_finished(self)
