"""The qcow2 bitmaps extension on disk: header extension, bitmap directory, bitmap tables.

Pure functions, bytes in and out, with the checks QEMU applies when it reads them
(block/qcow2.c qcow2_read_extensions, block/qcow2-bitmap.c bitmap_list_load,
check_dir_entry, check_table_entry); names follow docs/interop/qcow2.txt
("Bitmaps extension") and qcow2-bitmap.c so each line can be checked against them.
"""
import struct
from dataclasses import dataclass
from typing import List, Optional

from .format import image_error, qemu_refusal

QCOW2_AUTOCLEAR_BITMAPS = 1 << 0      # autoclear bit 0: the extension data is consistent
QCOW2_MAX_BITMAPS = 65535
QCOW2_MAX_BITMAP_DIRECTORY_SIZE = 1024 * QCOW2_MAX_BITMAPS

# Header extension 0x23852875: nb_bitmaps, reserved32, bitmap_directory_size, _offset.
BITMAPS_EXT = struct.Struct(">IIQQ")
# Directory entry: bitmap_table_offset, bitmap_table_size, flags, type,
# granularity_bits, name_size, extra_data_size; then extra data, name, padding to 8.
DIR_ENTRY = struct.Struct(">QIIBBHI")

BME_MAX_TABLE_SIZE = 0x8000000
BME_MAX_PHYS_SIZE = 0x20000000
BME_MAX_GRANULARITY_BITS = 31
BME_MIN_GRANULARITY_BITS = 9
BME_MAX_NAME_SIZE = 1023
BME_RESERVED_FLAGS = 0xFFFFFFFC
BME_FLAG_IN_USE = 1 << 0
BME_FLAG_AUTO = 1 << 1
BME_TABLE_ENTRY_RESERVED_MASK = 0xFF000000000001FE
BME_TABLE_ENTRY_OFFSET_MASK = 0x00FFFFFFFFFFFE00
BME_TABLE_ENTRY_FLAG_ALL_ONES = 1 << 0
BT_DIRTY_TRACKING_BITMAP = 1


@dataclass
class BitmapsExt:
    nb_bitmaps: int = 0
    directory_size: int = 0
    directory_offset: int = 0

    def pack(self) -> bytes:
        return BITMAPS_EXT.pack(self.nb_bitmaps, 0, self.directory_size, self.directory_offset)


@dataclass
class BitmapEntry:
    """One bitmap directory entry (QEMU's Qcow2Bitmap)."""
    name: str
    granularity_bits: int
    flags: int = 0
    table_offset: int = 0
    table_size: int = 0

    @property
    def in_use(self) -> bool:
        return bool(self.flags & BME_FLAG_IN_USE)

    def info(self) -> dict:
        """ImageInfoSpecificQCow2's Qcow2BitmapInfo."""
        flags = [word for bit, word in ((BME_FLAG_IN_USE, "in-use"), (BME_FLAG_AUTO, "auto"))
                 if self.flags & bit]
        return {"flags": flags, "name": self.name, "granularity": 1 << self.granularity_bits}


def check_ext_length(data: bytes, path: str) -> None:
    """QEMU checks the length before it looks at the autoclear bit."""
    if len(data) != BITMAPS_EXT.size:
        raise qemu_refusal(path, "bitmaps_ext: Invalid extension length", len(data))


def parse_ext(data: bytes, cluster_size: int, path: str) -> BitmapsExt:
    """The extension's fields, refused as QEMU's qcow2_read_extensions refuses them at
    open, in its words ("Could not open 'PATH': bitmaps_ext: ...")."""
    check_ext_length(data, path)
    nb, reserved, size, offset = BITMAPS_EXT.unpack(data)
    if reserved:
        raise qemu_refusal(path, "bitmaps_ext: Reserved field is not zero", reserved)
    if nb > QCOW2_MAX_BITMAPS:
        raise qemu_refusal(path, "bitmaps_ext: Image has %d bitmaps, exceeding the QEMU "
                           "supported maximum of %d" % (nb, QCOW2_MAX_BITMAPS), nb)
    if nb == 0:
        raise qemu_refusal(path, "found bitmaps extension with zero bitmaps", nb)
    if offset % cluster_size:
        raise qemu_refusal(path, "bitmaps_ext: invalid bitmap directory offset", offset)
    if size > QCOW2_MAX_BITMAP_DIRECTORY_SIZE:
        raise qemu_refusal(path, "bitmaps_ext: bitmap directory size (%d) exceeds the maximum "
                           "supported size (%d)" % (size, QCOW2_MAX_BITMAP_DIRECTORY_SIZE), size)
    return BitmapsExt(nb, size, offset)


def entry_size(name_size: int, extra_size: int = 0) -> int:
    return (DIR_ENTRY.size + name_size + extra_size + 7) & ~7


