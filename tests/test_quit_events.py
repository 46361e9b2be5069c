"""Leaving blockmon over QMP: the reply, QEMU's SHUTDOWN event, then the cancelled jobs' events."""
import json
import os
import subprocess
import sys
import time

from tests.conftest import ROOT, connect_when_listening
from tests.oracle import check_clean, info


def test_quit_sends_shutdown_then_the_cancelled_job_events(chain_copy, tmp_path):
    sock = str(tmp_path / "qmp.sock")
    top = os.path.join(chain_copy, "D.qcow2")
    proc = subprocess.Popen([sys.executable, "-m", "monitor", "-drive", "file=%s,if=none,id=virtio0" % top,
                             "-qmp", "unix:%s,server=on,wait=off" % sock],
                            cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        client = connect_when_listening(sock, time.monotonic() + 30)
        reader = client.makefile("r")
        assert "QMP" in json.loads(reader.readline())

        def send(command, arguments=None):
            message = {"execute": command}
            if arguments:
                message["arguments"] = arguments
            client.sendall(json.dumps(message).encode() + b"\n")

        send("qmp_capabilities")
        assert json.loads(reader.readline()) == {"return": {}}
        send("block-stream", {"device": "virtio0", "speed": 1 << 20})
        send("quit")
        messages = [json.loads(line) for line in reader]   # until blockmon closes the socket
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    replies = [m for m in messages if "return" in m]
    events = [m["event"] if m["event"] != "JOB_STATUS_CHANGE" else m["data"]["status"]
              for m in messages if "event" in m]
    assert replies == [{"return": {}}, {"return": {}}]
    assert events == ["created", "running", "SHUTDOWN", "aborting", "BLOCK_JOB_CANCELLED", "concluded", "null"]
    shutdown = next(m for m in messages if m.get("event") == "SHUTDOWN")
    assert shutdown["data"] == {"guest": False, "reason": "host-qmp-quit"}
    # the cancelled stream left the chain as it was
    assert info(top)["backing-filename"] == "C.qcow2"
    assert check_clean(top)[0]
