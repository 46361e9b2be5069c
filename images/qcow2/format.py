"""The qcow2 on-disk header: its struct, the spec's constants, header extensions, validation.

Everything here is pure: bytes in, a ``Qcow2Header`` out (or bytes back).  Names
follow QEMU's docs/interop/qcow2.txt and block/qcow2.h so each line can be checked
against the spec.  Validation happens once, at parse time, and every refusal is an
``ImageError`` with one line naming the file and the offending value.
"""
import struct
from dataclasses import dataclass, field
from typing import List, Optional, Tuple

from ..errors import ImageCorruptError, ImageError

QCOW2_MAGIC = b"QFI\xfb"

# Header fields in file order.  Version 2 ends after snapshots_offset (72 bytes);
# version 3 adds the feature words, refcount order, header length and (when the
# header is at least 105 bytes long) the compression type.
HEADER_FIELDS = (
    ("4s", "magic"), ("I", "version"), ("Q", "backing_file_offset"),
    ("I", "backing_file_size"), ("I", "cluster_bits"), ("Q", "size"),
    ("I", "crypt_method"), ("I", "l1_size"), ("Q", "l1_table_offset"),
    ("Q", "refcount_table_offset"), ("I", "refcount_table_clusters"),
    ("I", "nb_snapshots"), ("Q", "snapshots_offset"),
    ("Q", "incompatible_features"), ("Q", "compatible_features"),
    ("Q", "autoclear_features"), ("I", "refcount_order"), ("I", "header_length"),
    ("B", "compression_type"),
)
HEADER_STRUCT = struct.Struct(">" + "".join(f for f, _ in HEADER_FIELDS))
HEADER_NAMES = tuple(name for _, name in HEADER_FIELDS)
V2_HEADER_LENGTH = 72
V3_MIN_HEADER_LENGTH = 104
V3_HEADER_LENGTH = 112          # what QEMU writes: 104 + compression type + padding
# Offsets used for small in-place header updates.
REFCOUNT_TABLE_FIELDS = struct.Struct(">QI")   # refcount_table_offset + _clusters
REFCOUNT_TABLE_FIELDS_OFFSET = 48
INCOMPATIBLE_FEATURES_OFFSET = 72
AUTOCLEAR_FEATURES_OFFSET = 88

EXT_HEADER = struct.Struct(">II")              # type, length
QCOW2_EXT_MAGIC_END = 0
QCOW2_EXT_MAGIC_BACKING_FORMAT = 0xE2792ACA
QCOW2_EXT_MAGIC_FEATURE_TABLE = 0x6803F857
QCOW2_EXT_MAGIC_CRYPTO_HEADER = 0x0537BE77
QCOW2_EXT_MAGIC_BITMAPS = 0x23852875
QCOW2_EXT_MAGIC_DATA_FILE = 0x44415441

QCOW2_INCOMPAT_DIRTY = 1 << 0
QCOW2_INCOMPAT_CORRUPT = 1 << 1
QCOW2_INCOMPAT_DATA_FILE = 1 << 2
QCOW2_INCOMPAT_COMPRESSION = 1 << 3
QCOW2_INCOMPAT_EXTL2 = 1 << 4
QCOW2_INCOMPAT_MASK = 0x1F
QCOW2_COMPAT_LAZY_REFCOUNTS = 1 << 0
BACKING_FORMAT_BUFFER = 16              # sizeof(bs->backing_format)
QCOW_SNAPSHOT_HEADER_SIZE = 40          # sizeof(QCowSnapshotHeader)
INT64_MAX = (1 << 63) - 1
QCOW2_COMPRESSION_TYPE_ZLIB = 0
QCOW2_COMPRESSION_TYPE_ZSTD = 1

QCOW_OFLAG_COPIED = 1 << 63
QCOW_OFLAG_COMPRESSED = 1 << 62
QCOW_OFLAG_ZERO = 1 << 0
L1E_OFFSET_MASK = 0x00FFFFFFFFFFFE00
L2E_OFFSET_MASK = 0x00FFFFFFFFFFFE00
REFT_OFFSET_MASK = 0xFFFFFFFFFFFFFE00
QCOW2_COMPRESSED_SECTOR_SIZE = 512

MIN_CLUSTER_BITS = 9
MAX_CLUSTER_BITS = 21
MAX_REFCOUNT_ORDER = 6
MAX_BACKING_NAME = 1023
QCOW_MAX_L1_SIZE = 1 << 25              # bytes, as QEMU
QCOW_MAX_REFTABLE_SIZE = 1 << 23        # bytes, as QEMU
QCOW_MAX_SNAPSHOTS = 65536
MAX_HEADER_AREA_WRITE = 4096            # one pwrite: a kill leaves old or new
MAX_VIRTUAL_SIZE = 1 << 61              # keeps offset arithmetic inside L2E_OFFSET_MASK

