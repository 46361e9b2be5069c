"""The real-guest harness, proved against qemu-nbd: a Linux guest reads and writes a qcow2 chain over NBD.

qemu-nbd serves the benchmark chain's D.qcow2 on a unix socket; a VM (tests/guest_vm.py)
whose /dev/vda is that export reads the first MiBs (its checksum must be the chain's),
writes known patterns at offsets chosen against the chain's layout with
``dd ... conv=fsync`` and powers off.  Afterwards qemu-img check is clean, every
byte the guest wrote is there and every other byte is the original.
"""
import os
import re
import shutil
import time

import pytest

from conftest import run
from guest_vm import (CHAIN_EXTENTS, GuestWrites, boot_guest, chain_body, first_difference, guest_view,
                      md5_of_start, require_guest_vm)
from qmp_clients import remove_tree, short_tempdir


def wait_gone(pid, deadline):
    while os.path.exists("/proc/%d" % pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    return not os.path.exists("/proc/%d" % pid)


@pytest.fixture
def socket_dir():
    directory = short_tempdir()
    yield directory
    remove_tree(directory)


def test_a_guest_reads_and_writes_a_chain_served_by_qemu_nbd(chain_copy, socket_dir, tmp_path):
    require_guest_vm()
    if shutil.which("qemu-nbd") is None:
        pytest.fail("qemu-nbd missing (Debian's qemu-utils)")
    top = os.path.join(chain_copy, "D.qcow2")
    original = guest_view(top, str(tmp_path / "original.raw"))
    writes = GuestWrites(CHAIN_EXTENTS)
    sock, pid_file = os.path.join(socket_dir, "nbd.sock"), os.path.join(socket_dir, "nbd.pid")
    # --fork returns once the socket listens; without --persistent qemu-nbd exits (closing and
    # flushing the image) when the guest disconnects.
    run("qemu-nbd", "--fork", "--pid-file", pid_file, "-k", sock, "-x", "disk", "-f", "qcow2", top)
    with open(pid_file) as handle:
        server = int(handle.read())
    try:
        console, seconds = boot_guest("file=nbd:unix:%s:exportname=disk,format=raw,cache=none" % sock,
                                      chain_body(writes), str(tmp_path), files=writes.files())
        assert wait_gone(server, time.monotonic() + 60), "qemu-nbd did not exit after the guest left"
    finally:
        if os.path.exists("/proc/%d" % server):
            os.kill(server, 15)
    print("guest boot to power-off: %.1f s" % seconds)
    assert re.search(r"^read-md5 %s " % md5_of_start(original), console, re.M), console
    assert console.count("records out") == len(CHAIN_EXTENTS), console
    run("qemu-img", "check", "-q", top)
    writes.expect(original, str(tmp_path / "expected.raw"))
    after = guest_view(top, str(tmp_path / "after.raw"))
    assert first_difference(after, str(tmp_path / "expected.raw")) is None
