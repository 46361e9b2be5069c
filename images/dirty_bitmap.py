"""Dirty bitmaps in memory: which granules of a disk were written since a point in time.

A ``DirtyBitmap`` (QEMU's BdrvDirtyBitmap) covers ``size`` guest bytes in granules of
``granularity`` bytes (a power of two, at least 512).  It is kept as a sorted list of
disjoint granule intervals, so its cost follows the number of dirty extents, not the
disk size: a 1 TiB disk with a few scattered writes is a few intervals.  It carries
QEMU's state flags: ``enabled`` (records guest writes), ``persistent`` (stored in the
qcow2 file at close), ``inconsistent`` (found IN_USE at open: its bits are unknown and
it can only be removed), ``readonly`` (on a read-only node) and ``busy`` (held by an
operation).  ``NodeBitmaps`` is the set of named bitmaps of one node, newest first, as
QEMU lists them.

The serialised form (``to_bytes``/``load_bytes``) is the qcow2 bitmap data layout of
docs/interop/qcow2.txt: bit j of byte i is granule 8*i + j.
"""
import threading
from bisect import bisect_left, bisect_right
from typing import Iterator, List, Optional, Tuple

from .errors import BlockError

MIN_GRANULARITY = 512
MAX_NAME_SIZE = 1023            # BDRV_BITMAP_MAX_NAME_SIZE
_BLOCK = 64                     # bytes decoded at once when loading
_ZERO_BLOCK = bytes(_BLOCK)
_ONES_BLOCK = b"\xff" * _BLOCK

# Which states a use of a bitmap refuses (QEMU's BDRV_BITMAP_* check flags).
BUSY, READONLY, INCONSISTENT = 1, 2, 4
CHECK_DEFAULT = BUSY | READONLY | INCONSISTENT
CHECK_ALLOW_RO = BUSY | INCONSISTENT


class BitmapError(BlockError):
    """A bitmap that does not exist, exists already, or cannot be used in its state."""


