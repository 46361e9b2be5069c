"""An in-memory dirty bitmap: which granules of a disk changed (QEMU's BdrvDirtyBitmap, reduced).

The disk is cut into granules of ``granularity`` bytes (a power of two); a granule
is dirty or clean.  ``set`` and ``clear`` take byte ranges: ``set`` dirties every
granule the range touches, ``clear`` cleans only the granules the range covers
wholly, so a partial clear never loses a change.  ``count`` is in bytes of whole
granules, the last one clipped to the disk size, as QEMU's
``bdrv_get_dirty_count``.  Internally the dirty granules are a sorted list of
disjoint, non-adjacent half-open index runs, so a mostly clean 1 TiB disk costs a
few list entries, and ``iter_dirty`` walks runs, never granules.

The bitmap is generic: the mirror job fills it from guest writes; persistent
bitmaps (qcow2 ``bitmaps`` extension) can be loaded into and saved from it.
Every method takes the bitmap's own lock, so writers and the copying job may
use it from different threads.
"""
import bisect
import threading
from typing import Iterator, List, Tuple

MIN_GRANULARITY = 512


class DirtyBitmap:
    """Dirty granules of a ``size``-byte disk."""

    def __init__(self, size: int, granularity: int = 65536):
        if granularity < MIN_GRANULARITY or granularity & (granularity - 1):
            raise ValueError("granularity must be a power of 2 and at least 512, got %r"
                             % (granularity,))
        if size < 0:
            raise ValueError("size must be non-negative, got %r" % (size,))
        self.size = size
        self.granularity = granularity
        self._shift = granularity.bit_length() - 1
        self._starts: List[int] = []     # run starts, granule indices, sorted
        self._ends: List[int] = []       # matching exclusive ends
        self._total = 0                  # dirty granules (sum of the runs' lengths)
        self._lock = threading.Lock()

    @property
    def granules(self) -> int:
        return -(-self.size >> self._shift) if self.size else 0

    # -- changes -----------------------------------------------------------------
    def set(self, offset: int, length: int) -> None:
        """Dirty every granule that [offset, offset+length) touches (clipped to the disk)."""
        first, end = self._touched(offset, length)
        if first >= end:
            return
        with self._lock:
            # Runs that overlap or touch [first, end) merge into one.
            lo = bisect.bisect_left(self._ends, first)
            hi = bisect.bisect_right(self._starts, end)
            if lo < hi:
                first = min(first, self._starts[lo])
                end = max(end, self._ends[hi - 1])
            self._total += (end - first) - self._sum(lo, hi)
            self._starts[lo:hi] = [first]
            self._ends[lo:hi] = [end]

    def clear(self, offset: int = 0, length: int = None) -> None:
        """Clean the granules wholly inside [offset, offset+length) (default: all)."""
        if length is None:
            length = self.size - offset
        first = -(-max(offset, 0) >> self._shift)
        stop = min(offset + length, self.size)
        end = stop >> self._shift if stop < self.size else self.granules
        if first >= end:
            return
        with self._lock:
            self._cut(first, end)

    def _cut(self, first: int, end: int) -> None:
        lo = bisect.bisect_right(self._ends, first)
        hi = bisect.bisect_left(self._starts, end)
        if lo >= hi:
            return
        self._total -= self._sum(lo, hi)
        keep_s, keep_e = [], []
        if self._starts[lo] < first:
            keep_s.append(self._starts[lo])
            keep_e.append(first)
        if self._ends[hi - 1] > end:
            keep_s.append(end)
            keep_e.append(self._ends[hi - 1])
        self._starts[lo:hi] = keep_s
        self._ends[lo:hi] = keep_e
        self._total += sum(e - s for s, e in zip(keep_s, keep_e))

    def _sum(self, lo: int, hi: int) -> int:
        return sum(self._ends[i] - self._starts[i] for i in range(lo, hi))

    # -- queries -----------------------------------------------------------------
    def count(self) -> int:
        """Dirty bytes: whole granules, the last granule of the disk clipped to its size."""
        with self._lock:
            total = self._total << self._shift
            if self._ends and self._ends[-1] == self.granules:
                total -= (self.granules << self._shift) - self.size
            return total

    def is_dirty(self, offset: int) -> bool:
        index = offset >> self._shift
        with self._lock:
            at = bisect.bisect_right(self._starts, index) - 1
            return at >= 0 and index < self._ends[at]

    def iter_dirty(self, offset: int = 0) -> Iterator[Tuple[int, int]]:
        """(offset, length) byte runs of dirty granules from ``offset`` on, clipped to
        the disk.  A snapshot: later changes do not affect a running iteration."""
        for s, e in self.runs(offset):
            yield s, e - s

    def runs(self, offset: int = 0, limit: int = None) -> List[Tuple[int, int]]:
        """Sorted (start, end) byte ranges of the dirty granules at or after ``offset``;
        with ``limit``, only the first runs that hold that many bytes."""
        index = max(offset, 0) >> self._shift
        out, held = [], 0
        with self._lock:
            at = max(bisect.bisect_right(self._starts, index) - 1, 0)
            for i in range(at, len(self._starts)):
                if self._ends[i] <= index:
                    continue
                start = max(self._starts[i], index) << self._shift
                end = min(self._ends[i] << self._shift, self.size)
                out.append((start, end))
                held += end - start
                if limit is not None and held >= limit:
                    break
        return out

    def take(self, offset: int, limit: int) -> List[Tuple[int, int]]:
        """Clean and return up to ``limit`` bytes of dirty runs from ``offset`` on
        (whole granules; at least one granule even if larger than ``limit``)."""
        taken, budget = [], max(limit, self.granularity)
        for start, end in self.runs(offset, budget):
            length = end - start
            if length > budget:     # cut at a granule boundary, keeping at least one
                length = max(budget >> self._shift << self._shift, self.granularity)
            taken.append((start, length))
            self.clear(start, length)
            budget -= length
            if budget <= 0:
                break
        return taken

    def __repr__(self):
        return "<DirtyBitmap %d granules of %d, %d dirty bytes>" % (
            self.granules, self.granularity, self.count())

    # -- helpers -----------------------------------------------------------------
    def _touched(self, offset: int, length: int) -> Tuple[int, int]:
        start = max(offset, 0)
        stop = min(offset + length, self.size)
        if length <= 0 or start >= stop:
            return 0, 0
        return start >> self._shift, -(-stop >> self._shift)
