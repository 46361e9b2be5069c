"""The NBD server and export commands over a real QMP socket, with QEMU 7.2's texts
(qemu-next-ops.md section 4), BLOCK_EXPORT_DELETED, and safe/hard removal while a
real client (qemu-io, nbdinfo) is connected."""
import json
import os
import socket
import subprocess
import sys
import time

import pytest

from conftest import ROOT, run
from nbd_helpers import build_chain, uri, wait_for_socket


class Daemon:
    def __init__(self, directory, top):
        self.dir = directory
        self.qmp_path = os.path.join(directory, "qmp.sock")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "monitor", "-drive", "file=%s,if=virtio" % top,
             "-qmp", "unix:%s,server=on,wait=off" % self.qmp_path],
            cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True)
        wait_for_socket(self.qmp_path, self.process)
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.connect(self.qmp_path)
        self.sock.settimeout(60)
        self.reader = self.sock.makefile("rb")
        self.events = []
        self._receive()
        self.qmp("qmp_capabilities")

    def _receive(self):
        return json.loads(self.reader.readline())

    def qmp(self, command, **arguments):
        """The whole answer: {"return": ...} or {"error": ...}; events are kept aside."""
        self.sock.sendall(json.dumps({"execute": command, "arguments": arguments}).encode() + b"\n")
        while True:
            message = self._receive()
            if "event" in message:
                self.events.append(message)
            else:
                return message

    def hmp(self, line):
        return self.qmp("human-monitor-command", **{"command-line": line})["return"]

    def error(self, command, **arguments):
        return self.qmp(command, **arguments)["error"]["desc"]

    def exported_events(self):
        self.qmp("query-version")       # events published before this reply are in
        return [e["data"]["id"] for e in self.events if e["event"] == "BLOCK_EXPORT_DELETED"]

    def close(self):
        self.sock.close()
        self.process.terminate()
        self.process.communicate(timeout=60)


@pytest.fixture
def daemon(tmp_path):
    top = build_chain(str(tmp_path))
    d = Daemon(str(tmp_path), top)
    yield d
    d.close()


def test_hmp_nbd_commands_and_their_errors(daemon, tmp_path):
    sock = str(tmp_path / "nbd.sock")
    assert daemon.hmp("nbd_server_add virtio0") == "Error: NBD server not running\r\n"
    assert daemon.hmp("nbd_server_stop") == "Error: NBD server not running\r\n"
    assert daemon.hmp("nbd_server_remove virtio0") == "Error: Export 'virtio0' is not found\r\n"
    assert daemon.hmp("nbd_server_start") == (
        'nbd_server_start: string expected\r\nTry "help nbd_server_start" for more information\r\n')
    assert daemon.hmp("nbd_server_start -w unix:" + sock) == \
        "Error: -w only valid together with -a\r\n"
    # getaddrinfo's text; a resolver that cannot be reached says "Temporary failure ..."
    assert daemon.hmp("nbd_server_start nosuchhost.invalid:1") in (
        "Error: address resolution failed for nosuchhost.invalid:1: Name or service not known\r\n",
        "Error: address resolution failed for nosuchhost.invalid:1: "
        "Temporary failure in name resolution\r\n")
    assert daemon.hmp("nbd_server_start unix:" + sock) == ""
    assert oct(os.stat(sock).st_mode & 0o777) == "0o600"
    assert daemon.hmp("nbd_server_start unix:" + sock) == "Error: NBD server already running\r\n"
    assert daemon.hmp("nbd_server_add nosuch") == \
        "Error: Cannot find device='nosuch' nor node-name='nosuch'\r\n"
    assert daemon.hmp("nbd_server_add -w virtio0") == ""
    assert daemon.hmp("nbd_server_add virtio0") == \
        "Error: Block export id 'virtio0' is already in use\r\n"
    assert daemon.hmp("nbd_server_add virtio0 second") == ""      # the same device twice
    assert daemon.qmp("query-block-exports")["return"] == [
        {"node-name": "D", "shutting-down": False, "type": "nbd", "id": "second"},
        {"node-name": "D", "shutting-down": False, "type": "nbd", "id": "virtio0"}]
    assert "read 65536/65536 bytes" in run("qemu-io", "-r", "-f", "raw", "-c",
                                           "read -P 0xa1 0 64K", uri(sock, "second")).stdout
    assert daemon.hmp("nbd_server_remove second") == ""
    assert daemon.hmp("nbd_server_remove second") == "Error: Export 'second' is not found\r\n"
    assert daemon.exported_events() == ["second"]
    assert daemon.hmp("nbd_server_stop") == ""
    assert daemon.exported_events() == ["second", "virtio0"]
    assert not os.path.exists(sock)
    refused = run("qemu-img", "info", uri(sock, "virtio0"), check=False)
    assert refused.returncode != 0


