"""Guest I/O on a device: the one path every guest request takes (qemu-io, NBD clients).

Writes, zero writes and discards go through ``images.guest_io.GuestView``, so a
backup's copy-before-write and the dirty bitmaps see NBD clients as they see qemu-io.

A ``BlockBackend`` is QEMU's BlockBackend reduced to what blockmon needs: it names
either a device (and then always reaches the device's *current* top, so after
``snapshot_blkdev`` the next request goes to the new overlay) or one fixed node.
Every request holds the device's ``io_lock`` for its whole duration: a top switch
waits for requests that picked the old top, and the stream, which checks and
copies under the top's lock, never overwrites what a guest wrote.  A planned read
(``plan_read``, NBD's) holds it while it walks the chain and reads what must be read
under it; the file ranges of read-only layers it leaves to the caller are safe
without it (see ``commands.read_plan``).  Each backend keeps an ``ExtentCache``.

``IoStats`` counts the requests as QEMU's block accounting does (``BlockDeviceStats``
of ``query-blockstats``): bytes, operations, total times, failed and invalid
requests, the highest write offset and the idle time.
"""
import threading
import time

from images.chain import block_status_above
from images.driver import DATA, UNALLOCATED
from images.errors import BlockError, ImageIOError
from images.guest_io import GuestView

from .read_plan import ExtentCache, ReadPlan, plan_read

READ, WRITE, FLUSH, UNMAP = "rd", "wr", "flush", "unmap"
_KINDS = (READ, WRITE, FLUSH, UNMAP)


class IoStats:
    """QEMU's BlockAcctStats: per-kind counters, updated under one lock."""

    def __init__(self, clock=time.monotonic_ns):
        self._clock = clock
        self._lock = threading.Lock()
        self._bytes = dict.fromkeys(_KINDS, 0)
        self._ops = dict.fromkeys(_KINDS, 0)
        self._failed = dict.fromkeys(_KINDS, 0)
        self._invalid = dict.fromkeys(_KINDS, 0)
        self._time_ns = dict.fromkeys(_KINDS, 0)
        self._wr_highest_offset = 0
        self._last_access_ns = None

    def now(self) -> int:
        return self._clock()

    def done(self, kind: str, nbytes: int, started_ns: int, end_offset: int = 0) -> None:
        now = self._clock()
        with self._lock:
            self._bytes[kind] += nbytes
            self._ops[kind] += 1
            self._time_ns[kind] += now - started_ns
            self._last_access_ns = now
            if kind == WRITE:
                self._wr_highest_offset = max(self._wr_highest_offset, end_offset)

    def failed(self, kind: str, started_ns: int) -> None:
        now = self._clock()
        with self._lock:
            self._failed[kind] += 1
            self._time_ns[kind] += now - started_ns
            self._last_access_ns = now

    def invalid(self, kind: str) -> None:
        with self._lock:
            self._invalid[kind] += 1
            self._last_access_ns = self._clock()

    def snapshot(self) -> dict:
        """QAPI BlockDeviceStats, the members QEMU 7.2 sends for a drive."""
        with self._lock:
            stats = {}
            for kind in (READ, WRITE, UNMAP):
                stats["%s_bytes" % kind] = self._bytes[kind]
            for kind in _KINDS:
                stats["%s_operations" % kind] = self._ops[kind]
            for kind in _KINDS:
                stats["%s_total_time_ns" % kind] = self._time_ns[kind]
            stats["wr_highest_offset"] = self._wr_highest_offset
            for kind in (READ, WRITE, UNMAP):
                stats["%s_merged" % kind] = 0      # we never merge requests
            if self._last_access_ns is not None:
                stats["idle_time_ns"] = self._clock() - self._last_access_ns
            for kind in _KINDS:
                stats["failed_%s_operations" % kind] = self._failed[kind]
            for kind in _KINDS:
                stats["invalid_%s_operations" % kind] = self._invalid[kind]
            stats.update({"account_invalid": True, "account_failed": True, "timed_stats": []})
            return stats