# QEMU's feature name table, written on create so qemu-img shows the same names.
FEATURE_NAMES = (
    (0, 0, "dirty bit"), (0, 1, "corrupt bit"), (0, 2, "external data file"),
    (0, 3, "compression type"), (0, 4, "extended L2 entries"),
    (1, 0, "lazy refcounts"), (2, 0, "bitmaps"), (2, 1, "raw external data"),
)
FEATURE_ENTRY = struct.Struct(">BB46s")


def compressed_extent(entry: int, cluster_bits: int) -> Tuple[int, int]:
    """(host offset, byte count) of the compressed data an L2 entry points at (spec:
    "Compressed Clusters Descriptor"; the count is whole sectors less the first's head)."""
    shift = 62 - (cluster_bits - 8)
    offset = entry & ((1 << shift) - 1)
    sectors = ((entry >> shift) & ((1 << (cluster_bits - 8)) - 1)) + 1
    return offset, sectors * QCOW2_COMPRESSED_SECTOR_SIZE - (offset & 511)


def image_error(path: str, text: str, value=None) -> ImageError:
    """The one-line refusal every check uses: 'Image PATH: TEXT'."""
    return ImageError("Image %s: %s" % (path, text), path=path, value=value)


def qemu_refusal(path: str, text: str, value=None) -> ImageError:
    """A refusal QEMU 7.2's qcow2_do_open has, in its words: 'Could not open PATH: TEXT'."""
    return ImageError("Could not open '%s': %s" % (path, text), path=path, value=value)


def corruption(path: str, text: str, value=None) -> ImageCorruptError:
    """Metadata met while reading that cannot be right: the request fails with EIO."""
    return ImageCorruptError("Image %s: %s" % (path, text), path=path, value=value)


@dataclass
class Qcow2Header:
    """The parsed header, its extensions (kept in order, unknown ones byte for byte)
    and the backing file name."""
    fields: dict
    extensions: List[Tuple[int, bytes]] = field(default_factory=list)
    backing_name: Optional[str] = None
    raw_tail: bytes = b""            # header bytes past the fields we know (v3)

    def __getattr__(self, name):
        try:
            return self.__dict__["fields"][name]
        except KeyError:
            raise AttributeError(name) from None

    @property
    def cluster_size(self) -> int:
        return 1 << self.cluster_bits

    @property
    def refcount_bits(self) -> int:
        return 1 << self.refcount_order

    @property
    def backing_format(self) -> Optional[str]:
        for ext_type, data in self.extensions:
            if ext_type == QCOW2_EXT_MAGIC_BACKING_FORMAT:
                return _c_string(data).decode("utf-8", "replace")
        return None

    def with_backing(self, name: Optional[str], fmt: Optional[str]) -> "Qcow2Header":
        """A copy naming another backing file (None drops the name and the format)."""
        exts = [(t, d) for t, d in self.extensions if t != QCOW2_EXT_MAGIC_BACKING_FORMAT]
        if name is not None and fmt is not None:
            exts.insert(0, (QCOW2_EXT_MAGIC_BACKING_FORMAT, fmt.encode("utf-8")))
        return Qcow2Header(dict(self.fields), exts, name, self.raw_tail)


def parse_header(buf: bytes, path: str, file_size: int) -> Qcow2Header:
    """Parse and validate the header area ``buf`` (the file's first cluster or less)."""
    if len(buf) < V2_HEADER_LENGTH:
        raise image_error(path, "truncated header (%d bytes)" % len(buf), len(buf))
    if buf[:4] != QCOW2_MAGIC:
        raise image_error(path, "not a qcow2 image (magic %r)" % bytes(buf[:4]), bytes(buf[:4]))
    padded = bytes(buf[:HEADER_STRUCT.size]).ljust(HEADER_STRUCT.size, b"\0")
    fields = dict(zip(HEADER_NAMES, HEADER_STRUCT.unpack(padded)))
    version = fields["version"]
    if version not in (2, 3):
        raise image_error(path, "unsupported qcow2 version %d" % version, version)
    if version == 2:
        fields.update(incompatible_features=0, compatible_features=0, autoclear_features=0,
                      refcount_order=4, header_length=V2_HEADER_LENGTH, compression_type=0)
    _check_geometry(fields, path, len(buf))
    if version == 3 and fields["header_length"] <= V3_MIN_HEADER_LENGTH:
        fields["compression_type"] = 0
    header = Qcow2Header(fields)
    if version == 3:
        header.raw_tail = bytes(buf[HEADER_STRUCT.size:fields["header_length"]])
    _check_features(fields, path)
    _check_tables(fields, path, file_size)
    header.extensions = _parse_extensions(buf, fields, path)
    header.backing_name = _parse_backing_name(buf, fields, path)
    _check_extensions(header, path)
    return header


