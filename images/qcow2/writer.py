"""The qcow2 write paths: allocating and in-place writes, zero writes, discard.

Mixed into ``Qcow2Image``.  Work is done one L2 table at a time: its new clusters
get one contiguous host run, data goes out in one pwrite per contiguous run, the
refcounts of the run are updated per refcount block, and the L2 table gets one
pwrite of the changed slice.  Order on disk (so a kill leaves at worst leaks):
data, then refcounts, then L2, then L1; frees clear the L2 entry before the
refcount is decremented.  A write is planned whole before any byte goes out: the
plan runs the metadata-overlap checks (overlap) on every in-place host run and
every L2 table reached through L1, so a refused write leaves the file unchanged.
"""
from .bitmap_format import QCOW2_AUTOCLEAR_BITMAPS
from .format import (AUTOCLEAR_FEATURES_OFFSET, L2E_OFFSET_MASK, QCOW_OFLAG_COMPRESSED,
                           QCOW_OFLAG_COPIED, QCOW_OFLAG_ZERO, compressed_extent, image_error)

ZERO_CHUNK = 1 << 20      # explicit zero writes (v2 with a backing file) go out in chunks


class Qcow2Writer:
    """Write-side methods of Qcow2Image (expects io, map, refcounts, header, backing)."""

    def _check_writable(self) -> None:
        if self.io is None:
            raise image_error(self.path, "image is closed", None)
        if self.read_only:
            raise image_error(self.path, "image is opened read-only", None)
        self.overlap.refresh()
        known = self.header.autoclear_features & QCOW2_AUTOCLEAR_BITMAPS
        if self.header.autoclear_features != known:
            # Spec: a writer that does not understand autoclear bits must clear them
            # (bit 0, the bitmaps extension, is understood: qcow2.bitmaps keeps it).
            self.io.pwrite(known.to_bytes(8, "big"), AUTOCLEAR_FEATURES_OFFSET)
            self.header.fields["autoclear_features"] = known

    def _has_backing(self) -> bool:
        return self.backing is not None or self.backing_name is not None

    def _segments(self, offset: int, length: int):
        """Split a guest range at L2 table boundaries: (l1_index, start, end)."""
        span = self.map.l2_span
        pos, end = offset, offset + length
        while pos < end:
            seg_end = min(end, (pos // span + 1) * span)
            yield pos // span, pos, seg_end
            pos = seg_end

    # -- data writes -------------------------------------------------------
    def write(self, offset: int, data) -> None:
        with self.lock:
            self._check_writable()
            view = memoryview(data).cast("B")
            self._check_range(offset, len(view))
            self._execute(self._plan_write(offset, len(view)), offset, view)

    def _plan_write(self, offset: int, length: int) -> list:
        """Plan every L2 table's part of a write and run the overlap checks: all of it
        before anything is written, so a refusal leaves the file unchanged."""
        return [self._plan_segment(l1_index, start, end)
                for l1_index, start, end in self._segments(offset, length)]

    def _execute(self, plans: list, offset: int, view: memoryview) -> None:
        for plan in plans:
            start, end = plan[1], plan[2]
            self._write_segment(plan, view[start - offset:end - offset])

    def _owned(self, entry: int) -> bool:
        """True when the entry is a plain data cluster this image alone references."""
        if entry & (QCOW_OFLAG_COMPRESSED | QCOW_OFLAG_ZERO) or not entry & L2E_OFFSET_MASK:
            return False
        if entry & QCOW_OFLAG_COPIED:
            return True
        return self.refcounts.get((entry & L2E_OFFSET_MASK) >> self.map.cluster_bits) == 1

    def _check_l2_target(self, l1_index: int, guest: int) -> None:
        """Refuse an L1 entry whose L2 table lies on other metadata."""
        l2 = self.map.l2_offset(l1_index) if l1_index < len(self.map.l1) else 0
        if l2:
            self.overlap.check(l2, self.cluster_size, guest, l2_update=True)

    def _plan_segment(self, l1_index: int, start: int, end: int) -> tuple:
        """(l1_index, start, end, entries, owned, in-place runs (host, lo, hi)), checked."""
        bits, csize = self.map.cluster_bits, self.cluster_size
        self._check_l2_target(l1_index, start)
        first, count = self.map.slots(start, end)
        entries = self.map.entries(l1_index, first, count)
        owned = [self._owned(e) for e in entries]
        limit = self.refcounts.free_index << bits
        base = start & ~(csize - 1)              # guest offset of cluster ``first``
        runs, i = [], 0
        while i < count:
            if not owned[i]:
                i += 1
                continue
            j = i + 1
            while j < count and owned[j] and \
                    entries[j] & L2E_OFFSET_MASK == (entries[j - 1] & L2E_OFFSET_MASK) + csize:
                j += 1
            lo, hi = max(start, base + i * csize), min(end, base + j * csize)
            host = (entries[i] & L2E_OFFSET_MASK) + lo - (base + i * csize)
            if (entries[j - 1] & L2E_OFFSET_MASK) >= limit:
                bad = next(e for e in entries[i:j] if e & L2E_OFFSET_MASK >= limit)
                raise image_error(self.path, "data cluster offset %#x past the end of the "
                                  "file" % (bad & L2E_OFFSET_MASK), bad)
            self.overlap.check(host, hi - lo, lo)   # one check per contiguous host run
            runs.append((host, lo, hi))
            i = j
        return l1_index, start, end, entries, owned, runs

    def _write_segment(self, plan: tuple, data: memoryview) -> None:
        l1_index, start, end, entries, owned, runs = plan
        csize = self.cluster_size
        first, _ = self.map.slots(start, end)
        for host, lo, hi in runs:
            self.io.pwrite(data[lo - start:hi - start], host)
        fresh = [i for i in range(len(entries)) if not owned[i]]
        if not fresh:
            return
        base = start & ~(csize - 1)
        host = self.refcounts.reserve(len(fresh))
        self._write_allocated(fresh, host, start, data, base)
        values = list(entries[fresh[0]:fresh[-1] + 1])
        for n, i in enumerate(fresh):
            values[i - fresh[0]] = (host + n * csize) | QCOW_OFLAG_COPIED
        self._install(l1_index, first + fresh[0], values, (host, len(fresh) * csize))
        for i in fresh:
            self._free_entry(entries[i])

    def _write_allocated(self, fresh, host, start, data, base) -> None:
        """Write the new clusters, filling partly written ones from the old content."""
        csize, end = self.cluster_size, start + len(data)
        k = 0
        while k < len(fresh):
            m = k + 1
            while m < len(fresh) and fresh[m] == fresh[m - 1] + 1:
                m += 1
            g_lo, g_hi = base + fresh[k] * csize, base + (fresh[m - 1] + 1) * csize
            lo, hi = max(start, g_lo), min(end, g_hi)
            if lo == g_lo and hi == g_hi:
                buf = data[lo - start:hi - start]
            else:
                buf = bytearray(g_hi - g_lo)
                if lo > g_lo:
                    buf[:lo - g_lo] = self._read_layer(g_lo, lo - g_lo)
                fill_end = min(g_hi, self.virtual_size)
                if hi < fill_end:
                    buf[hi - g_lo:fill_end - g_lo] = self._read_layer(hi, fill_end - hi)
                buf[lo - g_lo:hi - g_lo] = data[lo - start:hi - start]
            self.io.pwrite(buf, host + k * csize)
            k = m

    def _install(self, l1_index: int, first: int, values, new_run=None) -> None:
        """Point L2 entries at new values: refcounts of ``new_run`` first, then L2, then L1."""
        l2 = self.map.l2_offset(l1_index)
        if l2:
            self.overlap.check(l2, self.cluster_size, (l1_index * self.map.l2_span
                                                       + (first << self.map.cluster_bits)),
                               l2_update=True)
            if new_run:
                self.refcounts.update(new_run[0], new_run[1], +1)
            self.map.set_entries(l1_index, first, values)
            return
        l2 = self.refcounts.reserve(1)
        table = bytearray(self.cluster_size)
        table[first * 8:(first + len(values)) * 8] = b"".join(
            v.to_bytes(8, "big") for v in values)
        self.io.pwrite(table, l2)     # unreachable until the L1 entry is written
        if new_run:
            self.refcounts.update(new_run[0], new_run[1], +1)
        self.refcounts.update(l2, self.cluster_size, +1)
        self.map.cache_l2(l2, table)
        self.map.set_l1(l1_index, l2 | QCOW_OFLAG_COPIED)
        self.overlap.added_l2(l2)

    def _free_entry(self, entry: int) -> None:
        """Drop this image's reference to the host cluster(s) behind an old L2 entry."""
        if entry & QCOW_OFLAG_COMPRESSED:
            self.refcounts.update(*compressed_extent(entry, self.map.cluster_bits), -1)
            return
        host = entry & L2E_OFFSET_MASK
        if host:
            self.refcounts.update(host, self.cluster_size, -1)

    # -- zero writes and discard --------------------------------------------
    def write_zeroes(self, offset: int, length: int) -> None:
        with self.lock:
            self._check_writable()
            self._check_range(offset, length)
            lo, hi = self._aligned_part(offset, length)
            head = self._plan_write(offset, lo - offset)
            if hi > lo and self.header.version < 3 and self._has_backing():
                self._plan_write(lo, hi - lo)      # checks only: chunks are planned anew
            else:
                self._check_l2_targets(lo, hi - lo)
            tail = self._plan_write(hi, offset + length - hi)
            self._execute(head, offset, memoryview(bytes(lo - offset)))
            self._execute(tail, hi, memoryview(bytes(offset + length - hi)))
            if hi <= lo:
                return
            if self.header.version >= 3:
                self._set_clusters(lo, hi - lo, QCOW_OFLAG_ZERO)
            elif self._has_backing():
                self._write_explicit_zeros(lo, hi - lo)
            else:
                self._set_clusters(lo, hi - lo, 0)

    def discard(self, offset: int, length: int) -> None:
        """Drop whole clusters inside the range (partial clusters are left alone).
        Version 3 makes them read as zeros; version 2 exposes the backing file."""
        with self.lock:
            self._check_writable()
            self._check_range(offset, length)
            lo, hi = self._aligned_part(offset, length)
            if hi > lo:
                self._check_l2_targets(lo, hi - lo)
                new = QCOW_OFLAG_ZERO if self.header.version >= 3 and self._has_backing() else 0
                self._set_clusters(lo, hi - lo, new)

    def _aligned_part(self, offset: int, length: int):
        """The cluster-aligned middle of a range; the image end counts as aligned."""
        csize = self.cluster_size
        lo = -(-offset // csize) * csize
        end = offset + length
        hi = end if end == self.virtual_size else end // csize * csize
        if hi < lo:
            return end, end
        return min(lo, end), hi

    def _check_l2_targets(self, offset: int, length: int) -> None:
        for l1_index, start, _ in self._segments(offset, length):
            self._check_l2_target(l1_index, start)

    def _write_explicit_zeros(self, offset: int, length: int) -> None:
        for pos in range(offset, offset + length, ZERO_CHUNK):
            n = min(ZERO_CHUNK, offset + length - pos)
            self.write(pos, bytes(n))

    def _set_clusters(self, offset: int, length: int, new: int) -> None:
        """Set every L2 entry of the range to ``new`` (0 or the zero flag), then free."""
        for l1_index, start, end in self._segments(offset, length):
            if not self.map.l2_offset(l1_index) and (new == 0 or not self._has_backing()):
                continue      # no table: already unallocated, and that reads as zeros
            first, count = self.map.slots(start, end)
            entries = self.map.entries(l1_index, first, count)
            if all(e == new for e in entries):
                continue
            self._install(l1_index, first, [new] * count)
            for entry in entries:
                self._free_entry(entry)