class BlockBackend:
    """Guest requests on ``device`` (following its top) or on a fixed ``image``."""

    def __init__(self, device=None, image=None, stats=None):
        assert (device is None) != (image is None)
        self.device = device
        self._image = image
        self._lock = device.io_lock if device is not None else threading.RLock()
        self.stats = stats if stats is not None else (device.stats if device is not None
                                                      else IoStats())
        self._extents = ExtentCache()     # for plan_read, under the lock

    @property
    def image(self):
        """The image requests reach now: the device's top, or the fixed node."""
        return self.device.top if self.device is not None else self._image

    @property
    def virtual_size(self) -> int:
        return self.image.virtual_size

    @property
    def read_only(self) -> bool:
        return self.image.read_only

    @property
    def node_name(self):
        return self.image.node_name

    # -- requests ---------------------------------------------------------------
    def _checked(self, kind, offset, length):
        if offset < 0 or length < 0 or offset + length > self.image.virtual_size:
            self.stats.invalid(kind)
            raise ImageIOError(errno=22, operation="write" if kind != READ else "read")

    def _run(self, kind, nbytes, end, call, *args):
        started = self.stats.now()
        try:
            result = call(*args)
        except BlockError:
            self.stats.failed(kind, started)
            raise
        self.stats.done(kind, nbytes, started, end)
        return result

    def read(self, offset: int, length: int) -> bytes:
        with self._lock:
            self._checked(READ, offset, length)
            return self._run(READ, length, 0, self.image.read, offset, length)

    def plan_read(self, offset: int, length: int) -> ReadPlan:
        """The range as a ``ReadPlan`` (holes, bytes, file ranges), from one walk of the
        chain under the lock; the caller sends it and then calls ``plan.close()``.
        The time counted is the walk's and the reads' under the lock (QEMU counts the
        block layer's time, not the network's)."""
        with self._lock:
            self._checked(READ, offset, length)
            return self._run(READ, length, 0, plan_read, self.image, offset, length,
                             self._extents)

    def write(self, offset: int, data, fua: bool = False) -> None:
        with self._lock:
            self._checked(WRITE, offset, len(data))
            guest = GuestView(self.image)     # copy-before-write hooks, dirty bitmaps
            self._run(WRITE, len(data), offset + len(data), guest.write, offset, data)
            if fua:
                self.flush()

    def write_zeroes(self, offset: int, length: int, fua: bool = False) -> None:
        with self._lock:
            self._checked(WRITE, offset, length)
            self._run(WRITE, length, offset + length, GuestView(self.image).write_zeroes,
                      offset, length)
            if fua:
                self.flush()

    def zeroes_are_fast(self, offset: int, length: int) -> bool:
        """Whether write_zeroes of this range only changes metadata (NBD's FAST_ZERO)."""
        image = self.image
        if image.format_name == "raw":
            return True      # a punched hole; the raw driver falls back only on odd file systems
        csize = image.cluster_size
        end = offset + length
        return offset % csize == 0 and (end % csize == 0 or end == image.virtual_size)

    def discard(self, offset: int, length: int) -> None:
        with self._lock:
            self._checked(UNMAP, offset, length)
            self._run(UNMAP, length, 0, GuestView(self.image).discard, offset, length)

    def flush(self) -> None:
        with self._lock:
            image = self.image
            if image.read_only:
                return
            self._run(FLUSH, 0, 0, image.flush)

    def block_status(self, offset: int, length: int):
        """This layer's own runs (qemu-io's map and alloc), not counted as I/O."""
        with self._lock:
            return self.image.block_status(offset, length)

    def status_above(self, offset: int, length: int):
        """Runs for the whole chain: kind and depth (0 = the top) of each range."""
        with self._lock:
            return block_status_above(self.image, None, offset, length)


def reads_as_zero(kind: str) -> bool:
    return kind != DATA


def allocation_depth(run) -> int:
    """qemu:allocation-depth's value: 0 where no layer allocates, else 1 for the top, ..."""
    return 0 if run.kind == UNALLOCATED else run.depth + 1