def table_size(virtual_size: int, granularity_bits: int, cluster_size: int) -> int:
    """Bitmap table entries needed: one per cluster of bitmap data."""
    granules = -(-virtual_size >> granularity_bits)
    return -(-granules // (cluster_size * 8))


def parse_directory(buf: bytes, ext: BitmapsExt, cluster_size: int, virtual_size: int,
                    path: str) -> List[BitmapEntry]:
    """bitmap_list_load: every entry checked; a broken directory refuses the image."""
    entries, pos = [], 0
    while pos < len(buf):
        if pos + DIR_ENTRY.size > len(buf):
            raise image_error(path, "Broken bitmap directory", pos)
        if len(entries) >= ext.nb_bitmaps:
            raise image_error(path, "More bitmaps found than specified in header extension",
                              len(entries))
        offset, size, flags, kind, bits, name_size, extra = DIR_ENTRY.unpack_from(buf, pos)
        end = pos + entry_size(name_size, extra)
        if end > len(buf):
            raise image_error(path, "Broken bitmap directory", pos)
        if extra:
            raise image_error(path, "Bitmap extra data is not supported", extra)
        name_start = pos + DIR_ENTRY.size
        name = bytes(buf[name_start:name_start + name_size]).decode("utf-8", "replace")
        entry = BitmapEntry(name, bits, flags, offset, size)
        if not entry_ok(entry, kind, name_size, cluster_size, virtual_size):
            raise image_error(path, "Bitmap '%s' doesn't satisfy the constraints" % name, name)
        entries.append(entry)
        pos = end
    if len(entries) != ext.nb_bitmaps:
        raise image_error(path, "Less bitmaps found than specified in header extension",
                          len(entries))
    return entries


def entry_ok(e: BitmapEntry, kind: int, name_size: int, cluster_size: int,
             virtual_size: int) -> bool:
    """check_dir_entry."""
    if (e.table_size == 0 or e.table_offset == 0 or e.table_offset % cluster_size
            or e.table_size > BME_MAX_TABLE_SIZE
            or not BME_MIN_GRANULARITY_BITS <= e.granularity_bits <= BME_MAX_GRANULARITY_BITS
            or e.flags & BME_RESERVED_FLAGS or name_size > BME_MAX_NAME_SIZE
            or kind != BT_DIRTY_TRACKING_BITMAP):
        return False
    phys = e.table_size * cluster_size
    if phys > BME_MAX_PHYS_SIZE:
        return False
    # A bitmap left IN_USE may have a table too small (the image was resized since).
    return e.in_use or virtual_size <= (phys * 8) << e.granularity_bits


def pack_directory(entries: List[BitmapEntry]) -> bytes:
    out = bytearray()
    for e in entries:
        name = e.name.encode("utf-8")
        out += DIR_ENTRY.pack(e.table_offset, e.table_size, e.flags, BT_DIRTY_TRACKING_BITMAP,
                              e.granularity_bits, len(name), 0) + name
        out += bytes(-len(out) % 8)
    return bytes(out)


def parse_table(raw: bytes, cluster_size: int, path: str, name: str) -> List[int]:
    """A bitmap table's entries, each checked (check_table_entry)."""
    table = list(struct.unpack(">%dQ" % (len(raw) // 8), raw))
    for entry in table:
        offset = entry & BME_TABLE_ENTRY_OFFSET_MASK
        if entry & BME_TABLE_ENTRY_RESERVED_MASK or (
                offset and (entry & BME_TABLE_ENTRY_FLAG_ALL_ONES or offset % cluster_size)):
            raise image_error(path, "Could not read bitmap_table table from image for "
                              "bitmap '%s': Invalid argument" % name, entry)
    return table


def constraints_error(name: str, granularity: int, virtual_size: int,
                      cluster_size: int) -> Optional[str]:
    """check_constraints_on_bitmap: why a bitmap cannot be stored, or None."""
    bits = granularity.bit_length() - 1
    if bits > BME_MAX_GRANULARITY_BITS:
        return "Granularity exceeds maximum (%d bytes)" % (1 << BME_MAX_GRANULARITY_BITS)
    if bits < BME_MIN_GRANULARITY_BITS:
        return "Granularity is under minimum (%d bytes)" % (1 << BME_MIN_GRANULARITY_BITS)
    if (virtual_size > BME_MAX_PHYS_SIZE << bits
            or virtual_size > (BME_MAX_TABLE_SIZE * cluster_size) << bits):
        return "Too much space will be occupied by the bitmap. Use larger granularity"
    if len(name.encode("utf-8")) > BME_MAX_NAME_SIZE:
        return "Name length exceeds maximum (%d characters)" % BME_MAX_NAME_SIZE
    return None
