"""Backing names stored with a NUL inside their length are read up to the NUL, as QEMU reads
them (a C string); blockmon starts, shows and streams such a chain (through the CLI)."""
import struct
import subprocess
import sys

import pytest

from tests.conftest import ROOT, run
from tests.oracle import check_clean, info


def stored_name_with(path, tail, at=None):
    """Rewrite the stored backing name's bytes from ``at`` (default: its end) with ``tail``
    and stretch backing_file_size over them."""
    with open(path, "r+b") as f:
        offset, size = struct.unpack(">QI", f.read(24)[8:20])
        start = size if at is None else at
        f.seek(offset + start)
        f.write(tail)
        f.seek(16)
        f.write(struct.pack(">I", max(size, start + len(tail))))


@pytest.fixture
def chain(tmp_path, qemu_img):
    run("qemu-img", "create", "-q", "-f", "qcow2", str(tmp_path / "base.qcow2"), "4M")
    run("qemu-io", "-f", "qcow2", "-c", "write -P 0x61 0 1M", str(tmp_path / "base.qcow2"))
    top = str(tmp_path / "top.qcow2")
    run("qemu-img", "create", "-q", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", top, "4M")
    return top


def blockmon(top, *commands):
    argv = [sys.executable, "-m", "monitor", top]
    for command in commands:
        argv += ["-c", command]
    return subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=60)


def test_a_nul_inside_the_stored_length_ends_the_name(chain):
    stored_name_with(chain, b"\0junk\0")
    assert info(chain)["backing-filename"] == "base.qcow2"          # qemu-img agrees
    result = blockmon(chain, "info block", 'qemu-io virtio0 "read -P 0x61 0 1M"', "block_stream virtio0")
    assert result.returncode == 0, result.stderr
    assert "    Backing file:     base.qcow2 (chain depth: 1)\n" in result.stdout
    assert "read 1048576/1048576 bytes at offset 0\n" in result.stdout
    assert '"event": "BLOCK_JOB_COMPLETED"' in result.stdout and '"error"' not in result.stdout
    assert "backing-filename" not in info(chain)
    assert check_clean(chain)[0]


def test_a_name_that_starts_with_nul_is_no_backing_file(chain):
    stored_name_with(chain, b"\0", at=0)
    assert "backing-filename" not in info(chain)
    result = blockmon(chain, "info block", 'qemu-io virtio0 "read -P 0 0 1M"')
    assert result.returncode == 0, result.stderr
    assert "Backing file" not in result.stdout
