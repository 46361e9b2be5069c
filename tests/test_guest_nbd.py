"""A real guest on blockmon's NBD export while blockmon streams the chain below it (issue 11).

blockmon runs as a storage daemon (``--nbd-server`` + ``--export`` + ``-qmp``) over the
benchmark chain's D.qcow2.  A QMP client starts ``block-stream`` on virtio0 at 1 MiB/s,
so the stream is still running while a VM (tests/guest_vm.py), whose /dev/vda is the
export, reads the first MiBs and writes known patterns with ``dd ... conv=fsync``
and powers off.  Then the stream runs to its end at full speed, blockmon quits, and
the chain has no backing file, ``qemu-img check`` is clean, every byte the guest
wrote is there and every other byte is the original.  One VM boot.
"""
import asyncio
import contextlib
import os
import re
import subprocess
import sys
import time

import pytest

from conftest import ROOT, connect_when_listening, run
from guest_vm import (CHAIN_EXTENTS, GuestWrites, boot_guest, chain_body, first_difference, guest_view,
                      md5_of_start, require_guest_vm)
from qmp_clients import remove_tree, short_tempdir

QEMUMonitorProtocol = pytest.importorskip("qemu.qmp.legacy").QEMUMonitorProtocol
WAIT = 120          # seconds: hang guards, not speed assertions
SLOW = 1 << 20      # the stream's speed while the guest runs: ~150 s for the 256 MiB chain's data


def start_daemon(top, qmp_sock, nbd_sock, log):
    argv = [sys.executable, "-m", "monitor", "-drive", "file=%s,if=virtio,node-name=top" % top,
            "-qmp", "unix:%s,server=on,wait=off" % qmp_sock,
            "--nbd-server", "addr.type=unix,addr.path=%s" % nbd_sock,
            "--export", "type=nbd,id=e0,node-name=top,name=virtio0,writable=on"]
    return subprocess.Popen(argv, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)


def qmp_client(path):
    connect_when_listening(path, time.monotonic() + WAIT).close()
    qmp = QEMUMonitorProtocol(path)
    qmp.connect()
    qmp.settimeout(WAIT)
    return qmp


def wait_for_event(qmp, name):
    deadline = time.monotonic() + WAIT
    while True:
        try:
            event = qmp.pull_event(wait=max(0.1, deadline - time.monotonic()))
        except asyncio.TimeoutError:
            raise AssertionError("no %s within %d s" % (name, WAIT)) from None
        if event["event"] == name:
            return event


@pytest.fixture
def socket_dir():
    directory = short_tempdir()
    yield directory
    remove_tree(directory)


def test_a_guest_writes_through_the_export_while_the_chain_streams(chain_copy, socket_dir, tmp_path):
    require_guest_vm()
    top = os.path.join(chain_copy, "D.qcow2")
    original = guest_view(top, str(tmp_path / "original.raw"))
    writes = GuestWrites(CHAIN_EXTENTS)
    qmp_sock, nbd_sock = os.path.join(socket_dir, "qmp.sock"), os.path.join(socket_dir, "nbd.sock")
    with open(str(tmp_path / "blockmon.log"), "w+") as log:
        daemon = start_daemon(top, qmp_sock, nbd_sock, log)
        try:
            qmp = qmp_client(qmp_sock)
            connect_when_listening(nbd_sock, time.monotonic() + WAIT).close()
            qmp.cmd("block-stream", device="virtio0", speed=SLOW)
            console, _seconds = boot_guest("file=nbd:unix:%s:exportname=virtio0,format=raw,cache=none"
                                           % nbd_sock, chain_body(writes), str(tmp_path), files=writes.files())
            # The guest's reads and writes all happened while the stream ran.
            assert [job["device"] for job in qmp.cmd("query-block-jobs")] == ["virtio0"]
            qmp.cmd("block-job-set-speed", device="virtio0", speed=0)
            completed = wait_for_event(qmp, "BLOCK_JOB_COMPLETED")
            assert qmp.cmd("quit") == {}
            assert daemon.wait(timeout=WAIT) == 0
            with contextlib.suppress(EOFError):     # blockmon closed the socket after quit, as QEMU does
                qmp.close()
        finally:
            if daemon.poll() is None:
                daemon.kill()
                daemon.wait()
            log.seek(0)
            print("blockmon's output:\n" + log.read())
    assert "error" not in completed["data"] and completed["data"]["device"] == "virtio0"
    assert re.search(r"^read-md5 %s " % md5_of_start(original), console, re.M), console
    assert console.count("records out") == len(CHAIN_EXTENTS), console
    assert "backing-filename" not in run("qemu-img", "info", "--output=json", top).stdout
    run("qemu-img", "check", "-q", top)
    writes.expect(original, str(tmp_path / "expected.raw"))
    assert first_difference(guest_view(top, str(tmp_path / "after.raw")), str(tmp_path / "expected.raw")) is None
