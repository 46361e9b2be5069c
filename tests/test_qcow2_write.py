"""Us to qemu-img: what we create and write, qemu-img checks clean and compares
identical to a model of the bytes; refcount growth; header rewrites."""
import json
import os
import subprocess
import tempfile

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from conftest import require_qemu, run
from images.driver import DATA, UNALLOCATED, ZERO
from images.errors import ImageError
from images.qcow2 import Qcow2Image, create_qcow2
from images.qcow2.format import QCOW2_EXT_MAGIC_FEATURE_TABLE, pack_header_area, parse_header

K, M = 1024, 1024 * 1024
SIZE = 3 * M


def check_clean(path):
    result = subprocess.run(["qemu-img", "check", path], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "No errors were found" in result.stdout


def compare_raw(path, model, directory):
    raw = os.path.join(directory, "model.raw")
    with open(raw, "wb") as f:
        f.write(model)
    result = subprocess.run(["qemu-img", "compare", "-f", "qcow2", "-F", "raw", path, raw],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Images are identical." in result.stdout


def make_base(directory, size=2 * M):
    """A base we create, half filled with a pattern; returns (path, bytes)."""
    path = os.path.join(directory, "base.qcow2")
    create_qcow2(path, size, cluster_size=64 * K)
    image = Qcow2Image.open(path)
    content = bytes((i * 7 + 3) % 251 for i in range(size // 2))
    image.write(size // 4, content)
    image.close()
    model = bytearray(size)
    model[size // 4:size // 4 + len(content)] = content
    return path, bytes(model)


OPS = st.lists(st.tuples(st.sampled_from(["write", "zero", "discard"]),
                         st.integers(0, SIZE - 1), st.integers(1, 300 * K),
                         st.integers(1, 255)), min_size=1, max_size=12)


def apply_ops(image, model, base_model, ops, version):
    cs = image.cluster_size
    for op, offset, length, byte in ops:
        length = min(length, SIZE - offset)
        if op == "write":
            image.write(offset, bytes([byte]) * length)
            model[offset:offset + length] = bytes([byte]) * length
        elif op == "zero":
            image.write_zeroes(offset, length)
            model[offset:offset + length] = bytes(length)
        else:
            image.discard(offset, length)
            lo, hi = -(-offset // cs) * cs, (offset + length) // cs * cs
            if hi > lo:   # v3 reads discarded clusters as zeros, v2 shows the backing
                fill = bytes(hi - lo) if version == 3 else \
                    (base_model[lo:hi] + bytes(hi - lo))[:hi - lo]
                model[lo:hi] = fill


@pytest.mark.parametrize("version,cluster", [(3, 4 * K), (3, 64 * K), (2, 16 * K)])
def test_random_ops_on_overlay(version, cluster):
    require_qemu()

    @settings(max_examples=15, deadline=None,
              suppress_health_check=[HealthCheck.too_slow])
    @given(OPS)
    def check(ops):
        with tempfile.TemporaryDirectory() as directory:
            _, base_model = make_base(directory)
            top = os.path.join(directory, "top.qcow2")
            if version == 3:
                create_qcow2(top, SIZE, cluster, "base.qcow2", "qcow2")
            else:
                run("qemu-img", "create", "-q", "-f", "qcow2", "-o",
                    "compat=0.10,cluster_size=%d" % cluster, "-b", "base.qcow2", "-F", "qcow2",
                    top, str(SIZE))
            image = Qcow2Image.open(top)
            image.backing = Qcow2Image.open(os.path.join(directory, "base.qcow2"), True)
            model = bytearray(base_model + bytes(SIZE - len(base_model)))
            apply_ops(image, model, base_model, ops, version)
            assert image.read(0, SIZE) == model
            image.flush()
            image.close()
            check_clean(top)
            compare_raw(top, bytes(model), directory)
    check()


def test_zero_writes_v2_without_backing(qemu_img, tmp_path):
    path = str(tmp_path / "v2.qcow2")
    run("qemu-img", "create", "-q", "-f", "qcow2", "-o", "compat=0.10", path, "1M")
    image = Qcow2Image.open(path)
    image.write(0, b"\x5a" * M)
    image.write_zeroes(100, 200 * K)
    runs = image.block_status(0, M)
    assert runs[1] == type(runs[1])(UNALLOCATED, 64 * K, 128 * K)
    image.close()
    check_clean(path)
    compare_raw(path, b"\x5a" * 100 + bytes(200 * K) + b"\x5a" * (M - 100 - 200 * K),
                str(tmp_path))


@pytest.mark.parametrize("refcount_bits", [1, 8, 16, 64])
def test_refcount_growth_512_byte_clusters(qemu_img, tmp_path, refcount_bits):
    path = str(tmp_path / "small.qcow2")
    run("qemu-img", "create", "-q", "-f", "qcow2", "-o",
        "cluster_size=512,refcount_bits=%d" % refcount_bits, path, "16M")
    image = Qcow2Image.open(path)
    first_table = image.refcounts.table_offset
    model = bytearray(16 * M)
    for n in range(48):             # scattered writes, more than one table of blocks
        offset = (n * 311 * K + n * 77) % (15 * M)
        data = bytes([n + 1]) * (200 * K + n)
        image.write(offset, data)
        model[offset:offset + len(data)] = data
    blocks = sum(1 for entry in image.refcounts.table if entry)
    assert blocks >= 2
    if refcount_bits >= 16:
        assert blocks > 64
        assert image.refcounts.table_offset != first_table    # the table moved
    image.close()
    check_clean(path)
    compare_raw(path, bytes(model), str(tmp_path))


def test_create_matches_qemu_img(qemu_img, tmp_path):
    path = str(tmp_path / "new.qcow2")
    create_qcow2(path, 5 * M + 512, cluster_size=4096, backing_name="b.raw",
                 backing_format="raw")
    info = json.loads(run("qemu-img", "info", "--output=json", "-U", path).stdout)
    assert info["virtual-size"] == 5 * M + 512 and info["cluster-size"] == 4096
    assert info["backing-filename"] == "b.raw"
    assert info["backing-filename-format"] == "raw"
    assert info["format-specific"]["data"]["compat"] == "1.1"
    assert info["format-specific"]["data"]["refcount-bits"] == 16
    ours = Qcow2Image.open(path, read_only=True).info()
    assert ours["backing-filename"] == "b.raw" and ours["backing-filename-format"] == "raw"
    assert ours["format-specific"] == info["format-specific"]["data"]
    open(str(tmp_path / "b.raw"), "wb").close()
    check_clean(path)


def add_unknown_extension(path, payload):
    with open(path, "r+b") as f:
        buf = f.read(65536)
        header = parse_header(buf, path, os.path.getsize(path))
        header.extensions.append((0x12345678, payload))
        f.seek(0)
        f.write(pack_header_area(header))


def test_set_backing_reference_round_trip(qemu_img, tmp_path):
    top = str(tmp_path / "top.qcow2")
    create_qcow2(str(tmp_path / "old.qcow2"), M)
    create_qcow2(str(tmp_path / "new.qcow2"), M)
    create_qcow2(top, M, backing_name="old.qcow2", backing_format="qcow2")
    payload = b"unknown extension \x00\x01\x02 kept"
    add_unknown_extension(top, payload)
    image = Qcow2Image.open(top)
    image.set_backing_reference("new.qcow2", "qcow2")
    # -U: the image is open here for writing, and qemu-img respects its lock
    info = json.loads(run("qemu-img", "info", "-U", "--output=json", top).stdout)
    assert (info["backing-filename"], info["backing-filename-format"]) == ("new.qcow2", "qcow2")
    with open(top, "rb") as f:
        header = parse_header(f.read(65536), top, os.path.getsize(top))
    assert (0x12345678, payload) in header.extensions
    assert any(t == QCOW2_EXT_MAGIC_FEATURE_TABLE for t, _ in header.extensions)
    image.set_backing_reference(None, None)
    # -U: the image is open here for writing, and qemu-img respects its lock
    info = json.loads(run("qemu-img", "info", "-U", "--output=json", top).stdout)
    assert "backing-filename" not in info and "backing-filename-format" not in info
    with open(top, "rb") as f:
        header = parse_header(f.read(65536), top, os.path.getsize(top))
    assert (0x12345678, payload) in header.extensions and header.backing_name is None
    assert image.backing_name is None and image.backing_format is None
    image.close()
    check_clean(top)


def test_set_backing_reference_refuses_what_does_not_fit(qemu_img, tmp_path):
    path = str(tmp_path / "tiny.qcow2")
    run("qemu-img", "create", "-q", "-f", "qcow2", "-o", "cluster_size=512", path, "1M")
    before = open(path, "rb").read()
    image = Qcow2Image.open(path)
    with pytest.raises(ImageError) as err:
        image.set_backing_reference("x" * 600, "qcow2")
    assert err.value.desc.startswith("Image %s: header with backing file" % path)
    with pytest.raises(ImageError) as err:
        image.set_backing_reference("y" * 1024, "qcow2")
    assert err.value.desc == "Image %s: backing file name of 1024 bytes exceeds 1023" % path
    assert open(path, "rb").read() == before


def test_read_only_refuses_writes(tmp_path):
    path = str(tmp_path / "ro.qcow2")
    create_qcow2(path, M)
    image = Qcow2Image.open(path, read_only=True)
    with pytest.raises(ImageError) as err:
        image.write(0, b"x")
    assert err.value.desc == "Image %s: image is opened read-only" % path
    image.set_read_only(False)
    image.write(0, b"x")
    assert image.read(0, 2) == b"x\0"
    assert [r.kind for r in image.block_status(0, M)] == [DATA, UNALLOCATED]
    image.write_zeroes(0, M)
    assert [r.kind for r in image.block_status(0, M)] == [ZERO]


def test_overwriting_compressed_and_zero_clusters(qemu_img, tmp_path):
    src, dst = str(tmp_path / "src.qcow2"), str(tmp_path / "c.qcow2")
    run("qemu-img", "create", "-q", "-f", "qcow2", "-o", "cluster_size=4096", src, "1M")
    run("qemu-io", "-f", "qcow2", "-c", "write -P 0x61 0 512k", "-c", "write -z 512k 64k", src)
    run("qemu-img", "convert", "-c", "-O", "qcow2", "-o", "cluster_size=4096", src, dst)
    image = Qcow2Image.open(dst)
    model = bytearray(b"\x61" * (512 * K) + bytes(512 * K))
    for offset, length, byte in ((100, 5000, 1), (300 * K + 7, 40 * K, 2), (520 * K, 9, 3)):
        image.write(offset, bytes([byte]) * length)
        model[offset:offset + length] = bytes([byte]) * length
    image.write_zeroes(200 * K + 1, 30 * K)
    model[200 * K + 1:230 * K + 1] = bytes(30 * K)
    image.discard(400 * K, 20 * K)
    model[400 * K:420 * K] = bytes(20 * K)
    assert image.read(0, M) == model
    image.close()
    check_clean(dst)
    compare_raw(dst, bytes(model), str(tmp_path))


def test_closed_image_and_out_of_range(tmp_path):
    path = str(tmp_path / "c.qcow2")
    create_qcow2(path, M, cluster_size=512)
    image = Qcow2Image.open(path)
    with pytest.raises(ImageError) as err:
        image.write(M - 1, b"ab")
    assert err.value.desc == ("Image %s: request at offset %d length 2 outside the virtual "
                              "size %d" % (path, M - 1, M))
    image.close()
    with pytest.raises(ImageError) as err:
        image.read(0, 1)
    assert err.value.desc == "Image %s: image is closed" % path


def test_set_backing_reference_too_long_undecodable_name_is_refused(tmp_path):
    # A stored name may hold bytes that are not UTF-8 (kept as surrogate escapes);
    # the length refusal must count them the same way, not fail to encode them.
    path = str(tmp_path / "img.qcow2")
    create_qcow2(path, M)
    before = open(path, "rb").read()
    image = Qcow2Image.open(path)
    with pytest.raises(ImageError) as err:
        image.set_backing_reference("\udcff" * 1024, "qcow2")
    assert err.value.desc == "Image %s: backing file name of 1024 bytes exceeds 1023" % path
    image.close()
    assert open(path, "rb").read() == before
