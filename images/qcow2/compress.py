"""Compressed cluster writes (qcow2.txt "Compressed Clusters Descriptor"), for
``drive-backup compress=true``.

Mixed into ``Qcow2Image``.  Each whole cluster is deflated as QEMU does (zlib, raw
deflate, window bits 12, default level); one that does not shrink below a cluster,
or whose L2 entry already points at host data, is written the ordinary way.  The
compressed clusters of one call are packed byte after byte into one new host run
(as QEMU's qcow2_alloc_bytes packs them), so several share a host cluster; each
adds one to the refcount of every host cluster its sectors touch, which is what
``qemu-img check`` counts.  The next call goes on in the free tail of the last
host cluster while every blob there is still referenced (its refcount is what
this writer left; the allocator never hands out a cluster below its free index
again).  Disk order as in the write path: data, refcounts, L2, L1.
"""
import zlib

from .format import (QCOW2_COMPRESSED_SECTOR_SIZE, QCOW_OFLAG_COMPRESSED, QCOW_OFLAG_ZERO,
                     compressed_extent)

QCOW2_COMPRESSION_TYPE_ZLIB = 0


def deflate(cluster: bytes) -> bytes:
    packer = zlib.compressobj(zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED, -12)
    return packer.compress(cluster) + packer.flush()


class CompressedWriter:
    """write_compressed of Qcow2Image (expects io, map, refcounts and the writer's methods)."""

    def write_compressed(self, offset: int, data) -> None:
        """Write whole clusters from the cluster-aligned ``offset`` (the data may end
        at the image end), compressed where that saves space."""
        with self.lock:
            self._check_writable()
            view = memoryview(data).cast("B")
            self._check_range(offset, len(view))
            csize, bits = self.cluster_size, self.map.cluster_bits
            if offset % csize:
                raise ValueError("compressed write at %d is not cluster-aligned" % offset)
            zlib_type = self.header.compression_type == QCOW2_COMPRESSION_TYPE_ZLIB
            blobs, plain = [], []
            for pos in range(0, len(view), csize):
                guest, chunk = offset + pos, view[pos:pos + csize]
                l1_index, slot = divmod(guest >> bits, self.map.l2_span >> bits)
                self._check_l2_target(l1_index, guest)
                packed = deflate(bytes(chunk).ljust(csize, b"\0")) if zlib_type else b""
                entry = self.map.entries(l1_index, slot, 1)[0]
                if not packed or len(packed) >= csize or entry & ~QCOW_OFLAG_ZERO:
                    plain.append((guest, chunk))
                else:
                    blobs.append((l1_index, slot, packed))
            if blobs:
                self._write_blobs(blobs)
            for guest, chunk in plain:
                self.write(guest, chunk)

    def _write_blobs(self, blobs) -> None:
        """Blobs go first into the free tail of the host cluster the previous call
        ended in (while every blob there is still referenced), the rest into a new run."""
        csize, bits = self.cluster_size, self.map.cluster_bits
        pos, tail_end = self._compressed_tail()
        placed = []
        for l1_index, slot, packed in blobs:
            if pos + len(packed) > tail_end:
                break
            self.io.pwrite(packed, pos)
            placed.append((l1_index, slot, packed, pos))
            pos += len(packed)
        rest = blobs[len(placed):]
        if rest:
            joined = b"".join(packed for _, _, packed in rest)
            pos = self.refcounts.reserve(-(-len(joined) // csize))
            self.io.pwrite(joined, pos)
            for l1_index, slot, packed in rest:
                placed.append((l1_index, slot, packed, pos))
                pos += len(packed)
        tables = {}
        for l1_index, slot, packed, host in placed:
            entry = compressed_entry(host, len(packed), bits)
            self.refcounts.update(*compressed_extent(entry, bits), +1)
            tables.setdefault(l1_index, []).append((slot, entry))
        for l1_index, slots in tables.items():
            first, last = slots[0][0], slots[-1][0]
            values = list(self.map.entries(l1_index, first, last - first + 1))
            for slot, entry in slots:
                values[slot - first] = entry
            self._install(l1_index, first, values)
        cluster = pos >> bits
        self._tail = (pos, ((cluster + 1) << bits), self.refcounts.get(cluster))

    def _compressed_tail(self):
        """(next free byte, end of its cluster) of the last compressed run, or (0, 0)
        once any blob in that cluster lost its reference (its count changed)."""
        pos, end, count = getattr(self, "_tail", (0, 0, 0))
        if not pos or pos == end or self.refcounts.get(pos >> self.map.cluster_bits) != count:
            return 0, 0
        return pos, end


def compressed_entry(host: int, length: int, cluster_bits: int) -> int:
    """The L2 entry of ``length`` compressed bytes at ``host``: the offset, and the
    sectors touched less one (qcow2.txt "Compressed Clusters Descriptor")."""
    sectors = ((host + length - 1) // QCOW2_COMPRESSED_SECTOR_SIZE
               - host // QCOW2_COMPRESSED_SECTOR_SIZE)
    return QCOW_OFLAG_COMPRESSED | (sectors << (62 - (cluster_bits - 8))) | host
