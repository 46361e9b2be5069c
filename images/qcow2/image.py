"""The qcow2 image: open (validated), read, block status, write, zero, discard,
rewrite the backing reference, info; and ``create_qcow2``.

The header lives in format, refcounts in refcount, address translation
in tables, the write paths in writer.  This class ties them to one file
and one lock.  It never opens the backing file: whoever opens the chain sets
``self.backing``.
"""
import os
import zlib
from typing import List, Optional

from ..driver import DATA, UNALLOCATED, BlockImage, Run
from ..errors import ImageError
from ..locking import CREATE, lock_file
from .format import (HEADER_STRUCT, MAX_BACKING_NAME, MAX_CLUSTER_BITS,
                           MAX_HEADER_AREA_WRITE, MIN_CLUSTER_BITS, QCOW2_COMPAT_LAZY_REFCOUNTS,
                           QCOW2_COMPRESSION_TYPE_ZSTD, QCOW2_EXT_MAGIC_FEATURE_TABLE, QCOW2_INCOMPAT_CORRUPT,
                           QCOW2_INCOMPAT_DIRTY, compressed_extent, corruption,
                           MAX_VIRTUAL_SIZE, Qcow2Header, feature_table, image_error, new_header,
                           pack_header_area, parse_header)
from .bitmaps import Qcow2Bitmaps
from .overlap import MetadataIndex
from .refcount import RefcountManager
from .tables import COMPRESSED, AddressMap, HostFile, merged
from .batch import BatchWriter
from .compress import CompressedWriter
from .writer import Qcow2Writer

READ_CHUNK = 1 << 22     # bound on one backing read while filling a request


