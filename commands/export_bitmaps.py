"""Dirty bitmaps exported over NBD: ``block-export-add``'s ``bitmaps`` and
``nbd-server-add``'s ``bitmap`` (QEMU 7.2's nbd/server.c nbd_export_create).

Each entry names a bitmap either as a string (searched on the exported node, then
down its backing chain, as QEMU's bdrv_filter_or_cow_bs walk does) or as
``{node, name}`` (block_dirty_bitmap_lookup).  The export offers it as the meta
context ``qemu:dirty-bitmap:<name>`` and holds it busy until the export goes, so
nobody clears or removes it under a client.  A read-only export refuses a bitmap
that is still recording on a writable node: its bits would change under the reader
(QEMU's "Enabled bitmap ... incompatible with readonly export").
"""
from images.chain import chain_of
from images.dirty_bitmap import CHECK_ALLOW_RO, BitmapError

from .errors import CommandError

CONTEXT_PREFIX = "qemu:dirty-bitmap:"


def resolve(table, image, entries, writable):
    """[(context name, DirtyBitmap)] for the ``bitmaps`` entries, checked as QEMU does."""
    resolved = []
    for entry in entries:
        if isinstance(entry, str):
            name, bitmap = entry, _in_chain(image, entry, writable)
        else:
            name, bitmap = entry["name"], _by_node(table, entry["node"], entry["name"])
        try:
            bitmap.check(CHECK_ALLOW_RO)
        except BitmapError as err:
            raise CommandError(err.desc) from None
        resolved.append((CONTEXT_PREFIX + name, bitmap))
    return resolved


def _in_chain(image, name, writable):
    for layer in chain_of(image):
        bitmap = layer.dirty_bitmaps.find(name)
        if bitmap is not None:
            if not writable and not layer.read_only and bitmap.enabled:
                raise CommandError("Enabled bitmap '%s' incompatible with readonly export"
                                   % name)
            return bitmap
    raise CommandError("Bitmap '%s' is not found" % name)


def _by_node(table, node, name):
    try:
        image = table.lookup(node, node)
    except CommandError:
        raise CommandError("Node '%s' not found" % node) from None
    bitmap = image.dirty_bitmaps.find(name)
    if bitmap is None:
        raise CommandError("Dirty bitmap '%s' not found" % name)
    return bitmap


def hold(resolved):
    """Mark the exported bitmaps busy (after every check passed, as QEMU does)."""
    for _context, bitmap in resolved:
        bitmap.busy = True


def let_go(resolved):
    for _context, bitmap in resolved:
        bitmap.busy = False


def extents(bitmap, offset, length, limit):
    """(length, flags) descriptors of [offset, offset+length): 1 (NBD_STATE_DIRTY)
    where the bitmap is dirty, 0 where clean, at most ``limit`` of them (nbd/server.c
    bitmap_to_extents)."""
    out, pos, end = [], offset, offset + length
    for start, n in bitmap.extents(offset, length):
        if start > pos:
            out.append((start - pos, 0))
        out.append((n, 1))
        pos = start + n
    if pos < end:
        out.append((end - pos, 0))
    return out[:limit]
