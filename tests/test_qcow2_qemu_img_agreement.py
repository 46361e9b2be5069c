"""qcow2 edge cases where qemu-img has an opinion, each judged by it: sizes qemu-img sees differently, backing names
it cannot open, and malformed refcount tables that must not make a write hang."""
import os
import random
import struct

import pytest
from hypothesis import given, settings, strategies as st

from conftest import run
from images.chain import open_image
from images.errors import ImageError
from images.qcow2 import Qcow2Image, create_qcow2
from images.qcow2.refcount import RefcountBlockCodec, RefcountManager


def _qemu_virtual_size(path):
    import json
    return json.loads(run("qemu-img", "info", "--output=json", path).stdout)["virtual-size"]


# -- virtual sizes: QEMU counts whole 512-byte sectors --------------------------

def test_create_rounds_an_unaligned_size_up_like_qemu_img(qemu_img, tmp_path):
    ours, theirs = str(tmp_path / "ours.qcow2"), str(tmp_path / "theirs.qcow2")
    create_qcow2(ours, 1000)
    run(qemu_img, "create", "-q", "-f", "qcow2", theirs, "1000")
    image = Qcow2Image.open(ours)
    assert image.virtual_size == 1024 == _qemu_virtual_size(theirs)
    image.write(0, b"\x55" * 1024)
    image.close()
    assert _qemu_virtual_size(ours) == 1024
    run(qemu_img, "convert", "-O", "raw", ours, str(tmp_path / "out.raw"))
    assert open(str(tmp_path / "out.raw"), "rb").read() == b"\x55" * 1024


def test_open_sees_the_size_qemu_sees(qemu_img, tmp_path):
    path = str(tmp_path / "odd.qcow2")
    create_qcow2(path, 4096)
    with open(path, "r+b") as f:        # a header size that is not a multiple of 512
        f.seek(24)
        f.write(struct.pack(">Q", 1000))
    assert _qemu_virtual_size(path) == 512
    image = Qcow2Image.open(path, read_only=True)
    assert image.virtual_size == 512
    image.close()


# -- backing names: the spec allows 1023 bytes ---------------------------------

def test_create_refuses_a_backing_name_qemu_cannot_open(qemu_img, tmp_path):
    path = str(tmp_path / "top.qcow2")
    name = "d/" + "b" * 1022
    with pytest.raises(ImageError) as err:
        create_qcow2(path, 1 << 20, backing_name=name, backing_format="qcow2")
    assert err.value.desc == ("Image %s: backing file name length 1024 exceeds 1023 bytes"
                              % path)
    assert not os.path.exists(path)


def test_create_accepts_a_backing_name_of_1023_bytes(qemu_img, tmp_path):
    path = str(tmp_path / "top.qcow2")
    name = "d/" + "b" * 1021
    create_qcow2(path, 1 << 20, backing_name=name, backing_format="qcow2")
    image = Qcow2Image.open(path, read_only=True)
    assert image.backing_name == name
    image.close()
    import json
    info = json.loads(run(qemu_img, "info", "--output=json", path).stdout)
    assert info["backing-filename"] == name


# -- malformed refcounts must not make a write hang -----------------------------

def test_write_when_refcounts_claim_every_cluster_is_bounded(qemu_img, tmp_path, monkeypatch):
    """Every refcount table entry points at one block full of 0xffff: each cluster
    the table covers (512 blocks of 2048 clusters) looks used.  The allocator must
    search per block, not per cluster, and place the write past what the table covers."""
    path = str(tmp_path / "claimed.qcow2")
    create_qcow2(path, 1 << 20, cluster_size=4096)
    with open(path, "r+b") as f:
        f.seek(48)
        table_offset, = struct.unpack(">Q", f.read(8))
        f.seek(0, os.SEEK_END)
        block = f.tell()
        f.write(b"\xff" * 4096)
        f.seek(table_offset)
        f.write(struct.pack(">Q", block) * 512)
    lookups = []
    original = RefcountManager._block

    def counting(self, index):
        lookups.append(index)
        return original(self, index)

    monkeypatch.setattr(RefcountManager, "_block", counting)
    image = open_image(path)
    image.write(4096, b"\x42" * 5000)
    assert len(lookups) < 10 * 512
    assert image.read(4096, 5000) == b"\x42" * 5000
    image.close()


class _MemoryFile:
    def __init__(self, data):
        self.data = bytearray(data)

    def pread(self, length, offset):
        return bytes(self.data[offset:offset + length])


@settings(max_examples=60, deadline=None)
@given(order=st.integers(0, 6), seed=st.integers(0, 1 << 30), density=st.sampled_from(
    [0.0, 0.3, 0.9, 1.0]), start=st.integers(0, 5000), count=st.integers(1, 700))
def test_free_run_search_matches_a_cluster_by_cluster_search(order, seed, density, start, count):
    """The per-block search finds exactly the first free run the plain scan finds."""
    rnd = random.Random(seed)
    bits, csize, blocks = 1 << order, 512, 3
    per_block = csize * 8 // bits
    table = b"".join(struct.pack(">Q", (2 + i) * csize) if i != 1 else bytes(8)
                     for i in range(blocks))
    image = bytearray(table.ljust(2 * csize, b"\0"))
    codec = RefcountBlockCodec(bits)
    for _ in range(blocks):
        block = bytearray(csize)
        codec.set_range(block, 0, [rnd.randrange(1, codec.max_value + 1)
                                   if rnd.random() < density else 0 for _ in range(per_block)])
        image += block
    manager = RefcountManager(_MemoryFile(image), "mem", 9, order, 0, 1, len(image), 0)
    expected = start
    while any(manager.get(c) for c in range(expected, expected + count)):
        expected += 1
    assert manager._free_run(start, count) == expected     # pylint: disable=protected-access


# -- rewriting the backing reference ----------------------------------------------

def test_set_backing_reference_after_the_refcount_table_moved(qemu_img, tmp_path):
    """Growth moves the refcount table; the header rewrite must point at the new one."""
    base, top = str(tmp_path / "base.qcow2"), str(tmp_path / "top.qcow2")
    create_qcow2(base, 16 << 20, cluster_size=512)
    create_qcow2(top, 16 << 20, cluster_size=512, backing_name="base.qcow2",
                 backing_format="qcow2")
    image = open_image(top)
    before = image.refcounts.table_offset
    image.write(0, b"\x61" * (12 << 20))
    assert image.refcounts.table_offset != before
    image.set_backing_reference(None, None)
    image.close()
    result = run(qemu_img, "check", top, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    run(qemu_img, "convert", "-O", "raw", top, str(tmp_path / "out.raw"))
    with open(str(tmp_path / "out.raw"), "rb") as f:
        assert f.read(12 << 20) == b"\x61" * (12 << 20)


def test_set_backing_reference_with_512_byte_clusters(qemu_img, tmp_path):
    """Header, feature table and a backing name do not fit in 512 bytes: the feature
    table (informational; QEMU omits it at this size) gives way."""
    base, top = str(tmp_path / "base.qcow2"), str(tmp_path / "top.qcow2")
    run(qemu_img, "create", "-q", "-f", "qcow2", base, "1M")
    create_qcow2(top, 1 << 20, cluster_size=512)
    image = open_image(top)
    image.set_backing_reference("base.qcow2", "qcow2")
    image.close()
    import json
    info = json.loads(run(qemu_img, "info", "--output=json", top).stdout)
    assert (info["backing-filename"], info["backing-filename-format"]) == ("base.qcow2", "qcow2")
    assert run(qemu_img, "check", top, check=False).returncode == 0
