"""Metadata-overlap protection: a malformed image whose L2 entry (data cluster) or L1
entry (L2 table) points into metadata is refused for writing with one exact line,
and the file is left byte for byte unchanged.  Images are made by qemu-img/qemu-io
and then patched with struct."""
import hashlib
import os
import struct

import pytest

from conftest import run
from images.driver import Piece
from images.errors import ImageError
from images.qcow2 import Qcow2Image, create_qcow2
from images.qcow2.format import QCOW_OFLAG_COPIED
from images.qcow2.overlap import HEADER, L1_TABLE, REFCOUNT_BLOCK, REFCOUNT_TABLE

CLUSTER = 65536


def sha256(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def layout(path):
    """(l1 offset, refcount table offset, first refcount block, L1 entries, L2 of L1[0])."""
    with open(path, "rb") as f:
        head = f.read(104)
        l1_size, l1_offset, rt_offset = struct.unpack_from(">IQQ", head, 36)
        f.seek(rt_offset)
        block = struct.unpack(">Q", f.read(8))[0]
        f.seek(l1_offset)
        l1 = struct.unpack(">%dQ" % l1_size, f.read(8 * l1_size))
    return l1_offset, rt_offset, block, l1, l1[0] & 0x00FFFFFFFFFFFE00


def put_u64(path, offset, value):
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(struct.pack(">Q", value))


@pytest.fixture
def made(qemu_img, tmp_path):
    """A qemu-img image, 1 GiB (two L1 entries), 64 KiB clusters, guest clusters 0 and 1
    allocated."""
    path = str(tmp_path / "a.qcow2")
    run(qemu_img, "create", "-q", "-f", "qcow2", "-o", "cluster_size=65536", path, "1G")
    run("qemu-io", "-c", "write -P 0x5a 0 128k", path)
    return path


def refused(path, expected, action):
    """Open, read, then ``action(image)`` must raise exactly ``expected``; file unchanged."""
    before = sha256(path)
    image = Qcow2Image.open(path)
    try:
        image.read(0, 4 * CLUSTER)
        with pytest.raises(ImageError) as err:
            action(image)
    finally:
        image.close()
    assert str(err.value) == expected
    assert "\n" not in str(err.value)
    assert sha256(path) == before


def test_l2_entry_pointing_at_the_l1_table(made):
    l1, _, _, _, l2 = layout(made)
    put_u64(made, l2 + 8, l1 | QCOW_OFLAG_COPIED)          # guest cluster 1 -> L1 table
    refused(made, "Image %s: write at guest offset 65536 would overwrite the L1 table "
            "(host offset %#x); refusing (image is corrupt)" % (made, l1),
            lambda image: image.write(CLUSTER, b"x" * 512))


def test_l2_entry_pointing_into_the_header_cluster(made):
    _, _, _, _, l2 = layout(made)
    # Offset 0 means "unallocated", so point at 0x200: still the header's cluster.
    put_u64(made, l2 + 8, 0x200 | QCOW_OFLAG_COPIED)
    before = sha256(made)
    image = Qcow2Image.open(made)
    try:
        assert image.read(0, CLUSTER) == b"\x5a" * CLUSTER
        with pytest.raises(ImageError, match="not aligned"):   # reads refuse cleanly
            image.read(CLUSTER, 512)
        with pytest.raises(ImageError) as err:
            image.write(CLUSTER + 100, b"x" * 100)
    finally:
        image.close()
    assert str(err.value) == ("Image %s: write at guest offset 65636 would overwrite the "
                              "header cluster (host offset 0x0); refusing (image is corrupt)"
                              % made)
    assert sha256(made) == before


def test_l2_entry_pointing_at_a_refcount_block(made):
    _, _, block, _, l2 = layout(made)
    put_u64(made, l2 + 8, block | QCOW_OFLAG_COPIED)
    refused(made, "Image %s: write at guest offset 65536 would overwrite a refcount block "
            "(host offset %#x); refusing (image is corrupt)" % (made, block),
            lambda image: image.write(CLUSTER, b"x" * CLUSTER))


def test_l2_entry_pointing_at_an_l2_table(made):
    _, _, _, _, l2 = layout(made)
    put_u64(made, l2 + 8, l2 | QCOW_OFLAG_COPIED)           # the table itself
    refused(made, "Image %s: write at guest offset 65536 would overwrite an L2 table "
            "(host offset %#x); refusing (image is corrupt)" % (made, l2),
            lambda image: image.write(CLUSTER, b"x"))


def test_contiguous_run_checked_as_a_whole(made):
    """Clusters 0 and 1 point at the L1 table's predecessor and the L1 table: one host
    run; the check covers the run, so its second cluster is found."""
    l1, _, _, _, l2 = layout(made)
    put_u64(made, l2, (l1 - CLUSTER) | QCOW_OFLAG_COPIED)
    put_u64(made, l2 + 8, l1 | QCOW_OFLAG_COPIED)
    with open(made, "rb") as f:
        f.seek(l1 - CLUSTER)
        assert f.read(1)            # the predecessor cluster is inside the file
    expected = ("Image %s: write at guest offset 0 would overwrite " % made)
    before = sha256(made)
    image = Qcow2Image.open(made)
    with pytest.raises(ImageError) as err:
        image.write(0, b"y" * 2 * CLUSTER)
    image.close()
    assert str(err.value).startswith(expected)
    assert sha256(made) == before


@pytest.mark.parametrize("verb", ["write", "write_zeroes", "discard"])
def test_l1_entry_pointing_at_the_refcount_table(made, verb):
    l1, rt, _, _, _ = layout(made)
    put_u64(made, l1, rt | QCOW_OFLAG_COPIED)
    actions = {"write": lambda image: image.write(0, b"z" * 4096),
               "write_zeroes": lambda image: image.write_zeroes(0, 2 * CLUSTER + 7),
               "discard": lambda image: image.discard(0, 2 * CLUSTER)}
    refused(made, "Image %s: L2 table update for guest offset 0 would overwrite the "
            "refcount table (host offset %#x); refusing (image is corrupt)" % (made, rt),
            actions[verb])


def test_l1_entry_pointing_at_the_l1_table(made):
    l1, _, _, _, _ = layout(made)
    put_u64(made, l1, l1 | QCOW_OFLAG_COPIED)
    refused(made, "Image %s: L2 table update for guest offset 0 would overwrite the "
            "L1 table (host offset %#x); refusing (image is corrupt)" % (made, l1),
            lambda image: image.write(0, b"z"))


def test_write_across_tables_refused_whole(qemu_img, tmp_path):
    """The second L2 table of a write is bad: the first table's part is not written."""
    path = str(tmp_path / "b.qcow2")
    run(qemu_img, "create", "-q", "-f", "qcow2", "-o", "cluster_size=4096", path, "8M")
    run("qemu-io", "-c", "write -P 1 0 4M", path)           # tables for L1[0] and L1[1]
    l1, rt, _, _, _ = layout(path)
    put_u64(path, l1 + 8, rt | QCOW_OFLAG_COPIED)
    span = 512 * 4096
    refused(path, "Image %s: L2 table update for guest offset %d would overwrite the "
            "refcount table (host offset %#x); refusing (image is corrupt)" % (path, span, rt),
            lambda image: image.write(span - 8192, b"w" * 16384))


def test_fast_copy_path_refuses_before_copying(made, tmp_path):
    l1, rt, _, _, _ = layout(made)
    put_u64(made, l1 + 0, rt | QCOW_OFLAG_COPIED)
    source = tmp_path / "src.raw"
    source.write_bytes(b"\x77" * 2 * CLUSTER)
    fd = os.open(str(source), os.O_RDONLY)
    try:
        refused(made, "Image %s: L2 table update for guest offset 131072 would overwrite the "
                "refcount table (host offset %#x); refusing (image is corrupt)" % (made, rt),
                lambda image: image.copy_batch([Piece(2 * CLUSTER, 2 * CLUSTER, fd, 0, 0)]))
    finally:
        os.close(fd)


def test_allocator_skips_an_l2_table_past_the_end_of_the_file(made, qemu_img):
    """An L1 entry naming a table just past the end of the file: new clusters must not
    be placed on it (it reads as an empty table, and must go on doing so)."""
    l1, _, _, _, _ = layout(made)
    end = os.path.getsize(made)
    assert end % CLUSTER == 0
    put_u64(made, l1 + 8, 0)
    image = Qcow2Image.open(made)
    try:
        image.map.l1[1] = end | QCOW_OFLAG_COPIED      # as if read from the file
        image.write(2 * CLUSTER, b"n" * CLUSTER)       # needs a new cluster
        assert image.map.entries(0, 2, 1)[0] & 0x00FFFFFFFFFFFE00 > end
        assert image.read(image.map.l2_span, CLUSTER) == bytes(CLUSTER)
    finally:
        image.close()


def test_refcount_blocks_made_while_open_are_protected(tmp_path):
    """Growth adds refcount blocks and moves the table; the index follows."""
    path = str(tmp_path / "g.qcow2")
    create_qcow2(path, 16 << 20, cluster_size=512)
    image = Qcow2Image.open(path)
    first_table = image.refcounts.table_offset
    try:
        for pos in range(0, 9 << 20, 1 << 20):
            image.write(pos, b"g" * (1 << 20))
        blocks = [e for e in image.refcounts.table if e]
        assert len(blocks) > 64 and image.refcounts.table_offset != first_table
        for block in blocks:
            assert image.overlap.overlap(block + 100, 10) == (REFCOUNT_BLOCK, block)
        assert image.overlap.overlap(image.refcounts.table_offset, 1)[0] == REFCOUNT_TABLE
        assert image.overlap.overlap(image.map.l1_offset, 8)[0] == L1_TABLE
        assert image.overlap.overlap(100, 1) == (HEADER, 0)
        assert image.overlap.overlap(image.refcounts.free_index * 512, 512) is None
    finally:
        image.close()
