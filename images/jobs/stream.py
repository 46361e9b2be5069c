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
import time

from ..chain import chain_of
from ..driver import UNALLOCATED, ZERO
from ..errors import BlockError, ImageIOError
from ..locking import JOB_WRITER
from .blockjob import BlockJob
from .copy_plan import Writeback, clipped, fast_path_top, next_window, plan_batch, work_extents

STREAM_CHUNK = 512 * 1024          # QEMU's chunk: the step while a speed is set
STREAM_BATCH = 4 * 1024 * 1024     # the step at full speed: one lock hold each (guest p99)


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


class StreamJob(BlockJob):
    job_type = "stream"
    # QEMU's stream_run passes is_read=true: the failed request is the copy-on-read
    # prefetch, even when it was the write into the top that failed.
    error_operation = "read"

    def __init__(self, job_id, events, top, base, *, backing_file=None,
                 on_finished=None, chunk_size=STREAM_CHUNK, batch_size=STREAM_BATCH,
                 **job_options):
        super().__init__(job_id, events, **job_options)
        self.top = top
        self.base = base
        self.chunk_size = chunk_size
        self.batch_size = max(batch_size, chunk_size)
        self._writeback = Writeback()
        self.new_backing_name = backing_reference_for(top, base, backing_file)
        self.new_backing_format = base.format_name if base is not None else None
        self._on_finished = on_finished
        self._was_read_only = top.read_only
        self._attempted = (0, 0)    # the range the current step works on
        # QEMU: streaming onto the direct backing file (or without one) copies
        # nothing and reports len 0; otherwise len is known before block-stream
        # returns, so 'info block-jobs' typed at once never shows "of 0 bytes".
        # The top's backing cannot change meanwhile: the job holds the top busy.
        self.nothing_to_stream = top.backing is base
        if not self.nothing_to_stream:
            self.set_len(top.virtual_size)

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
    def run(self):
        top = self.top
        if self.nothing_to_stream:
            return
        length = self.len
        offset, window, narrow_end = 0, self.batch_size, 0
        while offset < length:
            if not self.checkpoint():
                return
            # Small steps keep a rate limit accurate and pin a failure down to QEMU's
            # chunk; big ones amortise the planning.
            narrow = offset < narrow_end
            step = self.chunk_size if self.speed or narrow else self.batch_size
            window = step if narrow else max(window, step)
            started = time.monotonic()
            try:
                advance, copied = self._stream_chunk(offset, min(window, length - offset), step)
            except ImageIOError as err:   # corrupt metadata too: EIO, as in QEMU
                start, end = self._attempted
                if end - start > self.chunk_size:
                    narrow_end = end      # redo a failed batch in QEMU's chunks first
                    continue
                advance = self._apply_policy(err, offset, end)
                if advance is None:
                    continue
                copied = 0
            window = next_window(window, step, advance, time.monotonic() - started)
            self.account_copied(copied)
            self.progress(advance)
            offset += advance
        self._early_flush()

    def _apply_policy(self, err, offset, end):
        """on-error for the chunk [.., end) that failed: None to retry it (stop, then
        resumed), the bytes to skip (ignore), or the error raised again (report)."""
        action = self.error_action(err)
        if action == "retry":
            return None
        if action != "ignore":
            raise err
        # Skip the chunk; it is never empty, so the job moves on where QEMU 7.2's
        # stream_run loops on the same offset for ever.
        return end - offset

    def _stream_chunk(self, offset, window, step):
        """Find the first range in [offset, offset+window) that needs copying and copy
        at most ``step`` bytes from there; returns (bytes advanced, bytes copied).

        Planned once under the top's lock: the ranges the top leaves unallocated,
        the extents below them, whole clusters of plain data copied in the kernel
        (copy_plan, then the top's copy_batch), the rest (edges, compressed, zeros)
        through the write path.
        """
        top = self.top
        written = (0, 0)
        with top.lock:
            self._attempted = (offset, offset + min(window, step))
            extents = self._plan(offset, window, step)
            if not extents:
                return window, 0
            start = max(offset, extents[0].offset // top.cluster_size * top.cluster_size)
            end = min(offset + window, start + step)
            self._attempted = (start, end)
            extents = clipped(extents, start, end)
            layers = chain_of(top)
            rest, copied = extents, 0
            if fast_path_top(top):
                fast, rest = plan_batch(extents, layers, top.cluster_size)
                written = top.copy_batch(fast)
                copied = written[1]
            for below in rest:
                copied += self._copy_run(layers, below)
            fd = top.data_fd() if written[1] else -1
        self._writeback.start(fd, *written)   # outside the lock: guest I/O goes on
        return end - offset, copied

    def _plan(self, offset, window, step):
        """work_extents over the window; when the look-ahead past this step meets metadata
        that cannot be read, plan this step alone, so that the error (if it is in this
        step) is reported for the range the job is really copying now."""
        try:
            return work_extents(self.top, self.base, offset, window)
        except ImageIOError:
            if window <= step:
                raise
        return work_extents(self.top, self.base, offset, step)

    def _early_flush(self):
        """fsync the top without its lock, so that the locked flush in prepare (which
        makes the completion durable) has little left and guest writes wait less."""
        if fast_path_top(self.top):
            try:
                os.fsync(self.top.data_fd())
            except OSError:
                pass    # prepare's flush reports the error

    def _copy_run(self, layers, run):
        if run.kind == UNALLOCATED:
            return 0
        if run.kind == ZERO:
            self.top.write_zeroes(run.offset, run.length)
            return run.length
        # DATA: read it from the layer that holds it (depth counts from top.backing)
        source = layers[1 + run.depth]
        self.top.write(run.offset, source.read(run.offset, run.length))
        return run.length

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
