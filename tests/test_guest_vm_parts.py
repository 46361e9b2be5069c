"""The real-guest harness's pure parts: the cpio writer, the module order, decompression, ELF check."""
import gzip
import lzma
import os
import shutil
import subprocess
import sys

import pytest

from guest_vm import BUSYBOX, Cpio, is_static_elf, module_load_order, read_module

DEP = """kernel/drivers/block/virtio_blk.ko.xz: kernel/drivers/virtio/virtio.ko.xz kernel/drivers/virtio/virtio_ring.ko.xz
kernel/drivers/virtio/virtio_ring.ko.xz:
kernel/drivers/virtio/virtio.ko.xz: kernel/drivers/virtio/virtio_ring.ko.xz
kernel/drivers/virtio/virtio_pci.ko.xz: kernel/drivers/virtio/virtio_pci-modern-dev.ko.xz kernel/drivers/virtio/virtio.ko.xz
kernel/drivers/virtio/virtio_pci-modern-dev.ko.xz:
"""


def test_modules_come_after_what_they_need_each_once(tmp_path):
    (tmp_path / "modules.dep").write_text(DEP)
    order = [os.path.basename(p) for p in module_load_order(str(tmp_path), ("virtio_pci", "virtio_blk"))]
    assert order == ["virtio_pci-modern-dev.ko.xz", "virtio_ring.ko.xz", "virtio.ko.xz", "virtio_pci.ko.xz",
                     "virtio_blk.ko.xz"]


@pytest.mark.parametrize("suffix, compress", [(".ko", bytes), (".ko.xz", lzma.compress),
                                              (".ko.gz", gzip.compress)])
def test_modules_are_read_as_plain_elf(tmp_path, suffix, compress):
    plain = b"\x7fELF" + bytes(range(256)) * 8
    path = tmp_path / ("m" + suffix)
    path.write_bytes(compress(plain))
    assert read_module(str(path)) == plain


def test_the_archive_lists_in_busybox_cpio_with_types_sizes_and_link_targets(tmp_path):
    if not os.path.exists(BUSYBOX):
        pytest.skip("needs busybox")
    cpio = Cpio()
    cpio.directory("bin")
    cpio.file("bin/tool", b"x" * 5, 0o755)
    cpio.symlink("bin/sh", "tool")
    cpio.char_device("console", 5, 1)
    archive = gzip.decompress(cpio.gzipped())
    assert len(archive) % 4 == 0 and archive.startswith(b"070701")
    listing = subprocess.run([BUSYBOX, "cpio", "-tv"], input=archive, capture_output=True, check=True).stdout
    rows = [line.split() for line in listing.decode().splitlines()]
    assert [(row[0][0], row[-1]) for row in rows] == [("d", "bin"), ("-", "bin/tool"), ("l", "tool"),
                                                        ("c", "console")]
    assert rows[1][0] == "-rwxr-xr-x" and rows[1][2] == "5"
    assert rows[2][-3:] == ["bin/sh", "->", "tool"]


def test_static_and_dynamic_executables_are_told_apart(tmp_path):
    assert not is_static_elf(os.path.realpath(sys.executable))     # Python links libc dynamically
    script = tmp_path / "script"
    script.write_text("#!/bin/sh\n")
    assert not is_static_elf(str(script))
    if os.path.exists(BUSYBOX) and shutil.which("file") and "statically linked" in subprocess.run(
            ["file", "-L", BUSYBOX], capture_output=True, text=True).stdout:
        assert is_static_elf(BUSYBOX)