def test_hmp_help_lines_print_the_name_twice_as_qemu(daemon):
    assert daemon.hmp("help nbd_server_start") == (
        "nbd_server_start nbd_server_start [-a] [-w] host:port -- serve block devices on the "
        "given host and port\r\n")
    assert daemon.hmp("help nbd_server_remove") == (
        "nbd_server_remove nbd_server_remove [-f] name -- remove an export previously exposed "
        "via NBD\r\n")


def test_hmp_start_all_exports_every_device(daemon, tmp_path):
    sock = str(tmp_path / "nbd.sock")
    assert daemon.hmp("nbd_server_start -a -w unix:" + sock) == ""
    assert [e["id"] for e in daemon.qmp("query-block-exports")["return"]] == ["virtio0"]
    wrote = run("qemu-io", "-f", "raw", "-c", "write -P 0x42 0 4K", uri(sock, "virtio0"))
    assert "wrote 4096/4096 bytes at offset 0" in wrote.stdout
    text = daemon.hmp("info block-exports")
    assert text.startswith("NBD server listening on unix:%s\r\n" % sock)
    assert "virtio0: nbd name 'virtio0', device virtio0 (node D), writable, 0 clients" in text


def _client(sock, name):
    """A qemu-io that connects and then waits on its stdin: a connected client."""
    process = subprocess.Popen(["qemu-io", "-r", "-f", "raw", uri(sock, name)], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    process.stdin.write("read -P 0xa1 0 4K\n")
    process.stdin.flush()
    return process


def _wait_clients(daemon, count):
    for _ in range(600):
        details = daemon.qmp("x-blockmon-query-exports")["return"]["exports"]
        if sum(len(e["clients"]) for e in details) == count:
            return
        time.sleep(0.05)
    raise AssertionError("never %d clients" % count)


def test_safe_remove_refused_while_a_client_is_connected_hard_drops_it(daemon, tmp_path):
    sock = str(tmp_path / "nbd.sock")
    assert daemon.hmp("nbd_server_start unix:" + sock) == ""
    assert daemon.hmp("nbd_server_add -w virtio0") == ""
    client = _client(sock, "virtio0")
    _wait_clients(daemon, 1)
    assert daemon.hmp("nbd_server_remove virtio0") == (
        "Error: export 'virtio0' still in use\r\nUse mode='hard' to force client disconnect\r\n")
    assert daemon.error("block-export-del", id="virtio0") == "export 'virtio0' still in use"
    assert daemon.exported_events() == []
    assert daemon.hmp("nbd_server_remove -f virtio0") == ""
    assert daemon.exported_events() == ["virtio0"]
    output, _ = client.communicate("read 0 4K\n", timeout=60)
    assert "read failed: Input/output error" in output
    assert daemon.qmp("query-block-exports")["return"] == []


def test_qmp_nbd_server_and_block_export_commands(daemon, tmp_path):
    sock = str(tmp_path / "nbd.sock")
    assert daemon.error("block-export-add", type="nbd", id="e", **{"node-name": "D"}) == \
        "NBD server not running"
    assert daemon.error("nbd-server-start", addr={"type": "unix"}) == "Parameter 'addr.data' is missing"
    assert daemon.error("nbd-server-start", addr={"type": "inet", "data": {
        "host": "127.0.0.1", "port": 1}}) == \
        "Invalid parameter type for 'addr.data.port', expected: string"
    assert daemon.qmp("nbd-server-start", addr={"type": "unix", "data": {"path": sock}},
                      **{"max-connections": 2}) == {"return": {}}
    assert daemon.error("block-export-add", type="nbd", id="e",
                        **{"node-name": "nosuch"}) == "Cannot find device='' nor node-name='nosuch'"
    assert daemon.qmp("block-export-add", type="nbd", id="exp1", writable=True,
                      **{"node-name": "D", "allocation-depth": True}) == {"return": {}}
    assert daemon.error("block-export-add", type="nbd", id="exp1", **{"node-name": "D"}) == \
        "Block export id 'exp1' is already in use"
    assert daemon.error("block-export-add", type="nbd", id="exp3", name="D",
                        **{"node-name": "A"}) == "NBD server already has export named 'D'"
    assert daemon.error("block-export-add", type="nbd", id="ro", writable=True,
                        **{"node-name": "A"}) == "Block node is read-only"
    assert daemon.qmp("nbd-server-add", device="virtio0", name="dev") == {"return": {}}
    assert daemon.error("block-export-del", id="nosuch") == "Export 'nosuch' is not found"
    # the NBD name defaults to the node name; the id is not a name clients can use
    assert "export 'exp1' not present" in run("qemu-img", "info", uri(sock, "exp1"),
                                              check=False).stderr
    assert run("qemu-img", "info", uri(sock, "D")).returncode == 0
    assert daemon.qmp("block-export-del", id="exp1", mode="hard") == {"return": {}}
    assert daemon.qmp("nbd-server-remove", name="dev") == {"return": {}}
    assert daemon.exported_events() == ["exp1", "dev"]
    assert daemon.qmp("nbd-server-stop") == {"return": {}}
    assert daemon.error("nbd-server-stop") == "NBD server not running"


def test_max_connections_holds_extra_clients_back(daemon, tmp_path):
    sock = str(tmp_path / "nbd.sock")
    daemon.qmp("nbd-server-start", addr={"type": "unix", "data": {"path": sock}},
               **{"max-connections": 1})
    daemon.qmp("nbd-server-add", device="virtio0")
    first = _client(sock, "virtio0")
    _wait_clients(daemon, 1)
    second = _client(sock, "virtio0")
    time.sleep(0.5)
    _wait_clients(daemon, 1)              # the second waits in the backlog
    first.communicate("quit\n", timeout=60)
    _wait_clients(daemon, 1)              # ... and gets in once the first has gone
    output, _ = second.communicate("quit\n", timeout=60)
    assert "read 4096/4096 bytes at offset 0" in output


def test_an_export_of_the_top_node_moves_to_the_new_overlay(daemon, tmp_path):
    sock, overlay = str(tmp_path / "nbd.sock"), str(tmp_path / "E.qcow2")
    daemon.qmp("nbd-server-start", addr={"type": "unix", "data": {"path": sock}})
    daemon.qmp("block-export-add", type="nbd", id="top", writable=True, **{"node-name": "D"})
    assert daemon.hmp("snapshot_blkdev virtio0 " + overlay) == ""
    assert daemon.qmp("query-block-exports")["return"][0]["node-name"] == "E"
    run("qemu-io", "-f", "raw", "-c", "write -P 0x42 0 4K", uri(sock, "D"))
    # the write is in the new overlay; the old top (now read-only backing) is untouched
    # -U: the daemon holds the overlay locked for writing (QEMU's image locks)
    assert "read 4096/4096" in run("qemu-io", "-r", "-U", "-f", "qcow2", "-c", "read -P 0x42 0 4K",
                                   overlay).stdout
    assert "read 4096/4096" in run("qemu-io", "-r", "-f", "qcow2", "-c", "read -P 0xa1 0 4K",
                                   str(tmp_path / "D.qcow2")).stdout


def test_a_client_that_hung_up_does_not_block_a_safe_remove(daemon, tmp_path):
    """The client sends a 16 MiB WRITE (the whole disk) and hangs up: its thread is still writing when
    the remove comes, but the client is gone, so a safe remove succeeds (as right after
    a qemu-io that exits), and the write it sent reached the disk."""
    from test_nbd_fuzz import RawClient
    sock = str(tmp_path / "nbd.sock")
    assert daemon.hmp("nbd_server_start unix:" + sock) == ""
    assert daemon.hmp("nbd_server_add -w virtio0") == ""
    client = RawClient(sock)
    client.go(b"virtio0")
    client.request(1, 0, 16 << 20, payload=b"\x6b" * (16 << 20))     # NBD_CMD_WRITE
    client.close()
    assert daemon.hmp("nbd_server_remove virtio0") == ""
    assert daemon.exported_events() == ["virtio0"]
    read = daemon.hmp("qemu-io virtio0 \"read -P 0x6b 0 16M\"")
    assert "read 16777216/16777216 bytes" in read


def _wait_event(daemon, name):
    deadline = time.monotonic() + 60
    while not any(e["event"] == name for e in daemon.events):
        assert time.monotonic() < deadline, "no %s: %r" % (name, daemon.events)
        daemon.qmp("query-version")     # events sent before this reply are collected
        time.sleep(0.05)


def _reads(path, command, image_format="qcow2"):
    """qemu-io's verdict on ``command`` (a 'read -P ...') against an image blockmon may hold."""
    return run("qemu-io", "-r", "-U", "-f", image_format, "-c", command, path, check=False).stdout


def _job_ends_with_the_export_on(daemon, sock, start):
    """Start a job with ``start()``; an NBD client writes once it is READY; complete;
    the client writes again.  Returns the export's node name after the switch."""
    start()
    _wait_event(daemon, "BLOCK_JOB_READY")
    run("qemu-io", "-f", "raw", "-c", "write -P 0x51 1M 64K", uri(sock, "D"))
    assert daemon.qmp("block-job-complete", device="virtio0") == {"return": {}}
    _wait_event(daemon, "BLOCK_JOB_COMPLETED")
    run("qemu-io", "-f", "raw", "-c", "write -P 0x52 2M 64K", uri(sock, "D"))
    return daemon.qmp("query-block-exports")["return"][0]["node-name"]


def test_an_export_follows_a_mirror_switch(daemon, tmp_path):
    """A write while the mirror is ready reaches the target; after block-job-complete the
    export writes to the target only, and the old top stays as it was at the switch."""
    sock, target, old_top = str(tmp_path / "nbd.sock"), str(tmp_path / "T.qcow2"), str(tmp_path / "D.qcow2")
    daemon.qmp("nbd-server-start", addr={"type": "unix", "data": {"path": sock}})
    daemon.qmp("block-export-add", type="nbd", id="top", writable=True, **{"node-name": "D"})
    start = lambda: daemon.qmp("drive-mirror", device="virtio0", target=target, sync="full", format="qcow2")
    assert _job_ends_with_the_export_on(daemon, sock, start) == "T"
    assert "read 65536/65536" in _reads(target, "read -P 0x51 1M 64K")
    assert "read 65536/65536" in _reads(target, "read -P 0x52 2M 64K")
    assert "read 65536/65536" in _reads(old_top, "read -P 0x51 1M 64K")
    assert "Pattern verification failed" in _reads(old_top, "read -P 0x52 2M 64K")


def test_an_export_follows_an_active_commit_into_its_base(daemon, tmp_path):
    """Active commit D -> A: once ready, an NBD write reaches A; after complete the export
    is on A and writes land there."""
    sock, base = str(tmp_path / "nbd.sock"), str(tmp_path / "A.qcow2")
    daemon.qmp("nbd-server-start", addr={"type": "unix", "data": {"path": sock}})
    daemon.qmp("block-export-add", type="nbd", id="top", writable=True, **{"node-name": "D"})
    start = lambda: daemon.qmp("block-commit", device="virtio0")
    assert _job_ends_with_the_export_on(daemon, sock, start) == "A"
    assert "read 65536/65536" in _reads(base, "read -P 0x51 1M 64K")
    assert "read 65536/65536" in _reads(base, "read -P 0x52 2M 64K")
    assert "read 524288/524288" in _reads(base, "read -P 0xd4 512K 512K")     # D's own data, committed
