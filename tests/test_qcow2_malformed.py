"""Malformed images: each bad header field gives one ImageError line naming the file
and the value; fuzzed header and table bytes give ImageError or a clean result,
within bounded memory."""
import errno
import os
import struct
import tempfile
import tracemalloc

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from images.errors import ImageError, ImageIOError
from images.qcow2 import Qcow2Image, create_qcow2
from images.qcow2.format import HEADER_FIELDS

FIELD_AT = {}
_pos = 0
for _fmt, _name in HEADER_FIELDS:
    FIELD_AT[_name] = (_pos, ">" + _fmt)
    _pos += struct.calcsize(">" + _fmt)
SIZE = 256 * 1024


def good_image(path, cluster=4096):
    create_qcow2(path, SIZE, cluster_size=cluster)
    image = Qcow2Image.open(path)
    image.write(1000, b"\x11" * 20000)
    image.write_zeroes(64 * 1024, 8192)
    image.close()


def patch(path, **fields):
    with open(path, "r+b") as f:
        for name, value in fields.items():
            pos, fmt = FIELD_AT[name]
            f.seek(pos)
            f.write(struct.pack(fmt, value))


CORPUS = [
    (dict(version=4), "unsupported qcow2 version 4"),
    (dict(version=1), "unsupported qcow2 version 1"),
    (dict(cluster_bits=40), "cluster bits 40 out of range (9-21)"),
    (dict(cluster_bits=8), "cluster bits 8 out of range (9-21)"),
    (dict(incompatible_features=0x100), "unknown incompatible feature bits 0x100"),
    (dict(crypt_method=1), "encrypted images are not supported"),
    (dict(incompatible_features=1 << 2), "external data files are not supported"),
    (dict(incompatible_features=1 << 4), "extended L2 entries are not supported"),
    (dict(refcount_order=7), "refcount order 7 above 6"),
    (dict(backing_file_offset=512, backing_file_size=2000),
     "backing file name length 2000 exceeds 1023 bytes"),
    (dict(l1_size=(4 << 20) + 1), "L1 table of 4194305 entries too large"),
    (dict(l1_size=100000), "L1 table of 800000 bytes larger than the file (%(size)d bytes)"),
    (dict(l1_size=0), "L1 table of 0 entries too small for virtual size 262144"),
    (dict(l1_table_offset=0x10000000),
     "L1 table at 0x10000000 (8 bytes) lies past the end of the file (%(size)d bytes)"),
    (dict(l1_table_offset=0x3001), "L1 table offset 0x3001 not aligned to the cluster size"),
    (dict(refcount_table_offset=0x1200),
     "refcount table offset 0x1200 not aligned to the cluster size"),
    (dict(refcount_table_offset=0x40000000),
     "refcount table at 0x40000000 (4096 bytes) lies past the end of the file (%(size)d bytes)"),
    (dict(refcount_table_clusters=0), "refcount table of 0 clusters out of range"),
    (dict(header_length=100), "invalid header length 100"),
    (dict(header_length=8192), "header length 8192 exceeds the header cluster"),
    (dict(size=1 << 62), "virtual size 4611686018427387904 too large"),
    (dict(compression_type=1), "compression type 1 disagrees with the incompatible "
                               "feature bits 0x0"),
    (dict(magic=b"QFI\xfa"), "not a qcow2 image (magic b'QFI\\xfa')"),
]


@pytest.mark.parametrize("fields,text", CORPUS, ids=[t[:30] for _, t in CORPUS])
def test_malformed_header(tmp_path, fields, text):
    path = str(tmp_path / "bad.qcow2")
    good_image(path)
    patch(path, **fields)
    before = open(path, "rb").read()
    for read_only in (True, False):
        with pytest.raises(ImageError) as err:
            Qcow2Image.open(path, read_only=read_only)
        expected = "Image %s: %s" % (path, text % {"size": len(before)})
        assert err.value.desc == expected and err.value.path == path
        assert "\n" not in err.value.desc
    assert open(path, "rb").read() == before


