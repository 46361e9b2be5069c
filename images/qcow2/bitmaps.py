"""Persistent dirty bitmaps of a qcow2 image: loaded at open, stored at close, as QEMU does.

Mixed into ``Qcow2Image`` (block/qcow2-bitmap.c is the model):

- open: a bitmaps extension whose autoclear bit 0 is clear was left by a program that
  does not know bitmaps: it is ignored, and dropped from the header once the image is
  writable.  Otherwise every directory entry becomes an in-memory ``DirtyBitmap``
  (``persistent``; ``enabled`` from the AUTO flag).  An entry found IN_USE belongs to a
  process that did not close the image: its bitmap is ``inconsistent`` and its data is
  not read.  When the image is writable, the entries not yet IN_USE are marked IN_USE
  in place (autoclear bit cleared, directory rewritten, bit set again, with a flush
  after each step), so a crash from now on leaves them inconsistent.
- close, and a reopen read-only: each persistent bitmap that is neither read-only nor
  inconsistent is written anew (data clusters, then its table, then a new directory),
  flushed, and only then does the header point at the new directory; the old
  directory and the old tables are freed after that.
- ``remove_persistent_bitmap`` takes an entry out of the file at once.

A process killed at any instant leaves at worst leaked clusters.  Bitmaps added while
the image is open reach the file only at close (QEMU: ``qemu-img info`` lists none
while QEMU runs).
"""
from typing import List, Optional

from ..dirty_bitmap import DirtyBitmap
from .bitmap_format import (BME_FLAG_AUTO, BME_FLAG_IN_USE, BME_TABLE_ENTRY_FLAG_ALL_ONES,
                                  BME_TABLE_ENTRY_OFFSET_MASK, QCOW2_AUTOCLEAR_BITMAPS,
                                  QCOW2_MAX_BITMAP_DIRECTORY_SIZE, QCOW2_MAX_BITMAPS, BitmapEntry,
                                  BitmapsExt, check_ext_length, constraints_error, entry_size, pack_directory,
                                  parse_directory, parse_ext, parse_table, table_size)
from .format import (MAX_HEADER_AREA_WRITE, QCOW2_EXT_MAGIC_BITMAPS,
                           QCOW2_EXT_MAGIC_FEATURE_TABLE, Qcow2Header, image_error,
                           pack_header_area)


