"""The qcow2 half of the kernel-side copy: a batch of whole clusters into one new host run,
or over clusters the image already holds.

``BatchWriter.copy_batch`` is the entry point for unallocated clusters (mixed into
``Qcow2Image``); ``overwrite_batch`` (a commit writes into a base that holds data)
copies in place over plain data clusters this image alone references and hands
back the pieces over unallocated clusters (for ``copy_batch``) and the rest.  The
caller (the format-free planner, ``images/jobs/copy_plan``) hands it pieces that
cover whole, unallocated clusters of this image, each read from another file at a
known offset; the bytes go with ``os.copy_file_range`` and never pass through Python.

Disk order is the write path's (``writer``): data, then the refcounts of the new
run (one pwrite per refcount block), then each touched L2 table's changed slice
once, then L1 for new tables.  A kill at any instant leaves at worst leaked
clusters, never an entry without a refcount, and the guest content unchanged.
"""
import errno
import os
from typing import List, Tuple

from ..driver import Piece
from ..errors import ImageIOError
from .format import L2E_OFFSET_MASK, QCOW_OFLAG_COPIED, image_error

MAX_COPY_CALL = 1 << 30      # one copy_file_range request; the kernel may do less


class BatchWriter:
    """Batch-copy method of Qcow2Image (expects io, map, refcounts and the writer's checks)."""

    def copy_batch(self, pieces: List[Piece]) -> Tuple[int, int]:
        """Copy the pieces (sorted, whole clusters, unallocated here) into one new host
        run; returns (host_offset, length) of the run.  Caller holds ``self.lock``."""
        if not pieces:
            return 0, 0
        self._check_writable()
        self._check_batch_tables(pieces)
        total = sum(p.length for p in pieces)
        host = self.refcounts.reserve(total // self.cluster_size)
        dest = host
        for fd, source, length in _coalesced(pieces):
            _copy(fd, self.io.fd, source, dest, length, self.path)
            dest += length
        self.refcounts.update(host, total, +1)
        self._install_batch(pieces, host)
        return host, total

    def overwrite_batch(self, pieces: List[Piece]):
        """Copy the parts of the pieces (sorted, whole clusters) that land on plain data
        clusters this image alone references, in place (only data is written: a kill
        leaves the metadata as it was).  Returns (pieces over unallocated clusters,
        pieces over anything else, host ranges written).  Caller holds ``self.lock``."""
        self._check_writable()
        fresh, other, written = [], [], []
        for p in pieces:
            for l1_index, start, end in self._segments(p.guest, p.length):
                for owned, lo, hi, host in self._cluster_runs(l1_index, start, end):
                    part = p._replace(guest=lo, length=hi - lo, source=p.source + lo - p.guest)
                    if owned:
                        self.overlap.check(host, hi - lo, lo)
                        _copy(p.fd, self.io.fd, part.source, host, hi - lo, self.path)
                        written.append((host, hi - lo))
                    else:
                        (fresh if host == 0 else other).append(part)
        return fresh, other, written

    def _cluster_runs(self, l1_index: int, start: int, end: int):
        """(owned, lo, hi, host) runs of one L2 table's range: owned runs are host-contiguous
        plain data (host = where lo lives); others say host 0 when every entry is 0."""
        csize = self.cluster_size
        first, count = self.map.slots(start, end)
        entries = self.map.entries(l1_index, first, count)
        limit = self.refcounts.free_index << self.map.cluster_bits
        i = 0
        while i < count:
            owned = self._owned(entries[i])
            j = i + 1
            while j < count and self._owned(entries[j]) == owned and (
                    entries[j] & L2E_OFFSET_MASK == (entries[j - 1] & L2E_OFFSET_MASK) + csize
                    if owned else (entries[j] == 0) == (entries[i] == 0)):
                j += 1
            host = entries[i] & L2E_OFFSET_MASK if owned else (1 if entries[i] else 0)
            if owned and host + (j - i) * csize > limit:
                raise image_error(self.path, "data cluster offset %#x past the end of the "
                                  "file" % host, host)
            yield owned, start + i * csize, start + j * csize, host
            i = j

    def _check_batch_tables(self, pieces: List[Piece]) -> None:
        """Refuse, before anything is copied, a batch whose L2 tables (taken from L1) lie
        on other metadata: one check per L2 table touched, none per cluster.  The new run
        itself comes from the allocator, past all live metadata."""
        shift = self.map.cluster_bits * 2 - 3          # guest bytes per L2 table, as a shift
        last = -1
        for p in pieces:
            for l1_index in range(max(p.guest >> shift, last + 1),
                                  ((p.guest + p.length - 1) >> shift) + 1):
                self._check_l2_target(l1_index, max(p.guest, l1_index << shift))
                last = l1_index

    def _install_batch(self, pieces: List[Piece], host: int) -> None:
        """Point the L2 entries at the new run: one slice per L2 table."""
        l2_bits = self.map.cluster_bits - 3
        for l1_index, slots in _slots_by_table(pieces, host, self.map.cluster_bits).items():
            first, last = slots[0][0], slots[-1][0]
            values = list(self.map.entries(l1_index, first, last - first + 1))
            for index, value in slots:
                if values[index - first]:
                    raise ImageIOError("%s: cluster %d was allocated during the copy"
                                       % (self.path, (l1_index << l2_bits) + index),
                                       errno=errno.EIO, operation="write")
                values[index - first] = value | QCOW_OFLAG_COPIED
            self._install(l1_index, first, values)


def _slots_by_table(pieces: List[Piece], host: int, bits: int) -> dict:
    """{l1_index: [(l2 index, host offset of the cluster)]} for the pieces copied to ``host``."""
    l2_bits = bits - 3
    tables = {}
    dest = host
    for p in pieces:
        for n in range(p.length >> bits):
            cluster = (p.guest >> bits) + n
            tables.setdefault(cluster >> l2_bits, []).append((cluster & ((1 << l2_bits) - 1),
                                                              dest + (n << bits)))
        dest += p.length
    return tables


def _coalesced(pieces: List[Piece]):
    """(fd, source, length) with pieces merged where the source is contiguous too."""
    cur = None
    for p in pieces:
        if cur and cur[0] == p.fd and cur[1] + cur[2] == p.source:
            cur[2] += p.length
        else:
            if cur:
                yield tuple(cur)
            cur = [p.fd, p.source, p.length]
    if cur:
        yield tuple(cur)


def _copy(src: int, dst: int, source: int, dest: int, length: int, path: str) -> None:
    """copy_file_range until done; past the source's end the data reads as zeros."""
    try:
        while length > 0:
            done = os.copy_file_range(src, dst, min(length, MAX_COPY_CALL), source, dest)
            if done == 0:
                os.pwrite(dst, bytes(length), dest)   # short source: zeros, as read() pads
                return
            source, dest, length = source + done, dest + done, length - done
    except OSError as err:
        raise ImageIOError("%s: write failed: %s" % (path, err.strerror),
                           errno=err.errno or errno.EIO, operation="write") from err
