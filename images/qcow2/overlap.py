"""Metadata-overlap protection for qcow2 writes (QEMU: qcow2_check_metadata_overlap,
the "cached" checks of block/qcow2-refcount.c).

A malformed image may have an L2 entry (a data cluster) or an L1 entry (an L2 table)
that points into metadata: the header cluster, the active L1 table, the refcount
table, a refcount block or an L2 table.  Writing there would corrupt the image
further, so every write of guest data to an existing host cluster and every update
of an L2 table found through L1 asks ``MetadataIndex.check`` first; on overlap it
raises ``ImageError`` and nothing has been written.

The index holds the L2 table offsets (from L1) and the refcount block offsets (from
the refcount table) as sorted lists: both are bounded by table sizes that open has
already validated, never by the virtual size.  It is built on the first check (a
read-only open pays nothing); a check costs two bisections.
"""
from bisect import bisect_right, insort

from .format import L1E_OFFSET_MASK, REFT_OFFSET_MASK, image_error

HEADER = "the header cluster"
L1_TABLE = "the L1 table"
REFCOUNT_TABLE = "the refcount table"
REFCOUNT_BLOCK = "a refcount block"
L2_TABLE = "an L2 table"


class MetadataIndex:
    """Where one image's live metadata lies, and the pre-write overlap check."""

    def __init__(self, path: str, address_map, refcounts):
        self.path = path
        self.map, self.refcounts = address_map, refcounts
        self.cluster_size = address_map.cluster_size
        self._l2 = None            # sorted L2 table offsets, built on first use
        self._blocks = None        # sorted refcount block offsets
        self._refcount_state = None    # (table offset, generation) the blocks match

    # -- upkeep ------------------------------------------------------------
    def refresh(self) -> None:
        """Bring the index up to date (built on first use; refcount blocks rebuilt after
        the refcount table changed) and keep the allocator past all of it."""
        if self._l2 is None:
            self._l2 = sorted({e & L1E_OFFSET_MASK for e in self.map.l1 if e & L1E_OFFSET_MASK})
        state = (self.refcounts.table_offset, self.refcounts.generation)
        if state != self._refcount_state:
            self._blocks = sorted({e & REFT_OFFSET_MASK for e in self.refcounts.table
                                   if e & REFT_OFFSET_MASK})
            self._refcount_state = state
            self._reserve_past_metadata()

    def _reserve_past_metadata(self) -> None:
        """New clusters come from the allocator's end; a malformed table may place an L2
        table or refcount block past the end of the file, so start allocating after it."""
        last = max(self._l2[-1] if self._l2 else 0, self._blocks[-1] if self._blocks else 0)
        if last:
            first_free = (last >> self.map.cluster_bits) + 1
            self.refcounts.free_index = max(self.refcounts.free_index, first_free)

    def added_l2(self, offset: int) -> None:
        """A new L2 table was linked into L1."""
        if self._l2 is not None:
            insort(self._l2, offset)

    # -- the check ---------------------------------------------------------
    def check(self, host: int, length: int, guest: int, l2_update: bool = False) -> None:
        """Refuse a write of ``length`` bytes at ``host`` (for guest offset ``guest``)
        that would touch metadata.  ``l2_update``: the write is that L2 table itself."""
        hit = self.overlap(host, length, l2_update)
        if hit is None:
            return
        what, where = hit
        action = "L2 table update for guest offset" if l2_update else "write at guest offset"
        raise image_error(self.path, "%s %d would overwrite %s (host offset %#x); refusing "
                          "(image is corrupt)" % (action, guest, what, where), where)

    def overlap(self, host: int, length: int, l2_update: bool = False):
        """``(name, host offset)`` of the first metadata the range touches, or None.
        As QEMU, the range is widened to whole clusters."""
        if length <= 0:
            return None
        self.refresh()
        csize = self.cluster_size
        if host < csize:
            return HEADER, 0
        lo = host & ~(csize - 1)
        hi = -(-(host + length) // csize) * csize
        fixed = ((L1_TABLE, self.map.l1_offset, len(self.map.l1) * 8),
                 (REFCOUNT_TABLE, self.refcounts.table_offset,
                  self.refcounts.table_clusters * csize))
        for name, start, size in fixed:
            if size and start < hi and lo < start + size:
                return name, start
        for name, offsets in ((REFCOUNT_BLOCK, self._blocks),
                              (None if l2_update else L2_TABLE, self._l2)):
            if name is None:
                continue
            i = bisect_right(offsets, lo - csize)    # first table ending after ``lo``
            if i < len(offsets) and offsets[i] < hi:
                return name, offsets[i]
        return None
