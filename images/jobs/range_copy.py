"""The front-to-back copy loop that stream and intermediate commit share.

Both jobs walk the disk once in chunks (QEMU's stream_run and commit_run have the
same shape): at each checkpoint (rate limit, pause, cancel) one planning pass looks
at a window of the disk, finds the first range that needs copying and copies at
most one step from there; the on-error policy applies to a failed step.  ``len``
is the virtual size and ``offset`` covers every byte, as QEMU counts both.  A kind
says what one step copies (``copy_window``) and what happens before the first and
after the last step (``before_copy``, ``after_copy``).
"""
import time

from ..errors import ImageIOError
from .blockjob import BlockJob
from .copy_plan import Writeback, next_window

COPY_CHUNK = 512 * 1024          # QEMU's chunk: the step while a speed is set
COPY_BATCH = 4 * 1024 * 1024     # the step at full speed: one lock hold each (guest p99)


class RangeCopyJob(BlockJob):
    """A block job that copies ranges of one disk, front to back, once."""

    def __init__(self, job_id, events, *, chunk_size=COPY_CHUNK, batch_size=COPY_BATCH,
                 **job_options):
        super().__init__(job_id, events, **job_options)
        self.chunk_size = chunk_size
        self.batch_size = max(batch_size, chunk_size)
        self.writeback = Writeback()
        self.attempted = (0, 0)     # the range the current step works on

    @property
    def nothing_to_copy(self) -> bool:
        """True when the job has nothing to do (its len is 0)."""
        return False

    def run(self):
        if self.nothing_to_copy:
            return
        self.before_copy()
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
                advance, copied = self.copy_window(offset, min(window, length - offset), step)
            except ImageIOError as err:   # corrupt metadata too: EIO, as in QEMU
                start, end = self.attempted
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
        self.after_copy()

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

    def plan(self, planner, offset, window, step):
        """``planner(offset, length)`` over the window; when the look-ahead past this step
        meets metadata that cannot be read, plan this step alone, so that the error (if
        it is in this step) is reported for the range the job is really copying now."""
        self.attempted = (offset, offset + min(window, step))
        try:
            return planner(offset, window)
        except ImageIOError:
            if window <= step:
                raise
        return planner(offset, step)

    # -- what a kind supplies -------------------------------------------------------
    def before_copy(self):
        """In the job thread, before the first step."""

    def after_copy(self):
        """In the job thread, after the last step (not after a cancel)."""

    def copy_window(self, offset, window, step):
        """Copy at most ``step`` bytes from the first range of [offset, offset+window)
        that needs copying; returns (bytes advanced, bytes copied).  Sets ``attempted``
        to the range it works on (``plan`` does, first), for the error path."""
        raise NotImplementedError
