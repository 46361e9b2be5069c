"""qcow2 address translation: the host file, the L1 table, a bounded write-through
cache of L2 tables, and the walk that turns a guest range into runs.

A run is ``(kind, guest_offset, length, host_offset, entry)``; ``kind`` is DATA, ZERO,
UNALLOCATED or COMPRESSED (one compressed cluster per run, ``entry`` is its L2 entry).
The walk costs one step per L2 table touched plus one per cluster inside allocated
tables: an L1 entry of 0 covers its whole range at once.
"""
import errno
import os
import struct
from collections import OrderedDict

from ..driver import DATA, UNALLOCATED, ZERO
from ..errors import ImageIOError
from .format import (L1E_OFFSET_MASK, L2E_OFFSET_MASK, QCOW_OFLAG_COMPRESSED,
                     QCOW_OFLAG_ZERO, corruption)
from .refcount import be_array

COMPRESSED = "compressed"
L2_CACHE_SIZE = 32
MAX_HOST_OFFSET = 1 << 56         # what L2E_OFFSET_MASK can express
_U64 = struct.Struct(">Q")
_KIND_FLAGS = QCOW_OFLAG_COMPRESSED | QCOW_OFLAG_ZERO
_KEY_MASK = L2E_OFFSET_MASK | _KIND_FLAGS
_NO_ENTRY = bytes(8)
_ZERO_ENTRY = QCOW_OFLAG_ZERO.to_bytes(8, "big")


def _uniform(raw: bytes, entry: bytes) -> bool:
    """True when every 8-byte entry of ``raw`` equals ``entry`` (two memcmp, no loop)."""
    return raw[:8] == entry and raw[8:] == raw[:-8]