class Qcow2Image(Qcow2Bitmaps, Qcow2Writer, BatchWriter, CompressedWriter, BlockImage):
    """One qcow2 file (version 2 or 3) of a backing chain."""

    format_name = "qcow2"

    def __init__(self, path: str, read_only: bool):
        super().__init__(path, read_only)
        self.io = None
        self.header: Optional[Qcow2Header] = None
        self._last_compressed = (None, b"")

    @classmethod
    def open(cls, path: str, read_only: bool = False, locking: bool = True,
             filename: Optional[str] = None) -> "Qcow2Image":
        """Open and lock ``path`` in the role of its mode; ``filename`` is the name the
        lock error's hint prints (default ``path``), ``locking=False`` is file.locking=off."""
        image = cls(path, read_only)
        image.io = HostFile(path, writable=not read_only)
        try:
            image.file_lock = lock_file(image.io.fd, filename or path,
                                        image.wanted_permissions(), locking)
            image._load()
        except BaseException:
            image.io.close()
            raise
        return image

    def _load(self) -> None:
        file_size = self.io.size()
        head = self.io.pread(HEADER_STRUCT.size, 0)
        bits = int.from_bytes(head[20:24], "big") if len(head) >= 24 else 0
        if MIN_CLUSTER_BITS <= bits <= MAX_CLUSTER_BITS:
            head = self.io.pread(1 << bits, 0)
        header = parse_header(head, self.path, file_size)
        self.header = header
        self.virtual_size = header.size & ~511   # QEMU counts whole sectors of the header size
        self.cluster_size = header.cluster_size
        self.backing_name = header.backing_name
        self.backing_format = header.backing_format
        if header.compression_type == QCOW2_COMPRESSION_TYPE_ZSTD:
            try:
                import zstandard  # noqa: F401  (optional dependency)
            except ImportError:
                raise image_error(self.path, "zstd compression needs the 'zstandard' package",
                                  "zstd") from None
        if not self.read_only:
            self._check_can_write()
        self.map = AddressMap(self.io, self.path, header.cluster_bits, header.l1_table_offset,
                              header.l1_size, header.size)
        reserved = max(header.l1_table_offset + header.l1_size * 8,
                       header.refcount_table_offset + header.refcount_table_clusters
                       * header.cluster_size)
        self.refcounts = RefcountManager(
            self.io, self.path, header.cluster_bits, header.refcount_order,
            header.refcount_table_offset, header.refcount_table_clusters, file_size, reserved)
        self.overlap = MetadataIndex(self.path, self.map, self.refcounts)
        self._load_bitmaps()

    def _check_can_write(self) -> None:
        h = self.header
        if h.incompatible_features & QCOW2_INCOMPAT_CORRUPT:
            raise image_error(self.path, "image is marked corrupt; refusing to write", "corrupt")
        if h.incompatible_features & QCOW2_INCOMPAT_DIRTY:
            raise image_error(self.path, "image is dirty (lazy refcounts); refusing to write",
                              "dirty")
        if h.nb_snapshots:
            raise image_error(self.path, "image has %d internal snapshots; refusing to write"
                              % h.nb_snapshots, h.nb_snapshots)

    # -- reads -------------------------------------------------------------
    def _check_range(self, offset: int, length: int) -> None:
        if self.io is None:
            raise image_error(self.path, "image is closed", None)
        if offset < 0 or length < 0 or offset + length > self.virtual_size:
            raise image_error(self.path, "request at offset %d length %d outside the virtual "
                              "size %d" % (offset, length, self.virtual_size), offset)

    def read(self, offset: int, length: int) -> bytes:
        with self.lock:
            self._check_range(offset, length)
            return self._read_layer(offset, length)

    def _read_layer(self, offset: int, length: int) -> bytes:
        """This layer's bytes, falling through to the backing image; pieces are joined
        once (a single plain run is returned as read, without a copy)."""
        pieces = []
        runs = merged(self.map.runs(offset, length), keep_compressed=True)
        for kind, pos, n, host, entry in runs:
            if kind == DATA:
                got = self.io.pread(n, host)
                pieces.append(got if len(got) == n else got + bytes(n - len(got)))
            elif kind == UNALLOCATED:
                pieces.append(self._backing_read(pos, n))
            elif kind == COMPRESSED:
                within = pos & (self.cluster_size - 1)
                pieces.append(self._decompress(entry)[within:within + n])
            else:
                pieces.append(bytes(n))
        return pieces[0] if len(pieces) == 1 else b"".join(pieces)

    def _backing_read(self, offset: int, length: int) -> bytes:
        """Bytes of the backing image, zeros where there is none or past its end."""
        if self.backing is None or offset >= self.backing.virtual_size:
            return bytes(length)
        n = min(length, self.backing.virtual_size - offset)
        return self.backing.read(offset, n) + bytes(length - n)

    def _decompress(self, entry: int) -> bytes:
        if self._last_compressed[0] == entry:
            return self._last_compressed[1]
        coffset, csize = compressed_extent(entry, self.header.cluster_bits)
        raw = self.io.pread(csize, coffset)
        try:
            if self.header.compression_type == QCOW2_COMPRESSION_TYPE_ZSTD:
                import zstandard
                with zstandard.ZstdDecompressor().stream_reader(raw) as reader:
                    data = reader.read(self.cluster_size)
            else:
                data = zlib.decompressobj(-12).decompress(raw, self.cluster_size)
        except Exception as err:    # zlib.error, zstandard.ZstdError: corrupt input
            raise corruption(self.path, "compressed cluster at %#x is corrupt (%s)"
                              % (coffset, err), coffset) from err
        if len(data) < self.cluster_size:
            raise corruption(self.path, "compressed cluster at %#x decompresses to %d bytes"
                              % (coffset, len(data)), coffset)
        data = data[:self.cluster_size]
        self._last_compressed = (entry, data)
        return data

    def block_status(self, offset: int, length: int) -> List[Run]:
        with self.lock:
            self._check_range(offset, length)
            return [Run(kind, pos, n, host) for kind, pos, n, host, _ in
                    merged(self.map.runs(offset, length))]

    def data_fd(self) -> Optional[int]:
        return None if self.io is None else self.io.fd

    def status_generation(self) -> Optional[int]:
        return self.map.generation      # bumped by every change of an L1 or L2 entry

    def takes_batch_copy(self) -> bool:
        return self.io is not None and not self.read_only

    # -- housekeeping ------------------------------------------------------
    def flush(self) -> None:
        with self.lock:
            if self.io is not None and not self.read_only:
                self.io.fsync()

    def close(self) -> None:
        with self.lock:
            if self.io is not None:
                try:
                    self._store_bitmaps()
                finally:
                    self.io.close()     # the kernel drops the lock bytes with the description
                    self.io, self.file_lock = None, None

    def make_empty(self) -> None:
        """Every L2 entry to 0 (unallocated, the backing file shows through), as QEMU's
        qcow2_make_empty after HMP commit; entries go before refcounts (a kill leaks)."""
        with self.lock:
            self._check_writable()
            self._set_clusters(0, self.virtual_size, 0)

    def set_read_only(self, read_only: bool) -> None:
        with self.lock:
            if read_only == self.read_only:
                return
            if not read_only:
                self._check_can_write()
            io = HostFile(self.path, writable=not read_only)
            try:
                new_lock = self._lock_reopened(io.fd, read_only)
                if read_only:
                    self._bitmaps_going_read_only()
                    self.io.fsync()
            except BaseException:
                io.close()
                raise
            self.io.close()
            self.io = self.map.io = self.refcounts.io = io
            self.read_only, self.file_lock = read_only, new_lock
            if not read_only:
                self._bitmaps_now_writable()

    def set_backing_reference(self, name: Optional[str], fmt: Optional[str]) -> None:
        with self.lock:
            self._check_writable()
            name_len = len(name.encode("utf-8", "surrogateescape")) if name is not None else 0
            if name_len > MAX_BACKING_NAME:
                raise image_error(self.path, "backing file name of %d bytes exceeds %d"
                                  % (name_len, MAX_BACKING_NAME), name)
            self._rewrite_header(self.header.with_backing(name, fmt if name is not None else None),
                                 "header with backing file %r" % name)
            self.backing_name = name
            self.backing_format = self.header.backing_format

    def info(self) -> dict:
        with self.lock:
            h = self.header
            st = os.stat(self.path)
            return {
                "format": "qcow2",
                "virtual-size": self.virtual_size,
                "cluster-size": self.cluster_size,
                "actual-size": st.st_blocks * 512,
                "backing-filename": self.backing_name,
                "backing-filename-format": self.backing_format,
                "format-specific": {
                    "compat": "1.1" if h.version == 3 else "0.10",
                    "compression-type": "zstd" if h.compression_type else "zlib",
                    "lazy-refcounts": bool(h.compatible_features & QCOW2_COMPAT_LAZY_REFCOUNTS),
                    **({"bitmaps": self.stored_bitmaps_info()} if self._bitmap_entries else {}),
                    "refcount-bits": h.refcount_bits,
                    "corrupt": bool(h.incompatible_features & QCOW2_INCOMPAT_CORRUPT),
                    "extended-l2": False,
                },
                "dirty-flag": bool(h.incompatible_features & QCOW2_INCOMPAT_DIRTY),
            }


