"""qcow2 reference counts: the refcount table, a bounded cache of refcount blocks,
the host cluster allocator and growth of the table.

Durability rules (docs/interop/qcow2.txt gives the layout; the order is ours):
caches are write-through, a new refcount block is written before the table entry
that points at it, and a grown table is written (with its new blocks) before the
header is pointed at it.  A process killed at any instant leaves at worst clusters
with a refcount but no user (leaks), never a user without a refcount.
"""
import struct
import sys
from array import array
from collections import OrderedDict

from .format import (REFCOUNT_TABLE_FIELDS, REFCOUNT_TABLE_FIELDS_OFFSET,
                           REFT_OFFSET_MASK, QCOW_MAX_REFTABLE_SIZE, image_error)

BLOCK_CACHE_SIZE = 32
_WIDE_FORMATS = {8: "B", 16: "H", 32: "I", 64: "Q"}


def be_array(raw: bytes) -> array:
    """A big-endian u64 table as a native array (8 bytes an entry, no Python ints)."""
    table = array("Q")
    table.frombytes(raw)
    if sys.byteorder != "big":
        table.byteswap()
    return table


def be_bytes(table: array) -> bytes:
    """The inverse of ``be_array``: the table as big-endian bytes."""
    if sys.byteorder == "big":
        return table.tobytes()
    swapped = array("Q", table)
    swapped.byteswap()
    return swapped.tobytes()