class Qcow2Bitmaps:
    """Bitmap methods of Qcow2Image (expects io, header, refcounts, dirty_bitmaps)."""

    # -- open ---------------------------------------------------------------
    def _load_bitmaps(self) -> None:
        self._bitmaps_ext: Optional[BitmapsExt] = None
        self._bitmap_entries: List[BitmapEntry] = []
        self._stale_bitmaps_ext = False
        data = next((d for t, d in self.header.extensions if t == QCOW2_EXT_MAGIC_BITMAPS), None)
        if data is not None:
            check_ext_length(data, self.path)
        if data is not None and not self.header.autoclear_features & QCOW2_AUTOCLEAR_BITMAPS:
            self._stale_bitmaps_ext = True
        elif data is not None:
            self._load_directory(data)
        if not self.read_only:
            self._bitmaps_now_writable()

    def _load_directory(self, data: bytes) -> None:
        ext = parse_ext(data, self.cluster_size, self.path)
        if ext.directory_offset + ext.directory_size > self.io.size():
            raise image_error(self.path, "Broken bitmap directory", ext.directory_offset)
        raw = self.io.pread(ext.directory_size, ext.directory_offset)
        entries = parse_directory(raw, ext, self.cluster_size, self.virtual_size, self.path)
        for entry in entries:
            self.dirty_bitmaps.adopt(self._load_bitmap(entry))
        self._bitmaps_ext, self._bitmap_entries = ext, entries

    def _load_bitmap(self, entry: BitmapEntry) -> DirtyBitmap:
        bitmap = DirtyBitmap(entry.name, self.virtual_size, 1 << entry.granularity_bits,
                             enabled=bool(entry.flags & BME_FLAG_AUTO), persistent=True)
        bitmap.readonly = self.read_only
        if entry.in_use:            # its data is unusable: not even read
            bitmap.inconsistent = True
            return bitmap
        table = self._read_table(entry)
        if len(table) != table_size(self.virtual_size, entry.granularity_bits,
                                    self.cluster_size):
            raise image_error(self.path, "Could not read bitmap '%s' from image: Invalid "
                              "argument" % entry.name, entry.table_size)
        per_cluster = self.cluster_size * 8           # granules one data cluster holds
        for index, item in enumerate(table):
            offset = item & BME_TABLE_ENTRY_OFFSET_MASK
            first = index * per_cluster
            if offset:
                bitmap.load_bytes(self.io.pread(self.cluster_size, offset), first)
            elif item & BME_TABLE_ENTRY_FLAG_ALL_ONES:
                bitmap.set_dirty(first << bitmap.shift, per_cluster << bitmap.shift)
        return bitmap

    def _read_table(self, entry: BitmapEntry) -> List[int]:
        raw = self.io.pread(entry.table_size * 8, entry.table_offset)
        if len(raw) != entry.table_size * 8:
            raise image_error(self.path, "Could not read bitmap_table table from image for "
                              "bitmap '%s': Input/output error" % entry.name, entry.table_offset)
        return parse_table(raw, self.cluster_size, self.path, entry.name)

    def _bitmaps_now_writable(self) -> None:
        """The image became writable: drop a stale extension, mark the stored bitmaps
        IN_USE (qcow2_load_dirty_bitmaps / qcow2_reopen_bitmaps_rw)."""
        if self._stale_bitmaps_ext:
            self._stale_bitmaps_ext = False
            self._rewrite_header(self._header_with(None, clear_autoclear=True))
        loaded = {b.name: b for b in self.dirty_bitmaps if b.persistent}
        changed = False
        for entry in self._bitmap_entries:
            bitmap = loaded.get(entry.name)
            if bitmap is not None and not entry.in_use:
                entry.flags |= BME_FLAG_IN_USE
                changed = True
            if bitmap is not None:
                bitmap.readonly = False
        if changed:
            self._update_directory_in_place()

    def _update_directory_in_place(self) -> None:
        """update_ext_header_and_dir_in_place: while the directory is rewritten the
        autoclear bit is clear, so a crash in between leaves bitmaps QEMU distrusts."""
        self._rewrite_header(self._header_with(self._bitmaps_ext, clear_autoclear=True))
        self.io.pwrite(pack_directory(self._bitmap_entries), self._bitmaps_ext.directory_offset)
        self.io.fsync()
        self._rewrite_header(self._header_with(self._bitmaps_ext))

    # -- what can be stored -----------------------------------------------------------
    def persistent_bitmap_refusal(self, name: str, granularity: int) -> Optional[str]:
        """qcow2_co_can_store_new_dirty_bitmap: why ``name`` cannot become persistent here."""
        if self.header.version < 3:
            return "Cannot store dirty bitmaps in qcow2 v2 files"
        if self.read_only:      # QEMU accepts it and loses the bitmap at close
            return "No write access"
        reason = constraints_error(name, granularity, self.virtual_size, self.cluster_size)
        if reason or not self._bitmap_entries:
            return reason
        if len(self._bitmap_entries) >= QCOW2_MAX_BITMAPS:
            return "Maximum number of persistent bitmaps is already reached"
        if self._bitmaps_ext.directory_size + entry_size(len(name.encode("utf-8"))) > \
                QCOW2_MAX_BITMAP_DIRECTORY_SIZE:
            return "Not enough space in the bitmap directory"
        if any(e.name == name for e in self._bitmap_entries):
            return "Bitmap with the same name is already stored"
        return None

    def stored_bitmaps_info(self) -> list:
        """The directory as ``qemu-img info`` shows it (flags, name, granularity)."""
        return [entry.info() for entry in self._bitmap_entries]

    # -- store ---------------------------------------------------------------------
    def _store_bitmaps(self) -> None:
        """qcow2_store_persistent_dirty_bitmaps."""
        storable = [b for b in self.dirty_bitmaps
                    if b.persistent and not b.readonly and not b.inconsistent]
        if self.read_only or not storable:
            return
        entries = [BitmapEntry(e.name, e.granularity_bits, e.flags, e.table_offset,
                               e.table_size) for e in self._bitmap_entries]
        dropped = []
        for bitmap in storable:
            entry = next((e for e in entries if e.name == bitmap.name), None)
            if entry is None:
                entry = BitmapEntry(bitmap.name, bitmap.shift)
                entries.append(entry)
            elif not entry.in_use:
                raise image_error(self.path, "Bitmap '%s' already exists in the image"
                                  % bitmap.name, bitmap.name)
            else:
                dropped.append(BitmapEntry(entry.name, entry.granularity_bits, entry.flags,
                                           entry.table_offset, entry.table_size))
            entry.flags = BME_FLAG_AUTO if bitmap.enabled else 0
            entry.granularity_bits = bitmap.shift
            entry.table_offset, entry.table_size = self._store_bitmap_data(bitmap)
        self._update_ext_and_directory(entries)
        for entry in dropped:
            self._free_bitmap_clusters(entry)

    def _store_bitmap_data(self, bitmap: DirtyBitmap):
        """Write the data clusters that hold a set bit, then the table: (offset, size)."""
        csize, per_cluster = self.cluster_size, self.cluster_size * 8
        size = table_size(self.virtual_size, bitmap.shift, csize)
        dirty = sorted({index for offset, length in bitmap.extents()
                        for index in range((offset >> bitmap.shift) // per_cluster,
                                           ((offset + length - 1) >> bitmap.shift)
                                           // per_cluster + 1)})
        table = [0] * size
        if dirty:
            host = self.refcounts.reserve(len(dirty))
            for n, index in enumerate(dirty):
                self.io.pwrite(bitmap.to_bytes(index * per_cluster, per_cluster), host + n * csize)
                table[index] = host + n * csize
            self.refcounts.update(host, len(dirty) * csize, +1)
        raw = b"".join(item.to_bytes(8, "big") for item in table)
        offset = self._write_new_clusters(raw)
        return offset, size

    def _write_new_clusters(self, data: bytes) -> int:
        """Write ``data`` to fresh clusters, then count them; their offset."""
        offset = self.refcounts.reserve(-(-len(data) // self.cluster_size))
        self.io.pwrite(data, offset)
        self.refcounts.update(offset, len(data), +1)
        return offset

    def _update_ext_and_directory(self, entries: List[BitmapEntry]) -> None:
        """update_ext_header_and_dir: a new directory, flushed, then the header."""
        old = self._bitmaps_ext
        ext = None
        if entries:
            raw = pack_directory(entries)
            ext = BitmapsExt(len(entries), len(raw), self._write_new_clusters(raw))
            self.io.fsync()
        self._rewrite_header(self._header_with(ext, clear_autoclear=ext is None))
        self._bitmaps_ext, self._bitmap_entries = ext, entries
        if old is not None:
            self.refcounts.update(old.directory_offset, old.directory_size, -1)

    def _free_bitmap_clusters(self, entry: BitmapEntry) -> None:
        """free_bitmap_clusters: a table QEMU would refuse is left to leak."""
        try:
            table = self._read_table(entry)
        except Exception:       # noqa: BLE001  (ImageError, ImageIOError: leak, as QEMU)
            return
        for item in table:
            if item & BME_TABLE_ENTRY_OFFSET_MASK:
                self.refcounts.update(item & BME_TABLE_ENTRY_OFFSET_MASK, self.cluster_size, -1)
        self.refcounts.update(entry.table_offset, entry.table_size * 8, -1)

    def remove_persistent_bitmap(self, name: str) -> None:
        """qcow2_co_remove_persistent_dirty_bitmap: out of the file now (absent: nothing)."""
        with self.lock:
            entry = next((e for e in self._bitmap_entries if e.name == name), None)
            if entry is None:
                return
            self._check_writable()
            self._update_ext_and_directory([e for e in self._bitmap_entries if e is not entry])
            self._free_bitmap_clusters(entry)

    def _bitmaps_going_read_only(self) -> None:
        """qcow2_reopen_bitmaps_ro: store, then the persistent bitmaps are read-only."""
        self._store_bitmaps()
        for bitmap in self.dirty_bitmaps:
            if bitmap.persistent:
                bitmap.readonly = True

    # -- the header ---------------------------------------------------------------
    def _header_with(self, ext: Optional[BitmapsExt], clear_autoclear: bool = False) -> Qcow2Header:
        """The current header with this bitmaps extension (None: none) and autoclear bit."""
        exts = [(t, d) for t, d in self.header.extensions if t != QCOW2_EXT_MAGIC_BITMAPS]
        if ext is not None:
            at = next((i for i, (t, _) in enumerate(exts) if t == QCOW2_EXT_MAGIC_FEATURE_TABLE),
                      len(exts))
            exts.insert(at, (QCOW2_EXT_MAGIC_BITMAPS, ext.pack()))
        fields = dict(self.header.fields)
        autoclear = fields["autoclear_features"] & ~QCOW2_AUTOCLEAR_BITMAPS
        if ext is not None and not clear_autoclear:
            autoclear |= QCOW2_AUTOCLEAR_BITMAPS
        fields["autoclear_features"] = autoclear
        return Qcow2Header(fields, exts, self.header.backing_name, self.header.raw_tail)

    def _rewrite_header(self, new: Qcow2Header, subject: str = "header") -> None:
        """Write the header area in one pwrite (a kill leaves the old or the new one),
        then flush.  The feature table is informational and goes first if space is short."""
        # Growth may have moved the refcount table since open: the header must say where.
        new.fields.update(refcount_table_offset=self.refcounts.table_offset,
                          refcount_table_clusters=self.refcounts.table_clusters)
        limit = min(MAX_HEADER_AREA_WRITE, self.cluster_size)
        area = pack_header_area(new)
        if len(area) > limit:
            new.extensions = [(t, d) for t, d in new.extensions
                              if t != QCOW2_EXT_MAGIC_FEATURE_TABLE]
            area = pack_header_area(new)
        if len(area) > limit:
            raise image_error(self.path, "%s needs %d bytes, more than the %d that can be "
                              "written at once" % (subject, len(area), limit), len(area))
        old_len = len(pack_header_area(self.header))
        self.io.pwrite(area.ljust(min(limit, max(old_len, len(area))), b"\0"), 0)
        self.io.fsync()
        self.header = new