def test_truncated_and_empty(tmp_path):
    path = str(tmp_path / "short.qcow2")
    good_image(path)
    os.truncate(path, 50)
    with pytest.raises(ImageError) as err:
        Qcow2Image.open(path)
    assert err.value.desc == "Image %s: truncated header (50 bytes)" % path
    os.truncate(path, 0)
    with pytest.raises(ImageError) as err:
        Qcow2Image.open(path, read_only=True)
    assert err.value.desc == "Image %s: truncated header (0 bytes)" % path


@pytest.mark.parametrize("fields,text", [
    (dict(incompatible_features=1 << 1), "image is marked corrupt; refusing to write"),
    (dict(incompatible_features=1 << 0), "image is dirty (lazy refcounts); refusing to write"),
    (dict(nb_snapshots=1, snapshots_offset=0x1000),
     "image has 1 internal snapshots; refusing to write"),
])
def test_refused_for_writing_but_readable(tmp_path, fields, text):
    path = str(tmp_path / "flagged.qcow2")
    good_image(path)
    patch(path, **fields)
    with pytest.raises(ImageError) as err:
        Qcow2Image.open(path)
    assert err.value.desc == "Image %s: %s" % (path, text)
    image = Qcow2Image.open(path, read_only=True)
    assert image.read(1000, 3) == b"\x11\x11\x11"
    with pytest.raises(ImageError) as err:
        image.set_read_only(False)
    assert err.value.desc == "Image %s: %s" % (path, text)


def test_zstd_needs_package(tmp_path):
    try:
        import zstandard  # noqa: F401
        pytest.skip("zstandard is installed")
    except ImportError:
        pass
    path = str(tmp_path / "zstd.qcow2")
    good_image(path)
    patch(path, compression_type=1, incompatible_features=1 << 3)
    with pytest.raises(ImageError) as err:
        Qcow2Image.open(path, read_only=True)
    assert err.value.desc == "Image %s: zstd compression needs the 'zstandard' package" % path


def exercise(path):
    """Open, read everything, map, write: return normally or raise ImageError."""
    for read_only in (True, False):
        image = Qcow2Image.open(path, read_only=read_only)
        try:
            image.read(0, image.virtual_size)
            image.block_status(0, image.virtual_size)
            if not read_only:
                image.write(3000, b"\x22" * 9000)
                image.write_zeroes(0, 4096)
                image.discard(8192, 16384)
                image.read(0, image.virtual_size)
        finally:
            image.close()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.integers(0, 6 * 4096 - 1), st.integers(0, 255)),
                min_size=1, max_size=8))
def test_fuzzed_header_and_tables(mutations):
    """Random bytes in the header cluster, refcount table, refcount block and L1/L2."""
    with tempfile.TemporaryDirectory() as directory:
        path = os.path.join(directory, "fuzz.qcow2")
        good_image(path)
        with open(path, "r+b") as f:
            for pos, value in mutations:
                f.seek(pos)
                f.write(bytes([value]))
        tracemalloc.start()
        try:
            exercise(path)
        except ImageError as err:
            # our one-line refusals, or QEMU's own (qcow2_do_open) in QEMU's words
            assert "\n" not in err.desc and err.desc.startswith(
                ("Image %s: " % path, "Could not open '%s': " % path))
        except ImageIOError as err:
            # A table entry that points past what the file system allows (2^48 on ext4):
            # the write fails with EFBIG, one line, exactly as qemu-io's 'write failed:
            # File too large' on the same image.
            assert err.errno == errno.EFBIG and "\n" not in err.desc
        finally:
            peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
        assert peak < 16 << 20
        assert os.path.getsize(path) < 4 << 20


def test_a_table_entry_past_the_file_system_limit_fails_the_write_with_efbig(tmp_path):
    """Found by the fuzz test: an L2 entry whose host offset is 2^48 + 40 KiB (byte 12289
    set to 1). The write fails with one line, as qemu-io's 'write failed: File too large'."""
    path = str(tmp_path / "efbig.qcow2")
    good_image(path)
    with open(path, "r+b") as f:
        f.seek(12289)
        f.write(b"\x01")
    with pytest.raises(ImageIOError) as caught:
        exercise(path)
    assert caught.value.errno == errno.EFBIG and caught.value.desc.endswith("File too large")