class RefcountBlockCodec:
    """Get and set entries of ``refcount_bits`` width inside one block (spec: refcount
    blocks; sub-byte widths pack the lowest entry into the lowest bits, as QEMU)."""

    def __init__(self, refcount_bits: int):
        self.bits = refcount_bits
        self.max_value = (1 << refcount_bits) - 1
        self.fmt = _WIDE_FORMATS.get(refcount_bits)

    def get_range(self, block, start: int, count: int) -> list:
        if self.fmt:
            return list(struct.unpack_from(">%d%s" % (count, self.fmt), block,
                                           start * self.bits // 8))
        return [self._get_small(block, i) for i in range(start, start + count)]

    def set_range(self, block, start: int, values: list) -> None:
        if self.fmt:
            struct.pack_into(">%d%s" % (len(values), self.fmt), block,
                             start * self.bits // 8, *values)
            return
        for i, value in enumerate(values, start):
            per_byte = 8 // self.bits
            shift = (i % per_byte) * self.bits
            byte = block[i // per_byte] & ~(self.max_value << shift)
            block[i // per_byte] = byte | (value << shift)

    def _get_small(self, block, i: int) -> int:
        per_byte = 8 // self.bits
        return (block[i // per_byte] >> ((i % per_byte) * self.bits)) & self.max_value

    def free_mask(self, block) -> bytes:
        """One byte per entry, zero exactly where the entry is zero (C-speed ops only)."""
        raw = bytes(block)
        if self.bits >= 8:
            width = self.bits // 8
            lanes = 0
            for lane in range(width):
                lanes |= int.from_bytes(raw[lane::width], "big")
            return lanes.to_bytes(len(raw) // width, "big")
        per_byte = 8 // self.bits
        mask = bytearray(len(raw) * per_byte)
        for k in range(per_byte):
            table = bytes(((b >> (k * self.bits)) & self.max_value) for b in range(256))
            mask[k::per_byte] = raw.translate(table)
        return bytes(mask)

    def byte_span(self, start: int, count: int):
        first = start * self.bits // 8
        last = -(-(start + count) * self.bits // 8)
        return first, last


class RefcountManager:
    """Refcounts of host clusters and the allocator that hands out new ones at the end."""

    def __init__(self, io, path: str, cluster_bits: int, refcount_order: int,
                 table_offset: int, table_clusters: int, file_size: int, reserved_end: int):
        self.io, self.path = io, path
        self.cluster_bits = cluster_bits
        self.cluster_size = 1 << cluster_bits
        self.codec = RefcountBlockCodec(1 << refcount_order)
        self.entries_per_block = self.cluster_size * 8 // self.codec.bits
        self.table_offset = table_offset
        self.table_clusters = table_clusters
        self.table = be_array(io.pread(table_clusters * self.cluster_size, table_offset)
                              .ljust(table_clusters * self.cluster_size, b"\0"))
        self.blocks = OrderedDict()      # block offset -> bytearray, LRU
        self.generation = 0              # bumped whenever the table's block list changes
        end = max(file_size, reserved_end)
        self.free_index = -(-end // self.cluster_size)

    # -- lookups -----------------------------------------------------------
    def _block(self, block_index: int):
        """The cached block (bytearray) or None when the table has no block there."""
        if block_index >= len(self.table):
            return None
        offset = self.table[block_index] & REFT_OFFSET_MASK
        if offset == 0:
            return None
        block = self.blocks.get(offset)
        if block is None:
            if offset % self.cluster_size:
                raise image_error(self.path, "refcount block offset %#x not aligned" % offset,
                                  offset)
            block = bytearray(self.io.pread(self.cluster_size, offset)
                              .ljust(self.cluster_size, b"\0"))
            self.blocks[offset] = block
            if len(self.blocks) > BLOCK_CACHE_SIZE:
                self.blocks.popitem(last=False)
        else:
            self.blocks.move_to_end(offset)
        return block

    def get(self, cluster: int) -> int:
        block = self._block(cluster // self.entries_per_block)
        if block is None:
            return 0
        return self.codec.get_range(block, cluster % self.entries_per_block, 1)[0]

    def first_used(self, start: int, count: int) -> int:
        """The first cluster in [start, start+count) with a nonzero refcount, or -1."""
        pos, end = start, start + count
        while pos < end:
            index, first = divmod(pos, self.entries_per_block)
            n = min(end - pos, self.entries_per_block - first)
            block = self._block(index)
            if block is not None:
                for i, value in enumerate(self.codec.get_range(block, first, n)):
                    if value:
                        return pos + i
            pos += n
        return -1

    # -- allocation --------------------------------------------------------
    def reserve(self, count: int) -> int:
        """Host offset of ``count`` contiguous free clusters at the end (refcounts
        still 0: the caller writes its data first, then calls ``update``)."""
        start = self.free_index
        if self.first_used(start, count) >= 0:     # rare: refcounts past the end of the file
            start = self._free_run(start, count)
        self.free_index = start + count
        return start << self.cluster_bits

    def _free_run(self, start: int, count: int) -> int:
        """The first cluster >= ``start`` beginning ``count`` free clusters.  Each
        refcount block is searched as a byte mask with a few C-speed calls, so a
        table whose blocks claim every cluster costs per block, not per cluster."""
        per_block = self.entries_per_block
        run_start, run = start, 0
        pos = start
        masks = {}       # one mask per block offset: a bad table may repeat a block
        while True:
            index, first = divmod(pos, per_block)
            mask = self._free_mask(index, masks)
            if run:      # a run from the previous block: extend it by this one's head
                head = per_block - len(mask.lstrip(b"\0"))
                if run + head >= count:
                    return run_start
                if head == per_block:
                    run, pos = run + head, pos + per_block
                    continue
                run, pos, first = 0, index * per_block + head, head
            if count <= per_block - first:
                found = mask.find(bytes(count), first)
                if found >= 0:
                    return index * per_block + found
            tail = max(first, len(mask.rstrip(b"\0")))
            if tail < per_block:
                run_start, run = index * per_block + tail, per_block - tail
            pos = (index + 1) * per_block

    def _free_mask(self, index: int, masks: dict) -> bytes:
        """One byte per entry of block ``index``: zero where the refcount is zero."""
        block = self._block(index)
        if block is None:
            return bytes(self.entries_per_block)
        key = self.table[index] & REFT_OFFSET_MASK
        if key not in masks:
            masks[key] = self.codec.free_mask(block)
        return masks[key]

    def update(self, host_offset: int, length: int, delta: int) -> None:
        """Add ``delta`` to the refcount of every cluster touched by the byte range."""
        if length <= 0:
            return
        pos = host_offset >> self.cluster_bits
        end = (host_offset + length - 1 >> self.cluster_bits) + 1
        while pos < end:
            index, first = divmod(pos, self.entries_per_block)
            n = min(end - pos, self.entries_per_block - first)
            self._update_in_block(index, first, n, delta)
            pos += n

    def _update_in_block(self, index: int, first: int, count: int, delta: int) -> None:
        block = self._block(index)
        if block is None and delta < 0:
            raise image_error(self.path, "refcount of cluster %d would become negative"
                              % (index * self.entries_per_block + first), index)
        if block is None:
            self._new_block(index)
            block = self._block(index)
        values = self.codec.get_range(block, first, count)
        new = [v + delta for v in values]
        if min(new) < 0 or max(new) > self.codec.max_value:
            raise image_error(self.path, "refcount of cluster %d would become %d"
                              % (index * self.entries_per_block + first, min(new) if min(new) < 0
                                 else max(new)), index)
        self.codec.set_range(block, first, new)
        lo, hi = self.codec.byte_span(first, count)
        offset = self.table[index] & REFT_OFFSET_MASK
        self.io.pwrite(bytes(block[lo:hi]), offset + lo)

    def _new_block(self, index: int) -> None:
        """Create the refcount block ``index``: written first, then its table entry."""
        if index >= len(self.table):
            self._grow_table(index)
            return
        offset = self.reserve(1)
        cluster = offset >> self.cluster_bits
        block = bytearray(self.cluster_size)
        self_counted = cluster // self.entries_per_block == index
        if self_counted:
            self.codec.set_range(block, cluster % self.entries_per_block, [1])
        self.io.pwrite(bytes(block), offset)
        self.table[index] = offset
        self.generation += 1
        self.io.pwrite(struct.pack(">Q", offset), self.table_offset + index * 8)
        if not self_counted:
            self.update(offset, 1, +1)

    def _grow_table(self, needed_index: int) -> None:
        """Move the table to the end of the file, together with the refcount blocks
        that describe the new table and themselves (so no recursion is needed)."""
        capacity = max(needed_index + 1, len(self.table) * 2)
        if -(-capacity * 8 // self.cluster_size) * self.cluster_size > QCOW_MAX_REFTABLE_SIZE:
            raise image_error(self.path, "refcount table for cluster %d would exceed %d bytes"
                              % (needed_index * self.entries_per_block,
                                 QCOW_MAX_REFTABLE_SIZE), needed_index)
        while True:
            start = self.free_index
            table_clusters, new_blocks, end = self._plan_table(start, capacity, needed_index)
            used = self.first_used(start, end - start)
            if used < 0:
                break
            self.free_index = used + 1
        self.free_index = end
        table = array("Q", self.table)
        table.extend([0] * (table_clusters * self.cluster_size // 8 - len(table)))
        for n, index in enumerate(new_blocks):
            block_cluster = start + table_clusters + n
            block = bytearray(self.cluster_size)
            lo = max(start, index * self.entries_per_block)
            hi = min(end, (index + 1) * self.entries_per_block)
            if hi > lo:
                self.codec.set_range(block, lo - index * self.entries_per_block, [1] * (hi - lo))
            self.io.pwrite(bytes(block), block_cluster << self.cluster_bits)
            table[index] = block_cluster << self.cluster_bits
        self._switch_table(table, start << self.cluster_bits, table_clusters)

    def _plan_table(self, start: int, capacity: int, needed_index: int):
        """Fixed point: table clusters and new block indices so that the table, at
        ``start``, followed by the new blocks, is covered by blocks it lists."""
        new_blocks = []
        while True:
            table_clusters = -(-capacity * 8 // self.cluster_size)
            end = start + table_clusters + len(new_blocks)
            wanted = set(range(start // self.entries_per_block,
                               (end - 1) // self.entries_per_block + 1))
            wanted.add(needed_index)
            wanted = sorted(i for i in wanted if i >= len(self.table) or not self.table[i])
            if len(wanted) == len(new_blocks) and wanted[-1] < capacity:
                return table_clusters, new_blocks, end
            new_blocks = wanted
            capacity = max(capacity, wanted[-1] + 1)

    def _switch_table(self, table: array, offset: int, clusters: int) -> None:
        self.io.pwrite(be_bytes(table), offset)
        self.io.pwrite(REFCOUNT_TABLE_FIELDS.pack(offset, clusters),
                       REFCOUNT_TABLE_FIELDS_OFFSET)
        old_offset, old_clusters = self.table_offset, self.table_clusters
        self.table, self.table_offset, self.table_clusters = table, offset, clusters
        self.generation += 1
        self.update(old_offset, old_clusters << self.cluster_bits, -1)
