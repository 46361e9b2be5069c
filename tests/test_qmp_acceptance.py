"""Issue 5 acceptance 1-6: real QMP clients drive the real BlockCore through MonitorServers.

Each test serves a private copy of the 256 MiB reference chain A <- B <- C <- D as
``virtio0`` on a unix QMP socket and a unix HMP socket.  A stream at 1 MiB/s is
still running when it is queried; ``block-job-set-speed 0`` then lets it finish.
"""
import asyncio
import json
import os
import subprocess
import threading

import pytest

from commands.core import BlockCore

from monitor.servers import MonitorServers                                   # noqa: E402
from fake_core import TIMEOUT  # noqa: E402
from qmp_clients import (LineClient, QmpEventClient, job_ended,  # noqa: E402
                         remove_tree, run_qmp_shell, short_tempdir, without_timestamps)

SIZE = 256 << 20
SLOW = 1 << 20
LONG = 60                           # seconds: a whole 256 MiB stream, however slow the machine


class Served:
    def __init__(self, chain_dir):
        self.directory = short_tempdir()
        self.qmp_path = os.path.join(self.directory, "qmp.sock")
        self.hmp_path = os.path.join(self.directory, "hmp.sock")
        self.chain = chain_dir
        self.quits = threading.Event()
        self.core = BlockCore()
        self.core.add_drive("virtio0", os.path.join(chain_dir, "D.qcow2"))
        self.servers = MonitorServers(self.core, ["unix:%s,server=on,wait=off" % self.qmp_path],
                                      ["unix:%s,server=on,wait=off" % self.hmp_path],
                                      on_quit=self.quits.set).start()

    def qmp(self):
        client = QmpEventClient(self.qmp_path)
        client.sock.settimeout(LONG)
        return client

    def close(self):
        self.servers.stop()
        self.core.shutdown()
        remove_tree(self.directory)


@pytest.fixture
def served(chain_copy):
    served = Served(chain_copy)
    yield served
    served.close()


def ok(reply):
    assert "return" in reply, reply
    return reply["return"]


# -- 1. qemu.qmp's QMPClient and the legacy QEMUMonitorProtocol ------------------------------

def test_qmpclient_streams_and_sees_the_completion_event(served):
    from qemu.qmp import QMPClient

    async def session():
        client = QMPClient("acceptance")
        await asyncio.wait_for(client.connect(served.qmp_path), TIMEOUT)
        try:
            with client.listener("BLOCK_JOB_COMPLETED") as listener:
                await asyncio.wait_for(client.execute(
                    "block-stream", {"device": "virtio0", "speed": SLOW}), TIMEOUT)
                (job,) = await asyncio.wait_for(client.execute("query-block-jobs"), TIMEOUT)
                assert (job["device"], job["type"], job["status"], job["len"]) == \
                    ("virtio0", "stream", "running", SIZE)
                await asyncio.wait_for(client.execute(
                    "block-job-set-speed", {"device": "virtio0", "speed": 0}), TIMEOUT)
                event = await asyncio.wait_for(listener.get(), LONG)
            assert event["data"] == {"device": "virtio0", "len": SIZE, "offset": SIZE, "speed": 0,
                                     "type": "stream"}
            (block,) = await asyncio.wait_for(client.execute("query-block"), TIMEOUT)
            assert "backing_file" not in block["inserted"]
        finally:
            await asyncio.wait_for(client.disconnect(), TIMEOUT)

    asyncio.run(session())


def test_legacy_client_streams_and_sees_the_completion_event(served):
    from qemu.qmp.legacy import QEMUMonitorProtocol
    monitor = QEMUMonitorProtocol(served.qmp_path)
    try:
        monitor.connect(negotiate=True)
        assert monitor.cmd("block-stream", device="virtio0", speed=SLOW) == {}
        (job,) = monitor.cmd("query-block-jobs")
        assert (job["device"], job["status"], job["speed"]) == ("virtio0", "running", SLOW)
        assert monitor.cmd("block-job-set-speed", device="virtio0", speed=0) == {}
        for _ in range(100):
            event = monitor.pull_event(wait=float(LONG))
            if event["event"] == "BLOCK_JOB_COMPLETED":
                break
        assert event["data"]["offset"] == SIZE and "error" not in event["data"]
    finally:
        monitor.close()


# -- 2. qmp-shell, in QMP mode and in -H HMP mode --------------------------------------------