class DirtyBitmap:
    """One named (or anonymous) dirty bitmap over ``size`` bytes."""

    def __init__(self, name: Optional[str], size: int, granularity: int,
                 enabled: bool = True, persistent: bool = False):
        if granularity < MIN_GRANULARITY or granularity & (granularity - 1):
            raise ValueError("granularity %d is not a power of two >= 512" % granularity)
        self.name = name
        self.size = size
        self.granularity = granularity
        self.shift = granularity.bit_length() - 1
        self.enabled = enabled
        self.persistent = persistent
        self.inconsistent = False
        self.readonly = False
        self.busy = False
        # While an operation (a backup) holds the bitmap, guest writes go to this
        # anonymous bitmap instead (QEMU's successor); see NodeBitmaps.freeze.
        self.successor: Optional["DirtyBitmap"] = None
        self._lock = threading.Lock()
        self._starts: List[int] = []      # granule intervals [start, end), sorted, disjoint
        self._ends: List[int] = []
        self._granules = 0                # dirty granules, kept up to date

    # -- geometry -------------------------------------------------------------
    @property
    def granules(self) -> int:
        """Granules covering the disk (the last one may be partial)."""
        return -(-self.size >> self.shift) if self.size else 0

    def _span(self, offset: int, length: int) -> Tuple[int, int]:
        """The granules a byte range touches."""
        if length <= 0:
            return 0, 0
        return offset >> self.shift, min(self.granules, ((offset + length - 1) >> self.shift) + 1)

    # -- changes --------------------------------------------------------------
    def set_dirty(self, offset: int, length: int) -> None:
        """Mark every granule the byte range touches."""
        with self._lock:
            self._set_granules(*self._span(offset, length))

    def _set_granules(self, g0: int, g1: int) -> None:
        if g1 <= g0:
            return
        i = bisect_left(self._ends, g0)        # first interval ending at or after g0
        j = bisect_right(self._starts, g1)     # intervals starting at or before g1
        if i < j:
            g0, g1 = min(g0, self._starts[i]), max(g1, self._ends[j - 1])
            self._granules -= sum(e - s for s, e in zip(self._starts[i:j], self._ends[i:j]))
        self._starts[i:j], self._ends[i:j] = [g0], [g1]
        self._granules += g1 - g0

    def reset(self, offset: int, length: int) -> None:
        """Clear the granules the byte range covers whole (and a partial last granule
        when the range reaches the end of the disk), as QEMU's hbitmap_reset."""
        with self._lock:
            g0 = -(-offset >> self.shift)
            end = offset + length
            g1 = self.granules if end >= self.size else end >> self.shift
            self._reset_granules(g0, g1)

    def _reset_granules(self, g0: int, g1: int) -> None:
        if g1 <= g0:
            return
        i = bisect_right(self._ends, g0)
        j = bisect_left(self._starts, g1)
        if i >= j:
            return
        keep_s, keep_e = [], []
        if self._starts[i] < g0:
            keep_s.append(self._starts[i])
            keep_e.append(g0)
        if self._ends[j - 1] > g1:
            keep_s.append(g1)
            keep_e.append(self._ends[j - 1])
        self._granules -= sum(e - s for s, e in zip(self._starts[i:j], self._ends[i:j]))
        self._granules += sum(e - s for s, e in zip(keep_s, keep_e))
        self._starts[i:j], self._ends[i:j] = keep_s, keep_e

    def clear(self) -> None:
        with self._lock:
            self._starts, self._ends, self._granules = [], [], 0

    def merge_from(self, other: "DirtyBitmap") -> None:
        """Set every byte range that ``other`` has dirty (granularities may differ)."""
        for offset, length in other.extents():
            self.set_dirty(offset, length)

    # -- queries --------------------------------------------------------------
    def count(self) -> int:
        """Dirty bytes in whole granules (QEMU's count: a partial last granule counts whole)."""
        return self._granules << self.shift

    def extents(self, offset: int = 0, length: Optional[int] = None) -> List[Tuple[int, int]]:
        """Dirty ``(offset, length)`` byte ranges inside [offset, offset+length), clipped
        to the range and to the disk size."""
        end = self.size if length is None else min(self.size, offset + length)
        g0, g1 = self._span(offset, end - offset)
        out = []
        with self._lock:
            i = bisect_right(self._ends, g0)
            while i < len(self._starts) and self._starts[i] < g1:
                lo = max(offset, self._starts[i] << self.shift)
                hi = min(end, self._ends[i] << self.shift)
                if hi > lo:
                    out.append((lo, hi - lo))
                i += 1
        return out

    def next_extent(self, offset: int) -> Optional[Tuple[int, int]]:
        """The first dirty ``(offset, length)`` at or after ``offset`` (clipped to it and
        to the disk), or None: one bisection, whatever the number of extents."""
        with self._lock:
            i = bisect_right(self._ends, offset >> self.shift)
            if i == len(self._starts):
                return None
            lo = max(offset, self._starts[i] << self.shift)
            hi = min(self.size, self._ends[i] << self.shift)
        return (lo, hi - lo) if hi > lo else None

    def is_dirty(self, offset: int) -> bool:
        g = offset >> self.shift
        with self._lock:
            i = bisect_right(self._starts, g) - 1
            return i >= 0 and self._ends[i] > g

    def copy(self, name: Optional[str] = None) -> "DirtyBitmap":
        twin = DirtyBitmap(name, self.size, self.granularity, self.enabled, False)
        with self._lock:
            twin._starts, twin._ends = list(self._starts), list(self._ends)
            twin._granules = self._granules
        return twin

    # -- serialisation (qcow2 bitmap data) -------------------------------------------
    def to_bytes(self, first: int, count: int) -> bytes:
        """Granules [first, first+count) as bitmap data, ``count`` a multiple of 8."""
        out = bytearray(count // 8)
        with self._lock:
            i = bisect_right(self._ends, first)
            while i < len(self._starts) and self._starts[i] < first + count:
                _set_bits(out, max(self._starts[i], first) - first,
                          min(self._ends[i], first + count) - first)
                i += 1
        return bytes(out)

    def load_bytes(self, data: bytes, first: int) -> None:
        """Set the granules that bitmap ``data`` (starting at granule ``first``) marks."""
        view, limit = memoryview(data), self.granules
        with self._lock:
            for pos in range(0, len(data), _BLOCK):
                block = view[pos:pos + _BLOCK]
                if block == _ZERO_BLOCK[:len(block)]:
                    continue
                base = first + pos * 8
                if block == _ONES_BLOCK[:len(block)]:
                    self._set_granules(base, min(limit, base + len(block) * 8))
                    continue
                for lo, hi in _runs(int.from_bytes(block, "little")):
                    self._set_granules(base + lo, min(limit, base + hi))

    # -- presentation -----------------------------------------------------------
    def check(self, refused: int) -> None:
        """QEMU's bdrv_dirty_bitmap_check: refuse a use the bitmap's state forbids."""
        if refused & BUSY and self.busy:
            raise BitmapError("Bitmap '%s' is currently in use by another operation and "
                              "cannot be used" % self.name)
        if refused & READONLY and self.readonly:
            raise BitmapError("Bitmap '%s' is readonly and cannot be modified" % self.name)
        if refused & INCONSISTENT and self.inconsistent:
            raise BitmapError("Bitmap '%s' is inconsistent and cannot be used" % self.name)

    def info(self) -> dict:
        """QEMU 7.2's BlockDirtyInfo."""
        recording = self.enabled or (self.successor is not None and self.successor.enabled)
        info = {"name": self.name, "recording": recording, "persistent": self.persistent,
                "busy": self.busy, "granularity": self.granularity, "count": self.count()}
        if self.inconsistent:
            info["inconsistent"] = True
        return info


def _set_bits(buf: bytearray, lo: int, hi: int) -> None:
    """Set bits [lo, hi) of ``buf`` (bit j of byte i is bit 8*i + j)."""
    while lo < hi and lo & 7:
        buf[lo >> 3] |= 1 << (lo & 7)
        lo += 1
    full_end = hi & ~7
    if full_end > lo:
        buf[lo >> 3:full_end >> 3] = b"\xff" * ((full_end - lo) >> 3)
        lo = full_end
    while lo < hi:
        buf[lo >> 3] |= 1 << (lo & 7)
        lo += 1


def _runs(value: int) -> Iterator[Tuple[int, int]]:
    """The runs of set bits of ``value`` as [lo, hi) bit positions."""
    shift = 0
    while value:
        low = (value & -value).bit_length() - 1
        value >>= low
        shift += low
        ones = (~value & (value + 1)).bit_length() - 1
        yield shift, shift + ones
        value >>= ones
        shift += ones


class NodeBitmaps:
    """The named dirty bitmaps of one node, newest first (QEMU's bs->dirty_bitmaps)."""

    def __init__(self):
        self._lock = threading.Lock()
        self._bitmaps: List[DirtyBitmap] = []

    def __iter__(self):
        with self._lock:
            return iter(list(self._bitmaps))

    def __len__(self):
        return len(self._bitmaps)

    def find(self, name: str) -> Optional[DirtyBitmap]:
        with self._lock:
            return next((b for b in self._bitmaps if b.name == name), None)

    def get(self, name: str) -> DirtyBitmap:
        bitmap = self.find(name)
        if bitmap is None:
            raise BitmapError("Dirty bitmap '%s' not found" % name)
        return bitmap

    def create(self, name: str, size: int, granularity: int, enabled: bool = True,
               persistent: bool = False) -> DirtyBitmap:
        """bdrv_create_dirty_bitmap: a new empty bitmap, listed first."""
        with self._lock:
            if any(b.name == name for b in self._bitmaps):
                raise BitmapError("Bitmap already exists: %s" % name)
            if len(name.encode("utf-8")) > MAX_NAME_SIZE:
                raise BitmapError("Bitmap name too long: %s" % name)
            bitmap = DirtyBitmap(name, size, granularity, enabled, persistent)
            self._bitmaps.insert(0, bitmap)
            return bitmap

    def adopt(self, bitmap: DirtyBitmap) -> None:
        """List a bitmap built elsewhere (loaded from the image file), newest first."""
        with self._lock:
            self._bitmaps.insert(0, bitmap)

    def release(self, bitmap: DirtyBitmap) -> None:
        with self._lock:
            self._bitmaps = [b for b in self._bitmaps if b is not bitmap]

    def mark(self, offset: int, length: int) -> None:
        """A guest write: every recording bitmap (or its successor) gets the range.
        Under the list's lock, so that no write falls between a bitmap and its
        successor while an operation takes or gives back the bitmap."""
        with self._lock:
            for bitmap in self._bitmaps:
                target = bitmap.successor or bitmap
                if target.enabled:
                    target.set_dirty(offset, length)

    # -- an operation holding a bitmap (QEMU's successor, abdicate, reclaim) ------------
    def freeze(self, bitmap: DirtyBitmap) -> None:
        """bdrv_dirty_bitmap_create_successor: the bitmap is busy and stops changing;
        new guest writes go to an anonymous successor."""
        with self._lock:
            bitmap.check(BUSY)
            bitmap.successor = DirtyBitmap(None, bitmap.size, bitmap.granularity,
                                           bitmap.enabled)
            bitmap.enabled = False
            bitmap.busy = True

    def abdicate(self, bitmap: DirtyBitmap) -> None:
        """The operation succeeded: the bitmap holds only what was written since it
        started (the successor takes its name, so it is listed first, as in QEMU)."""
        with self._lock:
            successor = self._thaw(bitmap)
            bitmap.clear()
            bitmap.merge_from(successor)
            self._bitmaps = [bitmap] + [b for b in self._bitmaps if b is not bitmap]

    def reclaim(self, bitmap: DirtyBitmap, also: Optional[DirtyBitmap] = None) -> None:
        """The operation failed: the bitmap keeps its bits, gains the successor's (and
        ``also``'s, for bitmap-mode=always: what was left to copy)."""
        with self._lock:
            successor = self._thaw(bitmap)
            if also is not None:
                bitmap.clear()
                bitmap.merge_from(also)
            bitmap.merge_from(successor)

    def _thaw(self, bitmap: DirtyBitmap) -> DirtyBitmap:
        successor = bitmap.successor
        bitmap.successor, bitmap.busy, bitmap.enabled = None, False, successor.enabled
        return successor