def _check_geometry(f: dict, path: str, available: int) -> None:
    bits = f["cluster_bits"]
    if not MIN_CLUSTER_BITS <= bits <= MAX_CLUSTER_BITS:
        raise image_error(path, "cluster bits %d out of range (%d-%d)"
                          % (bits, MIN_CLUSTER_BITS, MAX_CLUSTER_BITS), bits)
    length = f["header_length"]
    if f["version"] == 3:
        if length < V3_MIN_HEADER_LENGTH or length % 8:
            raise image_error(path, "invalid header length %d" % length, length)
        if length > (1 << bits) or length > available:
            raise image_error(path, "header length %d exceeds the header cluster" % length, length)
    if f["refcount_order"] > MAX_REFCOUNT_ORDER:
        raise image_error(path, "refcount order %d above %d"
                          % (f["refcount_order"], MAX_REFCOUNT_ORDER), f["refcount_order"])
    if f["size"] > MAX_VIRTUAL_SIZE:
        raise image_error(path, "virtual size %d too large" % f["size"], f["size"])


def _check_features(f: dict, path: str) -> None:
    incompat = f["incompatible_features"]
    unknown = incompat & ~QCOW2_INCOMPAT_MASK
    if unknown:
        raise image_error(path, "unknown incompatible feature bits %#x" % unknown, unknown)
    if f["crypt_method"]:
        raise image_error(path, "encrypted images are not supported", f["crypt_method"])
    if incompat & QCOW2_INCOMPAT_DATA_FILE:
        raise image_error(path, "external data files are not supported", incompat)
    if incompat & QCOW2_INCOMPAT_EXTL2:
        raise image_error(path, "extended L2 entries are not supported", incompat)
    ctype = f["compression_type"]
    if ctype not in (QCOW2_COMPRESSION_TYPE_ZLIB, QCOW2_COMPRESSION_TYPE_ZSTD):
        raise image_error(path, "unknown compression type %d" % ctype, ctype)
    if bool(ctype) != bool(incompat & QCOW2_INCOMPAT_COMPRESSION):
        raise image_error(path, "compression type %d disagrees with the incompatible "
                          "feature bits %#x" % (ctype, incompat), ctype)


def _check_table(path: str, what: str, offset: int, nbytes: int, csize: int,
                 file_size: int) -> None:
    if offset % csize:
        raise image_error(path, "%s offset %#x not aligned to the cluster size" % (what, offset),
                          offset)
    if nbytes and (offset == 0 or offset + nbytes > file_size + csize):
        # QEMU leaves the tail of a zero table unwritten, so allow one cluster of slack.
        raise image_error(path, "%s at %#x (%d bytes) lies past the end of the file (%d bytes)"
                          % (what, offset, nbytes, file_size), offset)


