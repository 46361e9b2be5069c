"""How blockmon ends, as a supervised process: ``quit`` from QMP, from HMP over QMP and from
``-monitor`` while standard input is an open pipe that sends nothing; SIGTERM, SIGINT and
SIGHUP as QEMU (one stderr line, SHUTDOWN "host-signal", running jobs cancelled with their
events, exit).  Each test runs ``python -m monitor`` with a speed-limited stream going.
"""
import signal
import subprocess
import sys
import time

import pytest

from blockmon_process import LONG, Blockmon, small_chain
from qmp_clients import LineClient
from tests.conftest import ROOT, connect_when_listening
from tests.oracle import check_clean, fingerprints, info

SIZE = 64 << 20
SLOW = 1 << 20          # a 64 MiB stream at 1 MiB/s is still running when the test acts


@pytest.fixture
def chain(tmp_path, qemu_img):
    top = small_chain(str(tmp_path), size_mib=64, base_data_mib=64)
    return top, str(tmp_path / "base.qcow2")


def statuses(events):
    return [e["data"]["status"] if e["event"] == "JOB_STATUS_CHANGE" else e["event"] for e in events]


def read_until_closed(client):
    """Everything the server sends until it closes the connection (events are kept)."""
    try:
        while True:
            client.read_reply()
    except EOFError:
        pass


def assert_cancelled_cleanly(client, top, base, before, reason):
    assert statuses(client.events) == ["created", "running", "SHUTDOWN", "aborting",
                                       "BLOCK_JOB_CANCELLED", "concluded", "null"]
    shutdown = client.events[2]["data"]
    assert shutdown == {"guest": False, "reason": reason}
    cancelled = client.events[4]["data"]
    assert cancelled["device"] == "virtio0" and 0 <= cancelled["offset"] < SIZE
    assert info(top)["backing-filename"] == "base.qcow2"
    assert check_clean(top)[0]
    assert fingerprints([base]) == before


@pytest.mark.parametrize("command, arguments, reply", [
    ("quit", None, {}),
    ("human-monitor-command", {"command-line": "quit"}, ""),
])
def test_qmp_quit_ends_blockmon_while_stdin_stays_open(chain, command, arguments, reply):
    top, base = chain
    before = fingerprints([base])
    process = Blockmon(["-drive", "file=%s,if=none,id=virtio0" % top])
    try:
        client = process.qmp()
        assert client.cmd("block-stream", {"device": "virtio0", "speed": SLOW}) == {"return": {}}
        assert client.cmd(command, arguments) == {"return": reply}
        read_until_closed(client)
        status, _, err = process.wait()       # stdin is still open, and silent
    finally:
        process.close()
    assert status == 0, err
    assert_cancelled_cleanly(client, top, base, before, "host-qmp-quit")


def test_monitor_quit_ends_blockmon_while_stdin_stays_open(chain):
    top, base = chain
    before = fingerprints([base])
    process = Blockmon(["-drive", "file=%s,if=none,id=virtio0" % top], monitor=True)
    try:
        client = process.qmp()
        connect_when_listening(process.hmp_path, time.monotonic() + LONG).close()
        hmp = LineClient(process.hmp_path)
        hmp.sock.settimeout(LONG)
        hmp.read_until(b"(qemu) ")
        hmp.send("block_stream virtio0 1M\r\n")
        hmp.read_until(b"(qemu) ")
        hmp.send("quit\r\n")
        read_until_closed(client)
        status, _, err = process.wait()
    finally:
        process.close()
    assert status == 0, err
    assert_cancelled_cleanly(client, top, base, before, "host-qmp-quit")


def test_qmp_quit_ends_a_command_line_session_waiting_for_its_job(chain):
    top, base = chain
    before = fingerprints([base])
    process = Blockmon([top, "-c", "block_stream virtio0 1M"], stdin=subprocess.DEVNULL)
    try:
        client = process.qmp()
        while client.cmd("query-block-jobs") == {"return": []}:   # -c runs as blockmon starts
            time.sleep(0.05)
        assert client.cmd("quit") == {"return": {}}
        read_until_closed(client)
        status, _, err = process.wait()
    finally:
        process.close()
    assert status == 0, err
    # The -c session starts the job as the QMP server starts, so the client may or may
    # not hear its first events ('created', 'running'), and the quit may even reach a job
    # that is created but not yet running; what follows the quit is fixed.
    heard = statuses(client.events)
    assert heard[heard.index("SHUTDOWN"):] == ["SHUTDOWN", "aborting", "BLOCK_JOB_CANCELLED",
                                                "concluded", "null"]
    assert heard[:heard.index("SHUTDOWN")] in ([], ["created"], ["created", "running"], ["running"])
    shutdown = client.events[heard.index("SHUTDOWN")]
    assert shutdown["data"] == {"guest": False, "reason": "host-qmp-quit"}
    assert info(top)["backing-filename"] == "base.qcow2"
    assert check_clean(top)[0]
    assert fingerprints([base]) == before


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_a_signal_ends_blockmon_as_qemu(chain, signum):
    top, base = chain
    before = fingerprints([base])
    process = Blockmon(["-drive", "file=%s,if=none,id=virtio0" % top])
    try:
        client = process.qmp()
        watcher = process.qmp()
        assert client.cmd("block-stream", {"device": "virtio0", "speed": SLOW}) == {"return": {}}
        process.proc.send_signal(signum)
        read_until_closed(client)
        read_until_closed(watcher)
        status, _, err = process.wait()
    finally:
        process.close()
    assert (status, err) == (0, "blockmon: terminating on signal %d\n" % signum)
    assert_cancelled_cleanly(client, top, base, before, "host-signal")
    assert statuses(watcher.events) == statuses(client.events)      # every client hears it


def test_sigterm_ends_a_command_line_session_waiting_for_its_job(chain):
    top, base = chain
    proc = subprocess.Popen([sys.executable, "-m", "monitor", top, "-c", "block_stream virtio0 1M",
                             "-c", "info block-jobs"], cwd=ROOT, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().startswith("Streaming device virtio0: Completed")
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=LONG)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert err == "blockmon: terminating on signal 15\n"
    assert '"event": "BLOCK_JOB_CANCELLED"' in out
    assert info(top)["backing-filename"] == "base.qcow2"
    assert check_clean(top)[0]
