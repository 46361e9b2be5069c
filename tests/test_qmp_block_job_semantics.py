"""Block-job semantics and QMP shapes a libvirt-style client relies on, against QEMU 7.2:
error events, query-block's shape, quit during jobs, verbs racing a job's end, and
the argument checks of block-stream and blockdev-snapshot-sync.

Chains are small (16 MiB, A <- B <- C, relative backing names) and built with
qemu-img/qemu-io, the oracle; every test asserts exact values or sequences.
"""
import errno
import json
import os
import threading

import pytest

from commands.core import BlockCore
from conftest import run
from images.faults import FaultInjectingImage

WAIT = 60           # seconds: only a guard against hanging
SIZE = 16 << 20
SLOW = 256 << 10    # bytes/s: a stream that is still running when the test looks


def make_chain(directory):
    """A.qcow2 <- B.qcow2 <- C.qcow2 in ``directory`` (relative names); returns C's path."""
    os.makedirs(directory, exist_ok=True)
    paths = {name: os.path.join(directory, name + ".qcow2") for name in "ABC"}
    run("qemu-img", "create", "-q", "-f", "qcow2", paths["A"], str(SIZE))
    run("qemu-io", "-c", "write -P 0xa1 0 8M", paths["A"])
    run("qemu-img", "create", "-q", "-f", "qcow2", "-b", "A.qcow2", "-F", "qcow2", paths["B"])
    run("qemu-io", "-c", "write -P 0xb2 4M 4M", "-c", "write -z 10M 1M", paths["B"])
    run("qemu-img", "create", "-q", "-f", "qcow2", "-b", "B.qcow2", "-F", "qcow2", paths["C"])
    run("qemu-io", "-c", "write -P 0xc3 6M 1M", paths["C"])
    return paths["C"]


class Events:
    """Every event the core publishes, in order; ``wait_for`` blocks until one matches."""

    def __init__(self, core):
        self.cond = threading.Condition()
        self.seen = []
        core.events.subscribe(self._on_event)

    def _on_event(self, event):
        with self.cond:
            self.seen.append(event)
            self.cond.notify_all()

    def wait_for(self, name, **data):
        def match():
            return any(e["event"] == name and all(e["data"].get(k) == v for k, v in data.items())
                       for e in self.seen)
        with self.cond:
            assert self.cond.wait_for(match, WAIT), (name, data, self.seen)

    def named(self, name):
        with self.cond:
            return [e["data"] for e in self.seen if e["event"] == name]


@pytest.fixture
def chain(tmp_path, qemu_img):
    return make_chain(str(tmp_path / "chain"))


@pytest.fixture
def core(chain):
    live = BlockCore()
    live.add_drive("virtio0", chain)
    yield live
    live.shutdown()


def backing_of(path):
    info = json.loads(run("qemu-img", "info", "--output=json", "-U", path).stdout)
    return info.get("backing-filename"), info.get("backing-filename-format")


# -- BLOCK_JOB_ERROR: a stream's errors are always reported as reads --------------------
def test_stream_error_event_says_read_even_when_the_copy_write_fails(core):
    """QEMU's stream passes is_read=true to block_job_error_action: the failing request is
    the copy-on-read prefetch, so operation is 'read' even when writing the top fails."""
    device = core.devices.device("virtio0")
    faulty = FaultInjectingImage(device.top)
    device.top = faulty
    faulty.inject("write", 0, None, errno=errno.ENOSPC)
    events = Events(core)
    core.execute("block-stream", {"device": "virtio0", "on-error": "enospc"})
    events.wait_for("JOB_STATUS_CHANGE", status="paused")
    assert events.named("BLOCK_JOB_ERROR") == [
        {"device": "virtio0", "operation": "read", "action": "stop"}]
    job = core.execute("query-block-jobs")[0]
    assert (job["status"], job["paused"], job["io-status"]) == ("paused", True, "nospace")
    faulty.clear()
    core.execute("block-job-resume", {"device": "virtio0"})
    assert core.wait_jobs(timeout=WAIT)
    assert events.named("BLOCK_JOB_COMPLETED")[0]["offset"] == SIZE


# -- query-block: the shape QEMU 7.2 gives a -drive if=none (the transcript) ------------
TRANSCRIPT_INSERTED_KEYS = {
    "iops_rd", "detect_zeroes", "image", "iops_wr", "ro", "node-name", "backing_file_depth",
    "drv", "iops", "bps_wr", "write_threshold", "encrypted", "bps", "bps_rd", "cache", "file"}


def test_query_block_has_the_transcripts_members_and_types(core):
    [info] = core.execute("query-block")
    # QEMU 7.2, no guest device attached: removable is true, and neither qdev nor
    # io-status is present (io-status only exists once a device enables it).
    assert set(info) == {"device", "locked", "removable", "inserted", "type"}
    assert (info["device"], info["locked"], info["removable"], info["type"]) == \
        ("virtio0", False, True, "unknown")
    inserted = info["inserted"]
    assert set(inserted) == TRANSCRIPT_INSERTED_KEYS | {"backing_file"}
    assert (inserted["backing_file"], inserted["backing_file_depth"]) == ("B.qcow2", 2)
    assert inserted["cache"] == {"no-flush": False, "direct": False, "writeback": True}


