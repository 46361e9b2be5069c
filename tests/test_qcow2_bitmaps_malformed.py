"""Bitmaps extensions QEMU refuses stay refused (one line naming the problem, nothing
written), and one it ignores (autoclear bit 0 clear: a program without bitmap support
wrote the file) is ignored, then dropped from the header once the image is writable."""
import struct

import pytest

from conftest import require_qemu, run
from oracle import qemu_img

from images.errors import ImageError
from images.qcow2 import Qcow2Image
from images.qcow2.bitmap_format import DIR_ENTRY
from images.qcow2.format import AUTOCLEAR_FEATURES_OFFSET

MAGIC = struct.pack(">I", 0x23852875)


def image_with_bitmap(tmp_path):
    require_qemu()
    path = str(tmp_path / "bm.qcow2")
    run("qemu-img", "create", "-q", "-f", "qcow2", path, "8M")
    run("qemu-img", "bitmap", "--add", path, "b0")
    run("qemu-io", "-c", "write 1M 64k", path)
    return path


def locate(path):
    """(offset of the extension data, offset of the directory, offset of b0's table)."""
    with open(path, "rb") as f:
        head = f.read(65536)
        ext = head.index(MAGIC) + 8
        directory = struct.unpack_from(">Q", head, ext + 16)[0]
        f.seek(directory)
        table = struct.unpack(">Q", f.read(8))[0]
    return ext, directory, table


def poke(path, offset, fmt, value):
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(struct.pack(fmt, value))


# (where, offset within it, struct format, value, our text after "Image PATH: ")
CASES = [
    ("ext", 4, ">I", 1, "bitmaps_ext: Reserved field is not zero"),
    ("ext", 0, ">I", 0, "found bitmaps extension with zero bitmaps"),
    ("ext", 0, ">I", 2, "Less bitmaps found than specified in header extension"),
    ("ext", 0, ">I", 70000, "bitmaps_ext: Image has 70000 bitmaps, exceeding the QEMU "
                            "supported maximum of 65535"),
    ("ext", 16, ">Q", 4096 + 65536, "bitmaps_ext: invalid bitmap directory offset"),
    ("dir", 12, ">I", 1 << 5, "Bitmap 'b0' doesn't satisfy the constraints"),      # flags
    ("dir", 16, ">B", 2, "Bitmap 'b0' doesn't satisfy the constraints"),           # type
    ("dir", 17, ">B", 8, "Bitmap 'b0' doesn't satisfy the constraints"),           # granularity
    ("dir", 8, ">I", 0, "Bitmap 'b0' doesn't satisfy the constraints"),            # table size
    ("dir", 20, ">I", 8, "Broken bitmap directory"),                               # extra data
    ("table", 0, ">Q", 1 << 60, "Could not read bitmap_table table from image for bitmap "
                                "'b0': Invalid argument"),
]


@pytest.mark.parametrize("where,offset,fmt,value,text", CASES)
def test_refused_as_qemu_refuses(tmp_path, where, offset, fmt, value, text):
    path = image_with_bitmap(tmp_path)
    ext, directory, table = locate(path)
    poke(path, {"ext": ext, "dir": directory, "table": table}[where] + offset, fmt, value)
    assert qemu_img("info", "-f", "qcow2", path).returncode != 0     # QEMU refuses it too
    before = open(path, "rb").read()
    for read_only in (True, False):
        with pytest.raises(ImageError) as err:
            Qcow2Image.open(path, read_only=read_only)
        # the extension's own checks are qcow2_read_extensions', in QEMU's words
        own = text.startswith(("bitmaps_ext:", "found bitmaps extension"))
        form = "Could not open '%s': %s" if own else "Image %s: %s"
        assert err.value.desc == form % (path, text)
    assert open(path, "rb").read() == before


def test_extension_left_by_a_program_without_bitmaps_is_ignored_then_dropped(tmp_path):
    path = image_with_bitmap(tmp_path)
    poke(path, AUTOCLEAR_FEATURES_OFFSET, ">Q", 0)
    image = Qcow2Image.open(path, read_only=True)
    assert len(image.dirty_bitmaps) == 0 and "bitmaps" not in image.info()["format-specific"]
    image.close()
    with open(path, "rb") as f:
        assert MAGIC in f.read(4096)
    Qcow2Image.open(path).close()
    with open(path, "rb") as f:
        assert MAGIC not in f.read(4096)
    check = qemu_img("check", path)
    assert check.returncode in (0, 3) and "ERROR" not in check.stdout   # leaks, as QEMU says


def test_directory_entry_is_the_spec_layout():
    assert DIR_ENTRY.size == 24
