"""A live copy with drive_mirror as users drive it: a script piped into ``python -m monitor``,
and the qemu.qmp client library over a real QMP socket (issue 12, acceptance 1)."""
import json
import os
import subprocess
import sys
import time

import pytest

from tests.conftest import ROOT, connect_when_listening
from tests.mirrorkit import identical_shared, info_shared
from tests.mirrorkit import TOP_ALLOCATED, MiB, small_chain

qmp = pytest.importorskip("qemu.qmp", reason="needs the qemu.qmp client library: pip install qemu.qmp")
from qemu.qmp.legacy import QEMUMonitorProtocol     # noqa: E402

LONG = 120


def test_script_session_live_copy(tmp_path, qemu_img):
    directory = str(tmp_path)
    top = small_chain(directory)
    target = os.path.join(directory, "copy.qcow2")
    script = "\n".join([
        "drive_mirror virtio0 %s" % target,
        "block_job_wait virtio0",
        "info block-jobs",
        'qemu-io virtio0 "write -P 0x5a 0 1M"',
        "block_job_complete virtio0",
        "block_job_wait virtio0",
        "info block",
    ]) + "\n"
    result = subprocess.run([sys.executable, "-m", "monitor", "-drive",
                             "file=%s,if=none,id=virtio0" % top], input=script, cwd=ROOT,
                            capture_output=True, text=True, timeout=LONG)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    events = [json.loads(line) for line in lines if line.startswith("{")]
    text = [line for line in lines if not line.startswith("{")]
    assert [e["event"] for e in events] == ["BLOCK_JOB_READY", "BLOCK_JOB_COMPLETED"]
    assert events[0]["data"] == {"type": "mirror", "device": "virtio0", "len": TOP_ALLOCATED,
                                 "offset": TOP_ALLOCATED, "speed": 0}
    assert "Type mirror, device virtio0: Completed %d of %d bytes, speed limit 0 bytes/s"\
        % (TOP_ALLOCATED, TOP_ALLOCATED) in text
    assert "virtio0 (copy): %s (qcow2)" % target in text
    assert "    Backing file:     mid.qcow2 (chain depth: 2)" in text
    assert not any(line.startswith("Formatting") for line in lines)
    assert info_shared(target)["backing-filename"] == "mid.qcow2"
    assert lines.index("(qemu) block_job_complete virtio0") < lines.index(json.dumps(events[1])) \
        < lines.index("(qemu) info block")       # the wait lasted until the switch
    assert identical_shared(target, top)[0]      # the 1 MiB write reached both before the switch


@pytest.fixture
def qmp_server(tmp_path, qemu_img):
    directory = str(tmp_path)
    top = small_chain(directory)
    sock = os.path.join(directory, "qmp.sock")
    proc = subprocess.Popen([sys.executable, "-m", "monitor", "-qmp",
                             "unix:%s,server=on,wait=off" % sock, "-drive",
                             "file=%s,if=none,id=virtio0" % top], cwd=ROOT, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    connect_when_listening(sock, time.monotonic() + LONG).close()
    monitor = QEMUMonitorProtocol(sock)
    monitor.connect(negotiate=True)
    yield directory, top, monitor
    try:
        monitor.close()
    except EOFError:
        pass        # the test sent quit: the server may have closed the connection first
    proc.stdin.close()
    if proc.poll() is None:
        proc.kill()
    proc.wait()


def events_until(monitor, name, status=None):
    seen = []
    while True:
        event = monitor.pull_event(wait=float(LONG))
        assert event is not None
        seen.append((event["event"], event["data"]))
        if event["event"] == name and (status is None or event["data"].get("status") == status):
            return seen


def test_qmp_client_drive_mirror_complete(qmp_server):
    directory, top, monitor = qmp_server
    target = os.path.join(directory, "q.qcow2")
    assert monitor.cmd_raw("drive-mirror", {"device": "virtio0", "target": target, "sync": "full",
                                        "job-id": "mj"}) == {"return": {}}
    seen = events_until(monitor, "BLOCK_JOB_READY")
    assert [d.get("status", n) for n, d in seen] == ["created", "running", "ready",
                                                     "BLOCK_JOB_READY"]
    jobs = monitor.cmd_raw("query-block-jobs")["return"]
    assert [(j["device"], j["type"], j["status"], j["ready"]) for j in jobs] == [
        ("mj", "mirror", "ready", True)]
    reply = monitor.cmd_raw("human-monitor-command",
                        {"command-line": 'qemu-io virtio0 "write -P 0x5a 0 1M"'})
    assert reply == {"return": "wrote 1048576/1048576 bytes at offset 0\r\n"}
    assert monitor.cmd_raw("query-block-jobs")["return"][0]["len"] == jobs[0]["len"] + MiB
    assert monitor.cmd_raw("block-job-complete", {"device": "mj"}) == {"return": {}}
    seen = events_until(monitor, "JOB_STATUS_CHANGE", "null")
    assert [d.get("status", n) for n, d in seen] == ["waiting", "pending", "BLOCK_JOB_COMPLETED",
                                                     "concluded", "null"]
    block = monitor.cmd_raw("query-block")["return"][0]
    assert (block["device"], block["inserted"]["file"]) == ("virtio0", target)
    monitor.cmd_raw("quit")
    assert identical_shared(target, top)[0]


def test_qmp_client_force_cancel_and_errors(qmp_server):
    directory, _top, monitor = qmp_server
    target = os.path.join(directory, "c.qcow2")
    assert monitor.cmd_raw("drive-mirror", {"device": "virtio0", "target": target,
                                        "sync": "top"}) == {"return": {}}
    events_until(monitor, "BLOCK_JOB_READY")
    again = monitor.cmd_raw("drive-mirror", {"device": "virtio0", "sync": "top",
                                         "target": os.path.join(directory, "d.qcow2")})
    assert again == {"error": {"class": "GenericError", "desc": "Node 'virtio0' is busy: block "
                               "device is in use by block job: mirror"}}
    assert monitor.cmd_raw("block-job-cancel", {"device": "virtio0", "force": True}) == {"return": {}}
    seen = events_until(monitor, "JOB_STATUS_CHANGE", "null")
    assert [d.get("status", n) for n, d in seen] == ["aborting", "BLOCK_JOB_CANCELLED",
                                                     "concluded", "null"]
    assert monitor.cmd_raw("query-block")["return"][0]["inserted"]["file"] == \
        os.path.join(directory, "top.qcow2")


class VanishingJobCore:
    """A job listed by query-block-jobs that is gone (dismissed) when the wait starts."""

    def __init__(self):
        self.waits = 0

    def execute(self, name, args=None):
        assert name == "query-block-jobs"
        return [] if self.waits else [{"device": "virtio0", "status": "running", "paused": False}]

    def wait_jobs(self, job_id=None, timeout=None):
        from images.errors import JobError
        self.waits += 1
        raise JobError("Block job '%s' not found" % job_id, not_found=True)


def test_block_job_wait_on_a_job_that_ends_meanwhile_returns_quietly():
    from monitor.waiting import JobWaiter
    core = VanishingJobCore()
    assert JobWaiter(core).wait("virtio0") == ""
    assert core.waits == 1