def _check_tables(f: dict, path: str, file_size: int) -> None:
    csize = 1 << f["cluster_bits"]
    l2_entries = csize // 8
    needed = -(-f["size"] // (csize * l2_entries))
    l1_bytes = f["l1_size"] * 8
    if l1_bytes > QCOW_MAX_L1_SIZE:
        raise image_error(path, "L1 table of %d entries too large" % f["l1_size"], f["l1_size"])
    if f["l1_size"] < needed:
        raise image_error(path, "L1 table of %d entries too small for virtual size %d"
                          % (f["l1_size"], f["size"]), f["l1_size"])
    if l1_bytes > file_size:
        raise image_error(path, "L1 table of %d bytes larger than the file (%d bytes)"
                          % (l1_bytes, file_size), f["l1_size"])
    _check_table(path, "L1 table", f["l1_table_offset"], l1_bytes, csize, file_size)
    rt_bytes = f["refcount_table_clusters"] * csize
    if rt_bytes > QCOW_MAX_REFTABLE_SIZE or rt_bytes == 0:
        raise image_error(path, "refcount table of %d clusters out of range"
                          % f["refcount_table_clusters"], f["refcount_table_clusters"])
    _check_table(path, "refcount table", f["refcount_table_offset"], rt_bytes, csize, file_size)
    _validate_table(path, "Snapshot table", f["snapshots_offset"], f["nb_snapshots"],
                    QCOW_SNAPSHOT_HEADER_SIZE, QCOW_MAX_SNAPSHOTS, csize)
    if f["nb_snapshots"]:
        _check_table(path, "snapshot table", f["snapshots_offset"], 1, csize, file_size)


def _validate_table(path, name, offset, entries, entry_len, max_entries, csize):
    """qcow2_validate_table: QEMU checks a table's offset even when it has no entries."""
    if entries > max_entries:
        raise qemu_refusal(path, "%s too large" % name, entries)
    if INT64_MAX - entries * entry_len < offset or offset % csize:
        raise qemu_refusal(path, "%s offset invalid" % name, offset)


def _parse_extensions(buf: bytes, f: dict, path: str) -> List[Tuple[int, bytes]]:
    """qcow2_read_extensions: from the header's end to the backing name (or the end of
    the cluster); bytes past the end of the file read as zeros, i.e. as the end marker."""
    csize = 1 << f["cluster_bits"]
    if f["backing_file_offset"] > csize:
        raise qemu_refusal(path, "Invalid backing file offset", f["backing_file_offset"])
    pos, end = f["header_length"], f["backing_file_offset"] or csize
    exts = []
    while pos < end:
        if pos + EXT_HEADER.size > len(buf):
            break
        ext_type, length = EXT_HEADER.unpack_from(buf, pos)
        pos += EXT_HEADER.size
        if pos > end or length > end - pos:
            raise qemu_refusal(path, "Header extension too large", length)
        if ext_type == QCOW2_EXT_MAGIC_END:
            return exts
        if ext_type == QCOW2_EXT_MAGIC_BACKING_FORMAT and length >= BACKING_FORMAT_BUFFER:
            raise qemu_refusal(path, "ERROR: ext_backing_format: len=%d too large (>=%d)"
                               % (length, BACKING_FORMAT_BUFFER), length)
        exts.append((ext_type, bytes(buf[pos:pos + length]).ljust(length, b"\0")))
        pos += (length + 7) & ~7
    return exts     # like QEMU, the area may end without an end marker


def _parse_backing_name(buf: bytes, f: dict, path: str) -> Optional[str]:
    offset, size = f["backing_file_offset"], f["backing_file_size"]
    if offset == 0:
        return None
    if size > MAX_BACKING_NAME:
        raise image_error(path, "backing file name length %d exceeds %d bytes"
                          % (size, MAX_BACKING_NAME), size)
    if offset + size > len(buf):
        raise image_error(path, "backing file name at %#x (%d bytes) lies outside the "
                          "header cluster" % (offset, size), offset)
    # QEMU keeps the name as a C string: it ends at the first NUL of the stored bytes.
    return _c_string(buf[offset:offset + size]).decode("utf-8", "surrogateescape")


def _c_string(data) -> bytes:
    return bytes(data).split(b"\0", 1)[0]


def _check_extensions(header: Qcow2Header, path: str) -> None:
    for ext_type, data in header.extensions:
        if ext_type == QCOW2_EXT_MAGIC_CRYPTO_HEADER:
            raise image_error(path, "encrypted images are not supported", ext_type)
        if ext_type == QCOW2_EXT_MAGIC_DATA_FILE:
            raise image_error(path, "external data files are not supported", ext_type)


def pack_extensions(extensions: List[Tuple[int, bytes]]) -> bytes:
    out = bytearray()
    for ext_type, data in extensions:
        out += EXT_HEADER.pack(ext_type, len(data)) + data
        out += b"\0" * (-len(data) % 8)
    return bytes(out + EXT_HEADER.pack(QCOW2_EXT_MAGIC_END, 0))


def pack_header_area(header: Qcow2Header) -> bytes:
    """The bytes from offset 0 to the end of the backing name: fields, extensions, name."""
    f = dict(header.fields)
    if f["version"] == 2:
        fixed_len = V2_HEADER_LENGTH
    else:
        fixed_len = f["header_length"]
    exts = pack_extensions(header.extensions)
    name = (header.backing_name or "").encode("utf-8", "surrogateescape")
    f["backing_file_offset"] = fixed_len + len(exts) if header.backing_name is not None else 0
    f["backing_file_size"] = len(name)
    fixed = HEADER_STRUCT.pack(*(f[n] for n in HEADER_NAMES)) + header.raw_tail
    return fixed[:fixed_len].ljust(fixed_len, b"\0") + exts + name


def feature_table() -> bytes:
    return b"".join(FEATURE_ENTRY.pack(kind, bit, name.encode()) for kind, bit, name in FEATURE_NAMES)


def new_header(cluster_bits: int, size: int, l1_size: int, l1_offset: int,
               reftable_offset: int, reftable_clusters: int) -> dict:
    """The fields of a fresh v3 header with 16-bit refcounts and zlib compression."""
    return dict(
        magic=QCOW2_MAGIC, version=3, backing_file_offset=0, backing_file_size=0,
        cluster_bits=cluster_bits, size=size, crypt_method=0, l1_size=l1_size,
        l1_table_offset=l1_offset, refcount_table_offset=reftable_offset,
        refcount_table_clusters=reftable_clusters, nb_snapshots=0, snapshots_offset=0,
        incompatible_features=0, compatible_features=0, autoclear_features=0,
        refcount_order=4, header_length=V3_HEADER_LENGTH, compression_type=0)
