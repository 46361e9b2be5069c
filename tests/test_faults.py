"""images/faults.py: the blkdebug-like wrapper injects errors, delegates everything else."""
import errno

import pytest

from conftest import run
from images.chain import block_status_above, chain_of, close_chain, open_image
from images.driver import DATA, UNALLOCATED, BlockImage, Run
from images.errors import ImageIOError
from images.faults import FaultInjectingImage
from images.raw import RawImage, create_raw

KIB = 1024


@pytest.fixture
def raw(tmp_path):
    path = str(tmp_path / "disk.raw")
    create_raw(path, 256 * KIB)
    image = RawImage.open(path)
    image.write(0, b"\x11" * (256 * KIB))
    yield image
    image.close()


def test_injected_read_error_carries_errno_and_operation(raw):
    faulty = FaultInjectingImage(raw)
    faulty.inject("read", 64 * KIB, 64 * KIB, errno=errno.ENOSPC)
    with pytest.raises(ImageIOError) as caught:
        faulty.read(60 * KIB, 8 * KIB)               # touches the rule's first bytes
    assert (caught.value.errno, caught.value.operation, caught.value.desc) == (
        errno.ENOSPC, "read", "No space left on device")
    assert faulty.read(0, 64 * KIB) == b"\x11" * (64 * KIB)      # ends where the rule starts
    assert faulty.read(128 * KIB, 4) == b"\x11" * 4              # starts where it ends
    faulty.clear()
    assert faulty.read(60 * KIB, 8 * KIB) == b"\x11" * (8 * KIB)


def test_default_is_eio_everywhere_and_once_fires_once(raw):
    faulty = FaultInjectingImage(raw)
    faulty.inject("read", once=True)
    with pytest.raises(ImageIOError) as caught:
        faulty.read(200 * KIB, 1)
    assert (caught.value.errno, caught.value.desc) == (errno.EIO, "Input/output error")
    assert faulty.read(200 * KIB, 1) == b"\x11"
    assert faulty.rules == []


def test_write_rules_cover_writes_zero_writes_and_discards_only(raw):
    faulty = FaultInjectingImage(raw)
    faulty.inject("write", 0, 4 * KIB)
    for attempt in (lambda: faulty.write(4 * KIB - 1, b"ab"), lambda: faulty.write_zeroes(0, 1),
                    lambda: faulty.discard(0, 4 * KIB)):
        with pytest.raises(ImageIOError) as caught:
            attempt()
        assert (caught.value.errno, caught.value.operation) == (errno.EIO, "write")
    assert raw.read(0, 4 * KIB) == b"\x11" * (4 * KIB)          # nothing reached the file
    assert faulty.read(0, 2) == b"\x11\x11"                      # reads are not affected
    faulty.write(4 * KIB, b"\x22")
    assert raw.read(4 * KIB, 1) == b"\x22"


def test_bad_rules_are_refused(raw):
    faulty = FaultInjectingImage(raw)
    with pytest.raises(ValueError) as caught:
        faulty.inject("flush")
    assert str(caught.value) == "Unknown operation 'flush': expected one of read, write"
    with pytest.raises(ValueError):
        faulty.inject("read", 0, 0)
    assert faulty.rules == []


def test_attributes_and_lock_are_the_inner_images(raw):
    faulty = FaultInjectingImage(raw)
    assert (faulty.path, faulty.virtual_size, faulty.format_name, faulty.read_only) == (
        raw.path, raw.virtual_size, "raw", False)
    assert faulty.lock is raw.lock and faulty.inner is raw
    faulty.node_name = "disk0"
    assert raw.node_name == "disk0"
    assert faulty.block_status(0, 4 * KIB) == raw.block_status(0, 4 * KIB)
    faulty.set_read_only(True)
    assert raw.read_only and faulty.read_only


class Overlay(BlockImage):
    """A minimal top layer: owns [0, owned) and reads the rest through ``backing``."""

    format_name = "overlay"

    def __init__(self, size, owned):
        super().__init__("overlay", read_only=True)
        self.virtual_size, self.owned = size, owned

    def read(self, offset, length):
        mine = max(0, min(self.owned - offset, length))
        return b"\x99" * mine + (self.backing.read(offset + mine, length - mine) if length > mine else b"")

    def block_status(self, offset, length):
        runs, end = [], offset + length
        if offset < self.owned:
            runs.append(Run(DATA, offset, min(end, self.owned) - offset))
        if end > self.owned:
            start = max(offset, self.owned)
            runs.append(Run(UNALLOCATED, start, end - start))
        return runs


def test_wrapped_backing_fails_reads_that_fall_through(raw):
    top = Overlay(raw.virtual_size, 64 * KIB)
    faulty = FaultInjectingImage(raw)
    top.backing = faulty
    faulty.inject("read", 100 * KIB, 1)
    assert top.read(0, 64 * KIB) == b"\x99" * (64 * KIB)           # served by the top alone
    with pytest.raises(ImageIOError):
        top.read(96 * KIB, 8 * KIB)
    assert [(r.kind, r.depth) for r in block_status_above(top, None, 0, raw.virtual_size)] == [
        (DATA, 0), (DATA, 1)]


def test_wrapping_a_qcow2_layer_of_a_real_chain(qemu_img, tmp_path):
    run(qemu_img, "create", "-q", "-f", "qcow2", "A.qcow2", "1M", cwd=str(tmp_path))
    run(qemu_img, "create", "-q", "-f", "qcow2", "-b", "A.qcow2", "-F", "qcow2", "B.qcow2", "1M",
        cwd=str(tmp_path))
    run("qemu-io", "-f", "qcow2", "-c", "write -P 0x41 0 1M", str(tmp_path / "A.qcow2"))
    run("qemu-io", "-f", "qcow2", "-c", "write -P 0x42 0 64k", str(tmp_path / "B.qcow2"))
    top = open_image(str(tmp_path / "B.qcow2"), read_only=True)
    try:
        faulty = FaultInjectingImage(top.backing)
        top.backing = faulty
        faulty.inject("read", 512 * KIB, 4 * KIB, errno=errno.EIO)
        assert top.read(0, 4) == b"\x42" * 4 and top.read(128 * KIB, 4) == b"\x41" * 4
        with pytest.raises(ImageIOError) as caught:
            top.read(510 * KIB, 4 * KIB)
        assert (caught.value.errno, caught.value.operation) == (errno.EIO, "read")
        assert chain_of(top)[1] is faulty and faulty.format_name == "qcow2"
        faulty.clear()
        assert top.read(510 * KIB, 4 * KIB) == b"\x41" * (4 * KIB)
    finally:
        close_chain(top)