def test_qmp_shell_drives_a_job(served, tmp_path):
    result = run_qmp_shell(served.qmp_path, [
        "block-stream device=virtio0 speed=%d" % SLOW, "query-block-jobs",
        "block-job-cancel device=virtio0"], home=tmp_path)
    assert result.returncode == 0, result.stderr
    replies = [json.loads(line[line.index("{"):]) for line in result.stdout.splitlines()
               if line.startswith("(QEMU) {")]
    assert replies[0] == {"return": {}}
    assert replies[1]["return"][0]["device"] == "virtio0"
    assert replies[2] == {"return": {}}


def test_qmp_shell_hmp_mode(served, tmp_path):
    result = run_qmp_shell(served.qmp_path, ["info block-jobs", "block_job_cancel virtio0"], "-H",
                           home=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "(QEMU) No active jobs\n (QEMU) Error: Block job 'virtio0' not found\n (QEMU) " in result.stdout


# -- 3. event sequences as QEMU 7.2 emits them ------------------------------------------------

def status(job_id, value):
    return ("JOB_STATUS_CHANGE", {"id": job_id, "status": value})


def test_event_sequence_of_a_successful_stream(served):
    client = served.qmp()
    ok(client.cmd("block-stream", {"device": "virtio0"}))
    client.wait_event(job_ended("virtio0"))
    assert without_timestamps(client.events) == [
        status("virtio0", "created"), status("virtio0", "running"), status("virtio0", "waiting"),
        status("virtio0", "pending"),
        ("BLOCK_JOB_COMPLETED", {"device": "virtio0", "len": SIZE, "offset": SIZE, "speed": 0,
                                 "type": "stream"}),
        status("virtio0", "concluded"), status("virtio0", "null")]


def test_event_sequence_of_a_cancelled_stream(served):
    client = served.qmp()
    ok(client.cmd("block-stream", {"device": "virtio0", "job-id": "j1", "speed": SLOW}))
    ok(client.cmd("block-job-cancel", {"device": "j1"}))
    client.wait_event(job_ended("j1"))
    events = without_timestamps(client.events)
    cancelled = events[3][1]
    assert events == [status("j1", "created"), status("j1", "running"), status("j1", "aborting"),
                      ("BLOCK_JOB_CANCELLED", {"device": "j1", "len": SIZE, "offset": cancelled["offset"],
                                               "speed": SLOW, "type": "stream"}),
                      status("j1", "concluded"), status("j1", "null")]
    assert 0 <= cancelled["offset"] < SIZE


def test_event_sequence_of_a_failed_stream(served):
    from images.faults import FaultInjectingImage
    top = served.core.active_image("virtio0")
    top.backing = FaultInjectingImage(top.backing)      # every read below D fails with EIO
    top.backing.inject("read")
    client = served.qmp()
    ok(client.cmd("block-stream", {"device": "virtio0"}))
    client.wait_event(job_ended("virtio0"))
    events = without_timestamps(client.events)
    completed = [data for name, data in events if name == "BLOCK_JOB_COMPLETED"]
    assert events == [status("virtio0", "created"), status("virtio0", "running"),
                      ("BLOCK_JOB_ERROR", {"device": "virtio0", "operation": "read", "action": "report"}),
                      status("virtio0", "aborting"),
                      ("BLOCK_JOB_COMPLETED", {"device": "virtio0", "len": SIZE,
                                               "offset": completed[0]["offset"], "speed": 0,
                                               "type": "stream", "error": "Input/output error"}),
                      status("virtio0", "concluded"), status("virtio0", "null")]


# -- 4. error texts and classes -------------------------------------------------------------

ERRORS = [
    ("nosuch", None, "CommandNotFound", "The command nosuch has not been found"),
    ("block-stream", {}, "GenericError", "Parameter 'device' is missing"),
    ("block-job-set-speed", {"device": "virtio0", "speed": "fast"}, "GenericError",
     "Invalid parameter type for 'speed', expected: integer"),
    ("block-stream", {"device": "virtio0", "x": 1}, "GenericError", "Parameter 'x' is unexpected"),
    ("block-stream", {"device": "nosuch"}, "GenericError", "Cannot find device='nosuch' nor node-name='nosuch'"),
    ("block-stream", {"device": "virtio0", "base": "nosuch"}, "GenericError",
     "Can't find 'nosuch' in the backing chain"),
    ("block-stream", {"device": "virtio0", "speed": -1}, "GenericError",
     "Parameter 'speed' expects a non-negative value"),
    ("block-job-set-speed", {"device": "virtio0", "speed": 0}, "DeviceNotActive",
     "Block job 'virtio0' not found"),
    ("block-job-cancel", {"device": "j1"}, "DeviceNotActive", "Block job 'j1' not found"),
    ("qmp_capabilities", None, "CommandNotFound", "Capabilities negotiation is already complete, command ignored"),
]


@pytest.mark.parametrize("name, arguments, class_, desc", ERRORS)
def test_error_texts(served, name, arguments, class_, desc):
    client = served.qmp()
    assert client.cmd(name, arguments, id="e") == {"error": {"class": class_, "desc": desc}, "id": "e"}


def test_busy_and_negotiation_errors(served):
    early = QmpEventClient(served.qmp_path, negotiate=False)
    assert early.cmd("query-block") == {"error": {
        "class": "CommandNotFound", "desc": "Expecting capabilities negotiation with 'qmp_capabilities'"}}
    client = served.qmp()
    ok(client.cmd("block-stream", {"device": "virtio0", "job-id": "j1", "speed": SLOW}))
    assert client.cmd("block-stream", {"device": "virtio0"}) == {"error": {
        "class": "GenericError", "desc": "Node 'virtio0' is busy: block device is in use by block job: stream"}}
    ok(client.cmd("block-job-cancel", {"device": "j1"}))


# -- 5. three clients and the HMP console at once -------------------------------------------

def test_three_clients_share_devices_and_jobs(served):
    streamer, controller, watcher = served.qmp(), served.qmp(), served.qmp()
    console = LineClient(served.hmp_path)
    console.read_until(b"(qemu) ")
    ok(streamer.cmd("block-stream", {"device": "virtio0", "speed": SLOW}))
    ok(controller.cmd("block-job-pause", {"device": "virtio0"}))
    # The job pauses at its next pause point; the watcher sees it happen.
    watcher.wait_event(lambda e: e["event"] == "JOB_STATUS_CHANGE" and e["data"]["status"] == "paused")
    for client in (streamer, controller, watcher):
        (job,) = ok(client.cmd("query-block-jobs"))
        assert (job["device"], job["status"], job["paused"]) == ("virtio0", "paused", True)
    console.send("info block-jobs\n")
    assert console.read_until(b"(qemu) ").startswith(b"Streaming device virtio0: Completed ")
    # A client killed in the middle of a request changes nothing for the others.
    victim = QmpEventClient(served.qmp_path)
    victim.send(b'{"execute": "query-block-jobs", "arguments": {')
    victim.close()
    dying = QmpEventClient(served.qmp_path)
    dying.send(b'{"execute": "query-block"}')
    dying.close()
    ok(controller.cmd("block-job-resume", {"device": "virtio0"}))
    ok(streamer.cmd("block-job-set-speed", {"device": "virtio0", "speed": 0}))
    watcher.wait_event(job_ended("virtio0"))
    names = [(name, data.get("status")) for name, data in without_timestamps(watcher.events)]
    assert names[:2] == [("JOB_STATUS_CHANGE", "created"), ("JOB_STATUS_CHANGE", "running")]
    assert ("JOB_STATUS_CHANGE", "paused") in names
    assert names[-3:] == [("BLOCK_JOB_COMPLETED", None), ("JOB_STATUS_CHANGE", "concluded"),
                          ("JOB_STATUS_CHANGE", "null")]
    streamer.wait_event(job_ended("virtio0"))
    assert without_timestamps(streamer.events) == without_timestamps(watcher.events)
    assert ok(controller.cmd("query-block-jobs")) == []
    console.send("info block-jobs\n")
    assert console.read_until(b"(qemu) ") == b"No active jobs\r\n(qemu) "


# -- 6. the HMP console over a socket and human-monitor-command ---------------------------------

def test_hmp_socket_banner_prompt_and_output(served):
    qemu = served.core.execute("query-version")["qemu"]
    console = LineClient(served.hmp_path)
    assert console.read_until(b"(qemu) ") == (
        "QEMU %d.%d.%d monitor - type 'help' for more information\r\n(qemu) "
        % (qemu["major"], qemu["minor"], qemu["micro"])).encode()
    console.send("info block-jobs\n")
    assert console.read_until(b"(qemu) ") == b"No active jobs\r\n(qemu) "
    console.send("block_job_cancel virtio0\n")
    assert console.read_until(b"(qemu) ") == b"Error: Block job 'virtio0' not found\r\n(qemu) "
    console.send("info block\n")
    answer = console.read_until(b"(qemu) ")
    assert answer.startswith(b"virtio0 (") and b"\r\n" in answer and b"\n" not in answer.replace(b"\r\n", b"")


def test_socat_and_human_monitor_command(served):
    result = subprocess.run(["socat", "-t", "2", "-", "UNIX-CONNECT:%s" % served.hmp_path],
                            input=b"info block-jobs\n", capture_output=True, timeout=30)
    assert result.stdout.endswith(b"(qemu) No active jobs\r\n(qemu) ")
    client = served.qmp()
    assert client.cmd("human-monitor-command", {"command-line": "info block-jobs"}) == {
        "return": "No active jobs\r\n"}
