"""A 1 TiB sparse image: disk and memory do not grow with the virtual size."""
import os
import tracemalloc

from images.driver import DATA, UNALLOCATED, ZERO
from images.qcow2 import Qcow2Image, create_qcow2

TIB = 1 << 40


def test_one_tib_image_is_small_on_disk_and_in_memory(tmp_path):
    path = str(tmp_path / "huge.qcow2")
    tracemalloc.start()
    try:
        create_qcow2(path, TIB)
        image = Qcow2Image.open(path)
        runs = image.block_status(0, TIB)
        image.write(TIB // 2 + 100, b"\x42" * 70000)
        image.write_zeroes(TIB - (1 << 20), 1 << 20)
        runs_after = image.block_status(0, TIB)
        tail = image.read(TIB // 2, 65536 * 2)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert runs == [type(runs[0])(UNALLOCATED, 0, TIB)]
    assert [r.kind for r in runs_after] == [UNALLOCATED, DATA, UNALLOCATED]
    assert runs_after[1].offset == TIB // 2 and runs_after[1].length == 2 * 65536
    assert tail == bytes(100) + b"\x42" * 70000 + bytes(2 * 65536 - 70100)
    assert peak < 4 << 20, peak
    assert os.path.getsize(path) < 1 << 20
    image.close()


def test_one_tib_zero_write_with_backing_name_uses_zero_flags(tmp_path):
    path = str(tmp_path / "huge.qcow2")
    create_qcow2(path, TIB, backing_name="base.qcow2", backing_format="qcow2")
    image = Qcow2Image.open(path)
    image.write_zeroes(1 << 30, 1 << 30)
    runs = image.block_status(0, TIB)
    assert [(r.kind, r.offset, r.length) for r in runs] == [
        (UNALLOCATED, 0, 1 << 30), (ZERO, 1 << 30, 1 << 30), (UNALLOCATED, 2 << 30, TIB - (2 << 30))]
    assert os.path.getsize(path) < 1 << 20
    image.close()