def create_qcow2(path: str, virtual_size: int, cluster_size: int = 65536,
                 backing_name: Optional[str] = None,
                 backing_format: Optional[str] = None, filename: Optional[str] = None) -> None:
    """Create (or truncate) ``path``: empty qcow2 v3, 16-bit refcounts; held elsewhere: ImageLockError."""
    bits = cluster_size.bit_length() - 1
    if cluster_size != 1 << bits or not MIN_CLUSTER_BITS <= bits <= MAX_CLUSTER_BITS:
        raise image_error(path, "cluster size %d is not a power of two from 512 to 2M"
                          % cluster_size, cluster_size)
    if not 0 <= virtual_size <= MAX_VIRTUAL_SIZE:
        raise image_error(path, "virtual size %d out of range" % virtual_size, virtual_size)
    virtual_size = -(-virtual_size // 512) * 512    # as qemu-img create: whole sectors
    name_len = len((backing_name or "").encode("utf-8", "surrogateescape"))
    if name_len > MAX_BACKING_NAME:      # QEMU refuses to open such an image
        raise image_error(path, "backing file name length %d exceeds %d bytes"
                          % (name_len, MAX_BACKING_NAME), name_len)
    l1_size = -(-virtual_size // (cluster_size * (cluster_size // 8)))
    l1_clusters = max(1, -(-l1_size * 8 // cluster_size))
    per_block = cluster_size * 8 // 16
    table_clusters, blocks = 1, 1
    while True:    # header, refcount table, refcount blocks, L1 table: a fixed point
        total = 1 + table_clusters + blocks + l1_clusters
        need_blocks = -(-total // per_block)
        need_table = -(-need_blocks * 8 // cluster_size)
        if (need_blocks, need_table) == (blocks, table_clusters):
            break
        blocks, table_clusters = need_blocks, need_table
    l1_offset = (1 + table_clusters + blocks) * cluster_size
    header = Qcow2Header(new_header(bits, virtual_size, l1_size, l1_offset, cluster_size,
                                    table_clusters), [], None, b"\0" * 7)
    header = header.with_backing(backing_name, backing_format)
    area = pack_header_area(header)
    if len(area) > cluster_size:
        raise image_error(path, "backing file name %r does not fit in the header cluster"
                          % backing_name, backing_name)
    with_features = Qcow2Header(header.fields, header.extensions +
                                [(QCOW2_EXT_MAGIC_FEATURE_TABLE, feature_table())],
                                header.backing_name, header.raw_tail)
    if len(pack_header_area(with_features)) <= min(cluster_size, MAX_HEADER_AREA_WRITE):
        area = pack_header_area(with_features)
    _write_new_file(path, area, cluster_size, table_clusters, blocks, total, filename or path)


def _write_new_file(path: str, area: bytes, cluster_size: int, table_clusters: int,
                    blocks: int, total: int, filename: str) -> None:
    table = b"".join(((1 + table_clusters + i) * cluster_size).to_bytes(8, "big")
                     for i in range(blocks))
    counts = bytearray(blocks * cluster_size)
    counts[:total * 2] = b"\0\1" * total
    io = None
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
        os.close(fd)
        io = HostFile(path, writable=True)
        # QEMU's raw_co_create: lock and check before the file loses a byte
        lock_file(io.fd, filename, CREATE)
        os.ftruncate(io.fd, 0)
        io.pwrite(area, 0)
        io.pwrite(table, cluster_size)
        io.pwrite(bytes(counts), (1 + table_clusters) * cluster_size)
        os.ftruncate(io.fd, total * cluster_size)
        io.fsync()
    except OSError as err:
        raise ImageError("Could not create '%s': %s" % (path, err.strerror), path=path,
                         value=err.errno) from err
    finally:
        if io is not None:
            io.close()