class HostFile:
    """pread/pwrite on the image file; OS errors become ImageIOError (errno kept)."""

    def __init__(self, path: str, writable: bool):
        self.path = path
        try:
            self.fd = os.open(path, os.O_RDWR if writable else os.O_RDONLY)
        except OSError as err:
            raise ImageIOError("Could not open '%s': %s" % (path, err.strerror),
                               errno=err.errno or errno.EIO, operation="open") from err

    def pread(self, length: int, offset: int) -> bytes:
        self._check_offset(offset)
        try:
            return os.pread(self.fd, length, offset)
        except OSError as err:
            raise ImageIOError("%s: read failed: %s" % (self.path, err.strerror),
                               errno=err.errno or errno.EIO, operation="read") from err

    def pwrite(self, data, offset: int) -> None:
        self._check_offset(offset)
        try:
            view = memoryview(data)
            while len(view):
                done = os.pwrite(self.fd, view, offset)
                view, offset = view[done:], offset + done
        except OSError as err:
            raise ImageIOError("%s: write failed: %s" % (self.path, err.strerror),
                               errno=err.errno or errno.EIO, operation="write") from err

    def _check_offset(self, offset: int) -> None:
        if not 0 <= offset < MAX_HOST_OFFSET:
            raise corruption(self.path, "host offset %#x out of range" % offset, offset)

    def size(self) -> int:
        return os.fstat(self.fd).st_size

    def fsync(self) -> None:
        try:
            os.fsync(self.fd)
        except OSError as err:
            raise ImageIOError("%s: flush failed: %s" % (self.path, err.strerror),
                               errno=err.errno or errno.EIO, operation="flush") from err

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class AddressMap:
    """L1 table plus cached L2 tables of one image."""

    def __init__(self, io: HostFile, path: str, cluster_bits: int, l1_offset: int,
                 l1_size: int, virtual_size: int):
        self.io, self.path = io, path
        self.cluster_bits = cluster_bits
        self.cluster_size = 1 << cluster_bits
        self.l2_bits = cluster_bits - 3
        self.l2_entries = 1 << self.l2_bits
        self.l2_span = self.cluster_size << self.l2_bits     # guest bytes per L2 table
        self.virtual_size = virtual_size
        self.l1_offset = l1_offset
        self.l1 = be_array(io.pread(l1_size * 8, l1_offset).ljust(l1_size * 8, b"\0"))
        self.l2_cache = OrderedDict()    # L2 table offset -> bytearray
        self.generation = 0              # counts changes of L1/L2 entries (block status)

    # -- tables ------------------------------------------------------------
    def l2_offset(self, l1_index: int) -> int:
        offset = self.l1[l1_index] & L1E_OFFSET_MASK
        if offset % self.cluster_size:
            raise corruption(self.path, "L2 table offset %#x not aligned (L1 index %d)"
                             % (offset, l1_index), offset)
        return offset

    def l2_table(self, offset: int) -> bytearray:
        table = self.l2_cache.get(offset)
        if table is None:
            table = bytearray(self.io.pread(self.cluster_size, offset)
                              .ljust(self.cluster_size, b"\0"))
            self.cache_l2(offset, table)
        else:
            self.l2_cache.move_to_end(offset)
        return table

    def cache_l2(self, offset: int, table: bytearray) -> None:
        self.l2_cache[offset] = table
        self.l2_cache.move_to_end(offset)
        if len(self.l2_cache) > L2_CACHE_SIZE:
            self.l2_cache.popitem(last=False)

    def slots(self, start: int, end: int):
        """(first, count): the L2 entries of one table that guest range [start, end) touches."""
        bits = self.cluster_bits
        return (start >> bits) & (self.l2_entries - 1), ((end - 1) >> bits) - (start >> bits) + 1

    def entries(self, l1_index: int, first: int, count: int):
        """L2 entries [first, first+count) of one table (zeros when it has no table)."""
        offset = self.l2_offset(l1_index)
        if offset == 0:
            return (0,) * count
        return struct.unpack_from(">%dQ" % count, self.l2_table(offset), first * 8)

    def set_entries(self, l1_index: int, first: int, values) -> None:
        """Write-through update of L2 entries in an existing table (one pwrite)."""
        self.generation += 1
        offset = self.l2_offset(l1_index)
        table = self.l2_table(offset)
        struct.pack_into(">%dQ" % len(values), table, first * 8, *values)
        self.io.pwrite(bytes(table[first * 8:(first + len(values)) * 8]), offset + first * 8)

    def set_l1(self, l1_index: int, value: int) -> None:
        self.generation += 1
        self.io.pwrite(_U64.pack(value), self.l1_offset + l1_index * 8)
        self.l1[l1_index] = value

    # -- the walk ----------------------------------------------------------
    def runs(self, offset: int, length: int):
        """Yield ``(kind, guest_offset, length, host_offset, entry)`` covering the range."""
        end = offset + length
        pos = offset
        while pos < end:
            l1_index = pos >> (self.cluster_bits + self.l2_bits)
            seg_end = min(end, (l1_index + 1) * self.l2_span)
            if l1_index >= len(self.l1) or self.l2_offset(l1_index) == 0:
                yield (UNALLOCATED, pos, seg_end - pos, None, 0)
            else:
                yield from self._table_runs(l1_index, pos, seg_end)
            pos = seg_end

    def _table_runs(self, l1_index: int, start: int, end: int):
        """Runs of one L2 table's range, already merged where the entries allow it (a
        table of equal entries is one comparison; clusters are walked only in mixed ones)."""
        bits = self.cluster_bits
        first, count = self.slots(start, end)
        raw = bytes(memoryview(self.l2_table(self.l2_offset(l1_index)))[first * 8:(first + count) * 8])
        if _uniform(raw, _NO_ENTRY):
            yield (UNALLOCATED, start, end - start, None, 0)
            return
        if _uniform(raw, _ZERO_ENTRY):
            yield (ZERO, start, end - start, None, QCOW_OFLAG_ZERO)
            return
        entries = struct.unpack(">%dQ" % count, raw)
        base = start >> bits                # guest cluster of entries[0]
        i, pos = 0, start
        while i < count:
            kind, host, j = self._entry_run(entries, i)
            nxt = min(end, (base + j) << bits)
            if host is not None:
                host += pos & (self.cluster_size - 1)
            yield (kind, pos, nxt - pos, host, entries[i])
            i, pos = j, nxt

    def _entry_run(self, entries, i: int):
        """(kind, host offset or None, j): entries[i:j] form one run of that kind."""
        csize, count = self.cluster_size, len(entries)
        entry = entries[i]
        key = entry & _KEY_MASK        # host offset and the two kind flags
        if entry & QCOW_OFLAG_COMPRESSED:
            return COMPRESSED, None, i + 1
        host = None
        if key & QCOW_OFLAG_ZERO:
            kind = ZERO
        elif key:
            kind, host = DATA, key
            if host & (csize - 1):
                raise corruption(self.path, "data cluster offset %#x not aligned" % host, host)
        else:
            kind = UNALLOCATED
        j, want, stride = i + 1, key, csize if kind == DATA else 0
        if kind == ZERO:    # zero clusters merge whatever their host offset
            while j < count and entries[j] & _KIND_FLAGS == QCOW_OFLAG_ZERO:
                j += 1
        else:
            while j < count and entries[j] & _KEY_MASK == want + stride:
                j, want = j + 1, want + stride
        return kind, host, j


def merged(runs, keep_compressed: bool = False):
    """Merge adjacent runs of one kind (DATA only when host offsets are contiguous).
    Compressed runs become DATA without a host offset unless ``keep_compressed``."""
    cur = None
    for kind, off, length, host, entry in runs:
        if kind == COMPRESSED and not keep_compressed:
            kind = DATA
        if cur is not None and kind == cur[0] and kind != COMPRESSED and (
                kind != DATA or (host is None) == (cur[3] is None)
                and (host is None or cur[3] + cur[2] == host)):
            cur[2] += length
            continue
        if cur is not None:
            yield tuple(cur)
        cur = [kind, off, length, host, entry]
    if cur is not None:
        yield tuple(cur)
