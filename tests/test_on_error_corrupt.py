"""The on-error policy over corrupt metadata: an L2 entry of the backing image pointing at an
unaligned cluster is EIO to the stream (QEMU: qcow2_signal_corruption), and every policy
acts on it as on any read error.  Each test drives a real blockmon: the stream is started
over QMP, and the same event sequence must reach the QMP client and the console (the
script session's standard output).  The corrupt image is never written.
"""
import json
import struct

import pytest

from blockmon_process import Blockmon, small_chain
from tests.conftest import run
from tests.oracle import check_clean, fingerprints, info

MiB = 1 << 20
SIZE = 4 * MiB
BAD_CLUSTER = 20                     # guest offset 1.25 MiB


def corrupt_l2_entry(path, cluster):
    """Point the L2 entry of ``cluster`` 512 bytes past its data: unaligned, as QEMU's
    'Cluster allocation offset ... unaligned' corruption."""
    with open(path, "r+b") as f:
        header = f.read(104)
        (l1_offset,) = struct.unpack(">Q", header[40:48])
        f.seek(l1_offset)
        l2_offset = struct.unpack(">Q", f.read(8))[0] & 0x00FFFFFFFFFFFE00
        f.seek(l2_offset + 8 * cluster)
        (entry,) = struct.unpack(">Q", f.read(8))
        f.seek(l2_offset + 8 * cluster)
        f.write(struct.pack(">Q", entry + 0x200))


@pytest.fixture
def corrupt_chain(tmp_path, qemu_img):
    top = small_chain(str(tmp_path), size_mib=4, base_data_mib=4)
    base = str(tmp_path / "base.qcow2")
    corrupt_l2_entry(base, BAD_CLUSTER)
    # qemu-io, the oracle, sees the corruption as EIO
    assert "read failed: Input/output error" in run(
        "qemu-io", "-f", "qcow2", "-r", "-c", "read %d 4k" % (BAD_CLUSTER * 65536), base,
        check=False).stdout
    return top, base


def sequence(events):
    """Event names, job statuses for JOB_STATUS_CHANGE, the data of the rest."""
    out = []
    for event in events:
        if event["event"] == "JOB_STATUS_CHANGE":
            out.append(event["data"]["status"])
        else:
            out.append((event["event"], event["data"]))
    return out


def completed(error=True, offset=SIZE):
    data = {"type": "stream", "device": "virtio0", "len": SIZE, "offset": offset, "speed": 0}
    if error:
        data["error"] = "Input/output error"
    return ("BLOCK_JOB_COMPLETED", data)


def job_error(action):
    return ("BLOCK_JOB_ERROR", {"device": "virtio0", "operation": "read", "action": action})


def session(top, policy, steps):
    """Start a stream with ``policy`` over QMP, run ``steps(client)``, quit; returns the QMP
    events up to SHUTDOWN and the events the console printed."""
    process = Blockmon(["-drive", "file=%s,if=none,id=virtio0" % top])
    try:
        client = process.qmp()
        assert client.cmd("block-stream", {"device": "virtio0", "on-error": policy}) == {"return": {}}
        steps(client)
        process.proc.stdin.close()          # the script ends; blockmon keeps serving
        assert client.cmd("quit") == {"return": {}}
        status, out, err = process.wait()
    finally:
        process.close()
    assert status == 1, err         # a script session whose job had an error fails
    qmp_events = [e for e in client.events if e["event"] != "SHUTDOWN"]
    console = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    console = [e for e in console if e["event"] != "SHUTDOWN"]
    # The console prints the block job events (not JOB_STATUS_CHANGE), in the same order.
    assert [(e["event"], e["data"]) for e in console] == [
        (e["event"], e["data"]) for e in qmp_events if e["event"] != "JOB_STATUS_CHANGE"]
    return sequence(qmp_events)


def wait_for(client, name, count=1):
    client.wait_event(lambda e: sum(x["event"] == name for x in client.events) >= count)


def ended(client):
    wait_for(client, "JOB_STATUS_CHANGE")
    client.wait_event(lambda e: e["event"] == "JOB_STATUS_CHANGE" and e["data"]["status"] == "null")


@pytest.mark.parametrize("policy", ["report", "enospc"])
def test_report_and_enospc_report_the_eio(corrupt_chain, policy):
    top, base = corrupt_chain
    before = fingerprints([base])
    events = session(top, policy, ended)
    failed = [data for name, data in events[4:5]]
    assert events == ["created", "running", job_error("report"), "aborting",
                      completed(offset=failed[0]["offset"]), "concluded", "null"]
    assert failed[0]["offset"] <= BAD_CLUSTER * 65536
    assert fingerprints([base]) == before
    assert info(top)["backing-filename"] == "base.qcow2"
    assert check_clean(top)[0]


def test_stop_pauses_until_resumed_then_stops_again(corrupt_chain):
    top, base = corrupt_chain
    before = fingerprints([base])

    def steps(client):
        wait_for(client, "BLOCK_JOB_ERROR")
        client.wait_event(lambda e: e["data"].get("status") == "paused")
        (job,) = client.cmd("query-block-jobs")["return"]
        assert (job["status"], job["paused"], job["io-status"]) == ("paused", True, "failed")
        assert client.cmd("block-job-resume", {"device": "virtio0"}) == {"return": {}}
        wait_for(client, "BLOCK_JOB_ERROR", 2)          # the metadata is still corrupt
        client.wait_event(lambda e: sequence(client.events).count("paused") == 2)
        (job,) = client.cmd("query-block-jobs")["return"]
        assert (job["status"], job["io-status"]) == ("paused", "failed")
        assert client.cmd("block-job-cancel", {"device": "virtio0", "force": True}) == {"return": {}}
        ended(client)

    events = session(top, "stop", steps)
    cancelled = events[-3][1]
    assert events == ["created", "running", job_error("stop"), "paused", "running",
                      job_error("stop"), "paused", "running", "aborting",
                      ("BLOCK_JOB_CANCELLED", cancelled), "concluded", "null"]
    assert cancelled["offset"] <= BAD_CLUSTER * 65536
    assert fingerprints([base]) == before
    assert info(top)["backing-filename"] == "base.qcow2"
    assert check_clean(top)[0]


def test_ignore_skips_the_bad_range_and_completes_with_the_error(corrupt_chain):
    top, base = corrupt_chain
    before = fingerprints([base])
    events = session(top, "ignore", ended)
    assert events == ["created", "running", job_error("ignore"), "aborting", completed(),
                      "concluded", "null"]
    assert fingerprints([base]) == before
    # The job failed, so the top still reads the skipped range through its backing file,
    # and everything outside that range was copied into the top.
    assert info(top)["backing-filename"] == "base.qcow2"
    assert check_clean(top)[0]
    alone = json.dumps({"driver": "qcow2", "backing": None,
                        "file": {"driver": "file", "filename": top}})
    mapped = json.loads(run("qemu-img", "map", "--output=json", "json:" + alone).stdout)
    copied = [(e["start"], e["start"] + e["length"]) for e in mapped if e["data"]]
    assert copied[0][0] == 0 and copied[-1][1] == SIZE      # before and after the bad range
    holes = [(e["start"], e["start"] + e["length"]) for e in mapped if not e["data"]]
    assert len(holes) == 1 and holes[0][0] <= BAD_CLUSTER * 65536 < holes[0][1]