# -- quit while jobs run: nothing starts once the shutdown has begun ---------------------
def test_a_stream_started_during_shutdown_is_refused_or_finished(tmp_path, qemu_img):
    core = BlockCore()
    core.add_drive("virtio0", make_chain(str(tmp_path / "one")))
    core.add_drive("virtio1", make_chain(str(tmp_path / "two")))
    outcome = []

    def start_second(event):
        # Runs while shutdown() waits for the first job it cancelled: the window
        # in which another client's block-stream could slip in.
        if event["event"] == "JOB_STATUS_CHANGE" and event["data"] == \
                {"id": "virtio0", "status": "aborting"}:
            try:
                outcome.append(core.execute("block-stream", {"device": "virtio1", "speed": SLOW}))
            except Exception as exc:   # noqa: BLE001 - the refusal is what we look at
                outcome.append(str(exc))
    core.events.subscribe(start_second)
    core.execute("block-stream", {"device": "virtio0", "speed": SLOW})
    core.shutdown()
    assert outcome == ["Cannot start a block job: blockmon is shutting down"]
    assert core.jobs() == []
    for directory in ("one", "two"):
        assert backing_of(str(tmp_path / directory / "C.qcow2")) == ("B.qcow2", "qcow2")
        for name in "ABC":
            run("qemu-img", "check", "-q", str(tmp_path / directory / (name + ".qcow2")))


# -- the QMP server over a socket -------------------------------------------------------
@pytest.fixture
def served(core):
    from monitor.servers import MonitorServers
    from qmp_clients import remove_tree, short_tempdir
    directory = short_tempdir()
    path = os.path.join(directory, "qmp.sock")
    quits = threading.Event()
    servers = MonitorServers(core, ["unix:%s,server=on,wait=off" % path], [],
                             on_quit=quits.set).start()
    servers.path, servers.quits = path, quits
    yield servers
    servers.stop()
    remove_tree(directory)


@pytest.mark.parametrize("line", ["quit", "q"])
def test_hmp_quit_through_human_monitor_command_quits(served, line):
    """qmp-shell -H users type 'quit': QEMU answers "" and exits; so must we."""
    from qmp_clients import QmpEventClient
    client = QmpEventClient(served.path)
    assert client.cmd("human-monitor-command", {"command-line": line}, id=7) == \
        {"return": "", "id": 7}
    assert served.quits.wait(WAIT)
    client.close()


def test_other_hmp_lines_do_not_quit(served):
    from qmp_clients import QmpEventClient
    client = QmpEventClient(served.path)
    assert client.cmd("human-monitor-command", {"command-line": "quit now"}) == {
        "return": 'quit: extraneous characters at the end of line\r\n'
                  'Try "help quit" for more information\r\n'}
    assert client.cmd("human-monitor-command", {"command-line": "info block-jobs"}) == \
        {"return": "No active jobs\r\n"}
    assert not served.quits.is_set()
    client.close()


# -- a verb that loses the race with the job's end: "not found", as libvirt expects ------
@pytest.mark.parametrize("verb", ["cancel", "pause", "resume", "set-speed", "complete",
                                  "finalize", "dismiss"])
def test_a_verb_on_a_job_that_just_went_away_is_device_not_active(core, verb):
    """The QMP handler finds the job, then calls its verb on another thread; if the
    job reached 'null' in between, QEMU's answer (the job is not found, class
    DeviceNotActive, which libvirt treats as "already gone") is the right one."""
    from commands.errors import qmp_error
    from images.errors import JobError
    core.execute("block-stream", {"device": "virtio0", "speed": SLOW})
    job = core.jobs()[0]
    core.execute("block-job-set-speed", {"device": "virtio0", "speed": 0})
    assert core.wait_jobs(timeout=WAIT) and job.status == "null"
    calls = {"cancel": lambda: job.cancel(force=False), "pause": job.pause, "resume": job.resume,
             "set-speed": lambda: job.set_speed(0), "complete": job.complete,
             "finalize": job.finalize, "dismiss": job.dismiss}
    with pytest.raises(JobError) as err:
        calls[verb]()
    assert qmp_error(err.value) == {"class": "DeviceNotActive",
                                    "desc": "Block job 'virtio0' not found"}


# -- snapshot-node-name must be a valid node name; nothing is created otherwise ---------
@pytest.mark.parametrize("name", ["1abc", "", "#block1", "a b", "é"])
def test_snapshot_node_name_is_checked_before_anything_is_created(core, chain, name):
    directory = os.path.dirname(chain)
    before = sorted(os.listdir(directory))
    target = os.path.join(directory, "S.qcow2")
    with pytest.raises(Exception) as err:
        core.execute("blockdev-snapshot-sync", {"device": "virtio0", "snapshot-file": target,
                                                "snapshot-node-name": name})
    assert err.value.desc == "Invalid node-name: '%s'" % name
    assert sorted(os.listdir(directory)) == before
    assert core.execute("query-block")[0]["inserted"]["file"] == chain


# -- block-stream argument checks in qmp_block_stream's order --------------------------
def test_base_and_base_node_conflict_is_checked_before_the_device_lookup(core):
    with pytest.raises(Exception) as err:
        core.execute("block-stream", {"device": "nosuch", "base": "A.qcow2", "base-node": "A"})
    assert err.value.desc == "'base' and 'base-node' cannot be specified at the same time"
    assert core.jobs() == []
