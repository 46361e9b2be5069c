"""Images QEMU 7.2 refuses to open are refused by blockmon with QEMU's text, and left as
they were.  Each image is crafted from a fresh qemu-img one; qemu-img info must refuse it
first (the oracle), then blockmon's ``-drive`` must give the same reason (exit status 1)."""
import struct
import subprocess
import sys

import pytest

from tests.conftest import ROOT, run
from tests.oracle import fingerprints

BITMAPS = 0x23852875
BACKING_FORMAT = 0xE2792ACA
HEADER_LENGTH = 112                    # what qemu-img writes; extensions start here


def put(path, offset, fmt, *values):
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(struct.pack(fmt, *values))


def extensions(path, *exts):
    area = b""
    for ext_type, data in exts:
        area += struct.pack(">II", ext_type, len(data)) + data + b"\0" * (-len(data) % 8)
    with open(path, "r+b") as f:
        f.seek(HEADER_LENGTH)
        f.write(area + struct.pack(">II", 0, 0))


def bitmaps(path, count, reserved, size, offset, autoclear=1):
    extensions(path, (BITMAPS, struct.pack(">IIQQ", count, reserved, size, offset)))
    put(path, 88, ">Q", autoclear)


CASES = {
    "snapshots_offset set, no snapshots": (
        lambda p: (put(p, 60, ">I", 0), put(p, 64, ">Q", 0x10200)), "Snapshot table offset invalid"),
    "too many snapshots": (
        lambda p: put(p, 60, ">I", 65537), "Snapshot table too large"),
    "bitmaps reserved field": (
        lambda p: bitmaps(p, 1, 7, 0x10000, 0x10000), "bitmaps_ext: Reserved field is not zero"),
    "bitmaps length": (
        lambda p: (extensions(p, (BITMAPS, b"\0" * 16)), put(p, 88, ">Q", 1)),
        "bitmaps_ext: Invalid extension length"),
    "bitmaps none": (
        lambda p: bitmaps(p, 0, 0, 0x10000, 0x10000), "found bitmaps extension with zero bitmaps"),
    "bitmaps too many": (
        lambda p: bitmaps(p, 70000, 0, 0x10000, 0x10000),
        "bitmaps_ext: Image has 70000 bitmaps, exceeding the QEMU supported maximum of 65535"),
    "bitmaps directory offset": (
        lambda p: bitmaps(p, 1, 0, 0x10000, 0x10200), "bitmaps_ext: invalid bitmap directory offset"),
    "bitmaps directory size": (
        lambda p: bitmaps(p, 1, 0, 1 << 30, 0x10000),
        "bitmaps_ext: bitmap directory size (1073741824) exceeds the maximum supported size (67107840)"),
    "extension past the header": (
        lambda p: (extensions(p, (0x12345678, b"x" * 16)), put(p, HEADER_LENGTH + 4, ">I", 70000)),
        "Header extension too large"),
    "extension header cut by the backing name": (
        lambda p: (extensions(p), put(p, 8, ">QI", HEADER_LENGTH + 4, 4)), "Header extension too large"),
    "backing format too long": (
        lambda p: extensions(p, (BACKING_FORMAT, b"q" * 20)),
        "ERROR: ext_backing_format: len=20 too large (>=16)"),
    "backing name past the cluster": (
        lambda p: put(p, 8, ">QI", 0x20000, 4), "Invalid backing file offset"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_refused_with_qemus_text_and_unchanged(tmp_path, qemu_img, case):
    craft, text = CASES[case]
    path = str(tmp_path / "bad.qcow2")
    run("qemu-img", "create", "-q", "-f", "qcow2", path, "1M")
    craft(path)
    before = fingerprints([path])
    oracle = run("qemu-img", "info", path, check=False)
    assert (oracle.returncode, oracle.stderr) == (1, "qemu-img: Could not open '%s': %s\n" % (path, text))
    for drive in ("file=%s" % path, "file=%s,readonly=on" % path):
        result = subprocess.run([sys.executable, "-m", "monitor", "-drive", drive, "-c", "info block"],
                                cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert (result.returncode, result.stdout) == (1, "")
        assert result.stderr == "blockmon: -drive file=%s: Could not open '%s': %s\n" % (path, path, text)
    assert fingerprints([path]) == before


def test_a_refused_backing_image_refuses_the_chain(tmp_path, qemu_img):
    base, top = str(tmp_path / "base.qcow2"), str(tmp_path / "top.qcow2")
    run("qemu-img", "create", "-q", "-f", "qcow2", base, "1M")
    run("qemu-img", "create", "-q", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", top, "1M")
    CASES["snapshots_offset set, no snapshots"][0](base)
    before = fingerprints([base, top])
    assert run("qemu-img", "info", "--backing-chain", top, check=False).returncode == 1
    result = subprocess.run([sys.executable, "-m", "monitor", top, "-c", "block_stream virtio0"],
                            cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1 and "Snapshot table offset invalid" in result.stderr
    assert len(result.stderr.splitlines()) == 1
    assert fingerprints([base, top]) == before
