"""images/raw.py: reads, writes, holes, zero writes, errors; qemu-img as the oracle for maps."""
import errno
import json
import os

import pytest

from conftest import run
from images.chain import qemu_img_map
from images.driver import DATA, ZERO, Run
from images.errors import ImageError, ImageIOError
from images.raw import RawImage, create_raw

MIB = 1 << 20


@pytest.fixture
def raw_path(tmp_path):
    path = str(tmp_path / "disk.raw")
    create_raw(path, 4 * MIB)
    return path


@pytest.fixture
def image(raw_path):
    image = RawImage.open(raw_path)
    yield image
    image.close()


def test_create_makes_a_sparse_file_of_the_size(raw_path):
    assert os.path.getsize(raw_path) == 4 * MIB
    assert os.stat(raw_path).st_blocks == 0


def test_create_refuses_a_negative_size(tmp_path):
    with pytest.raises(ImageError) as caught:
        create_raw(str(tmp_path / "x.raw"), -1)
    assert caught.value.desc == "Invalid image size for '%s': -1" % (tmp_path / "x.raw")
    assert not (tmp_path / "x.raw").exists()


def test_open_reads_size_and_format(image):
    assert (image.format_name, image.virtual_size, image.backing) == ("raw", 4 * MIB, None)
    assert image.read(0, 4096) == bytes(4096)


def test_open_missing_file_names_it(tmp_path):
    path = str(tmp_path / "missing.raw")
    with pytest.raises(ImageError) as caught:
        RawImage.open(path)
    assert caught.value.desc == "Could not open '%s': No such file or directory" % path


def test_open_directory_is_refused(tmp_path):
    with pytest.raises(ImageError) as caught:
        RawImage.open(str(tmp_path), read_only=True)
    assert caught.value.desc == "Could not open '%s': Is a directory" % tmp_path


def test_write_then_read_back_unaligned(image):
    image.write(MIB - 3, b"hello world")
    assert image.read(MIB - 5, 15) == b"\0\0hello world\0\0"


def test_write_past_the_end_is_refused_and_changes_nothing(image, raw_path):
    with pytest.raises(ImageError) as caught:
        image.write(4 * MIB - 2, b"abc")
    assert caught.value.desc == "Cannot write 3 bytes at offset 4194302 of '%s': image size is 4194304" % raw_path
    assert os.path.getsize(raw_path) == 4 * MIB


def test_read_past_the_end_is_refused(image, raw_path):
    with pytest.raises(ImageError) as caught:
        image.read(4 * MIB, 1)
    assert caught.value.desc == "Cannot read 1 bytes at offset 4194304 of '%s': image size is 4194304" % raw_path


def test_file_shrunk_behind_our_back_reads_zeros(image, raw_path):
    image.write(0, b"\x55" * 8192)
    os.truncate(raw_path, 4096)
    assert image.read(0, 12288) == b"\x55" * 4096 + bytes(8192)


def test_block_status_follows_holes(image):
    image.write(MIB, b"\x01" * 65536)
    assert image.block_status(0, 4 * MIB) == [
        Run(ZERO, 0, MIB),
        Run(DATA, MIB, 65536, host_offset=MIB),
        Run(ZERO, MIB + 65536, 3 * MIB - 65536),
    ]
    # A window inside one extent is clipped to the window.
    assert image.block_status(MIB + 100, 200) == [Run(DATA, MIB + 100, 200, host_offset=MIB + 100)]


def test_write_zeroes_punches_a_hole_and_keeps_neighbours(image, raw_path):
    image.write(0, b"\x07" * (3 * 65536))
    image.write_zeroes(65536 - 10, 65536 + 20)
    assert image.read(0, 3 * 65536) == b"\x07" * (65536 - 10) + bytes(65536 + 20) + b"\x07" * (65536 - 10)
    assert [run.kind for run in image.block_status(0, 3 * 65536)] == [DATA, ZERO, DATA]
    assert os.path.getsize(raw_path) == 4 * MIB


def test_discard_reads_back_as_zero(image):
    image.write(0, b"\x09" * 8192)
    image.discard(0, 8192)
    assert image.read(0, 8192) == bytes(8192)


def test_read_only_refuses_writes_with_eperm(raw_path):
    image = RawImage.open(raw_path, read_only=True)
    try:
        for attempt in (lambda: image.write(0, b"x"), lambda: image.write_zeroes(0, 1),
                        lambda: image.discard(0, 1)):
            with pytest.raises(ImageIOError) as caught:
                attempt()
            assert (caught.value.errno, caught.value.operation) == (errno.EPERM, "write")
            assert caught.value.desc == "Operation not permitted"
    finally:
        image.close()


def test_set_read_only_round_trip(image):
    image.set_read_only(True)
    assert image.read_only
    with pytest.raises(ImageIOError):
        image.write(0, b"x")
    image.set_read_only(False)
    image.write(0, b"x")
    assert image.read(0, 1) == b"x"


def test_set_read_only_false_on_unwritable_file_changes_nothing(raw_path, monkeypatch):
    image = RawImage.open(raw_path, read_only=True)
    real_open = os.open

    def refuse_writers(path, flags, *args):      # what a 0444 file does to a non-root user
        if flags & os.O_RDWR:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), path)
        return real_open(path, flags, *args)

    monkeypatch.setattr(os, "open", refuse_writers)
    try:
        with pytest.raises(ImageError) as caught:
            image.set_read_only(False)
        assert caught.value.desc == "Could not reopen '%s' read-write: Permission denied" % raw_path
        assert image.read_only
        assert image.read(0, 4) == bytes(4)
    finally:
        monkeypatch.undo()
        image.close()


def test_backing_reference_is_refused_with_qemus_text(image):
    with pytest.raises(ImageError) as caught:
        image.set_backing_reference("base.qcow2", "qcow2")
    assert caught.value.desc == "Backing file not supported for file format 'raw'"
    image.set_backing_reference(None, None)     # nothing to remove: no-op


def test_info_and_close_twice(image, raw_path):
    image.write(0, b"x" * 4096)
    info = image.info()
    assert {key: info[key] for key in ("format", "filename", "virtual-size")} == {
        "format": "raw", "filename": raw_path, "virtual-size": 4 * MIB}
    assert info["actual-size"] >= 4096
    image.flush()
    image.close()
    image.close()
    with pytest.raises(ImageError) as caught:
        image.read(0, 1)
    assert caught.value.desc == "Image '%s' is closed" % raw_path


def test_map_equals_qemu_img_map(qemu_img, tmp_path):
    path = str(tmp_path / "q.raw")
    run(qemu_img, "create", "-q", "-f", "raw", path, "3M")   # qemu allocates the first 4 KiB
    image = RawImage.open(path)
    try:
        image.write(MIB + 512, b"\x33" * 70000)
        image.write_zeroes(MIB + 8192, 4096)
        image.write(3 * MIB - 100, b"\x44" * 100)
        image.flush()
        expected = json.loads(run(qemu_img, "map", "--output=json", "-f", "raw", path).stdout)
        assert qemu_img_map(image) == expected
    finally:
        image.close()


def test_qemu_io_sees_our_writes(qemu_img, image, raw_path):
    image.write(65536, b"\xab" * 4096)
    image.flush()
    # -r -U: the image is open here for writing, and qemu-io respects its lock
    result = run("qemu-io", "-r", "-U", "-f", "raw", "-c", "read -P 0xab 65536 4096", raw_path)
    assert "read 4096/4096 bytes at offset 65536" in result.stdout
