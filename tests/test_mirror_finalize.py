"""The mirror's durability order, auto-finalize off, the generic job-* commands and
``on-target-error: ignore`` (issue 12, the gaps the first mirror left).

Durability is observed in-process: the target's write and flush methods and the
device switch are wrapped to log, in one list with the QMP events, what happened
in which order.  The auto-finalize sequence is compared with QEMU 7.2's recorded
one (tests/data/qemu-7.2-transcript-next.txt, session x1, job "kept").
"""
import errno
import os
import re

import pytest

from commands.devices import DeviceTable
from images.faults import FaultInjectingImage
from images.jobs import mirror as mirror_module
from images.qcow2 import Qcow2Image
from tests.mirrorkit import CHAIN_ALLOCATED, MiB, Session, identical_shared, qemu_io, small_chain

DATA = os.path.join(os.path.dirname(__file__), "data")
START = ["created", "running", "ready", "BLOCK_JOB_READY"]


@pytest.fixture
def chain(tmp_path, qemu_img):
    return str(tmp_path), small_chain(str(tmp_path))


@pytest.fixture
def session(chain):
    s = Session(chain[1])
    yield s
    s.close()


def _logged(log, what, original):
    def wrapper(self, *args, **kwargs):
        result = original(self, *args, **kwargs)
        log.append((what, os.path.realpath(self.path)))
        return result
    return wrapper


def _switch_logged(log, original):
    def wrapper(self, device, new_top):
        log.append(("switch", os.path.realpath(new_top.path)))
        return original(self, device, new_top)
    return wrapper


@pytest.fixture
def io_log(monkeypatch, session):
    """One ordered list of target writes and flushes, switches and events."""
    log = []
    for name in ("write", "write_zeroes", "copy_batch"):
        monkeypatch.setattr(Qcow2Image, name, _logged(log, "write", getattr(Qcow2Image, name)))
    monkeypatch.setattr(Qcow2Image, "flush", _logged(log, "flush", Qcow2Image.flush))
    monkeypatch.setattr(DeviceTable, "switch_top", _switch_logged(log, DeviceTable.switch_top))
    session.core.events.subscribe(lambda event: log.append(("event", event["event"])))
    return log


def _last(log, entry, before):
    indexes = [i for i, item in enumerate(log[:before]) if item == entry]
    return indexes[-1] if indexes else -1


def test_target_is_flushed_after_its_last_write_before_ready_and_before_the_switch(
        chain, session, io_log):
    directory, _top = chain
    target = os.path.join(directory, "durable.qcow2")
    real = os.path.realpath(target)
    assert session.qmp("drive-mirror", {"device": "virtio0", "target": target,
                                        "sync": "full"}) == {}
    session.wait_status("ready")
    ready = io_log.index(("event", "BLOCK_JOB_READY"))
    last_write = _last(io_log, ("write", real), ready)
    assert last_write >= 0                                  # the copy wrote the target
    assert _last(io_log, ("flush", real), ready) > last_write
    session.run('qemu-io virtio0 "write -P 0x3c 5M 256k"')  # copied while ready
    session.qmp("block-job-complete", {"device": "virtio0"})
    session.wait_gone()
    switch = io_log.index(("switch", real))
    last_write = _last(io_log, ("write", real), switch)
    assert last_write > ready                               # the guest's write was copied
    assert _last(io_log, ("flush", real), switch) > last_write


def _recorded_finalize_sequence():
    """QEMU 7.2's events for job 'kept' (auto-finalize and auto-dismiss off), with
    where job-finalize and job-dismiss were sent."""
    with open(os.path.join(DATA, "qemu-7.2-transcript-next.txt"), encoding="utf-8") as f:
        text = f.read()
    section = text[text.index("### query-jobs with a job that concluded"):]
    section = section[:section.index("### quit")]
    sequence = []
    for line in section.splitlines():
        verb = re.match(r'QMP> \{"execute": "(job-finalize|job-dismiss)"', line)
        if verb and verb.group(1) not in sequence:
            sequence.append(verb.group(1))
        event = re.search(r'\] (\w+) (\{.*\})$', line)
        if event and '"kept"' in event.group(2):
            status = re.search(r'"status": "(\w+)"', event.group(2))
            sequence.append(status.group(1) if event.group(1) == "JOB_STATUS_CHANGE"
                            else event.group(1))
    return sequence[sequence.index("waiting"):]


@pytest.mark.parametrize("finalize", ["job-finalize", "block-job-finalize"])
def test_auto_finalize_off_switches_at_job_finalize_with_qemus_events(chain, session, finalize):
    directory, top = chain
    target = os.path.join(directory, "fin.qcow2")
    assert session.qmp("drive-mirror", {"device": "virtio0", "target": target, "sync": "full",
                                        "job-id": "kept", "auto-finalize": False,
                                        "auto-dismiss": False}) == {}
    session.wait_status("ready", "kept")
    assert session.trace() == START
    assert session.qmp("job-complete", {"id": "kept"}) == {}
    session.wait_status("pending", "kept")
    assert session.run("info block").startswith("virtio0 (top): %s (qcow2)\n" % top)
    # The guest keeps writing to the source while the job waits: not lost at the switch.
    assert session.run('qemu-io virtio0 "write -P 0x4d 6M 128k"') == \
        "wrote 131072/131072 bytes at offset 6291456\n"
    sequence = session.trace()
    assert session.qmp(finalize, {"id": "kept"}) == {}
    assert session.run("info block").startswith("virtio0 (fin): %s (qcow2)\n" % target)
    sequence += ["job-finalize"] + session.trace()
    assert session.qmp("job-dismiss", {"id": "kept"}) == {}
    sequence += ["job-dismiss"] + session.trace()
    assert sequence == _recorded_finalize_sequence()
    assert session.event_data("BLOCK_JOB_COMPLETED") == []      # trace() consumed it
    session.close()
    qemu_io(top, "write -P 0x4d 6M 128k")   # what the source would hold without the switch
    assert identical_shared(target, top)[0]


def test_cancel_while_pending_does_not_switch(chain, session):
    directory, top = chain
    target = os.path.join(directory, "nofin.qcow2")
    session.qmp("drive-mirror", {"device": "virtio0", "target": target, "sync": "full",
                                 "auto-finalize": False})
    session.wait_status("ready")
    session.qmp("block-job-complete", {"device": "virtio0"})
    session.wait_status("pending")
    session.trace()
    assert session.qmp("job-cancel", {"id": "virtio0"}) == {}
    session.wait_gone()
    assert session.trace() == ["aborting", "BLOCK_JOB_CANCELLED", "concluded", "null"]
    assert session.run("info block").startswith("virtio0 (top): %s (qcow2)\n" % top)
    assert session.run('qemu-io virtio0 "write -P 0x2e 0 64k"').startswith("wrote 65536/")


def test_generic_job_commands_shapes_and_unknown_id(chain, session):
    directory, _top = chain
    target = os.path.join(directory, "gen.qcow2")
    session.qmp("drive-mirror", {"device": "virtio0", "target": target, "sync": "full",
                                 "job-id": "g1"})
    session.wait_status("ready", "g1")
    assert session.qmp("query-jobs") == [{"current-progress": CHAIN_ALLOCATED, "status": "ready",
                                          "total-progress": CHAIN_ALLOCATED, "type": "mirror",
                                          "id": "g1"}]
    not_found = {"error": {"class": "GenericError", "desc": "Job not found"}}
    for verb in ("job-pause", "job-resume", "job-cancel", "job-complete", "job-finalize",
                 "job-dismiss"):
        assert session.qmp(verb, {"id": "virtio0"}) == not_found, verb
    assert session.qmp("job-finalize", {"id": "g1"}) == {"error": {
        "class": "GenericError",
        "desc": "Job 'g1' in state 'ready' cannot accept command verb 'finalize'"}}
    session.trace()
    assert session.qmp("job-pause", {"id": "g1"}) == {}
    session.wait_status("standby", "g1")
    assert session.qmp("job-pause", {"id": "g1"}) == {
        "error": {"class": "GenericError", "desc": "Job is already paused"}}
    assert session.qmp("job-resume", {"id": "g1"}) == {}
    session.wait_status("ready", "g1")
    assert session.qmp("job-cancel", {"id": "g1"}) == {}      # always a force cancel
    session.wait_gone()
    assert session.trace() == ["standby", "ready", "aborting", "BLOCK_JOB_CANCELLED",
                               "concluded", "null"]
    assert session.qmp("query-jobs") == []
    names = [entry["name"] for entry in session.qmp("query-commands")]
    assert {"query-jobs", "job-pause", "job-resume", "job-cancel", "job-complete",
            "job-finalize", "job-dismiss"} <= set(names)


def _faulty_target(monkeypatch, rules):
    """Wrap the target drive-mirror opens in a FaultInjectingImage with ``rules``."""
    from commands import mirror as mirror_command
    original = mirror_command.open_target
    made = []

    def open_faulty(*args, **kwargs):
        image = FaultInjectingImage(original(*args, **kwargs))
        for rule in rules:
            image.inject(*rule[:3], **rule[3])
        made.append(image)
        return image
    monkeypatch.setattr(mirror_command, "open_target", open_faulty)
    return made


def test_ignore_keeps_a_failed_range_dirty_and_retries_it(chain, session, monkeypatch):
    directory, top = chain
    target = os.path.join(directory, "ign.qcow2")
    _faulty_target(monkeypatch, [("write", 0, 64 * 1024, {"errno": errno.EIO, "once": True})])
    assert session.qmp("drive-mirror", {"device": "virtio0", "target": target, "sync": "full",
                                        "on-target-error": "ignore"}) == {}
    session.wait_status("ready")
    assert session.event_data("BLOCK_JOB_ERROR") == [
        {"device": "virtio0", "operation": "write", "action": "ignore"}]
    session.qmp("block-job-complete", {"device": "virtio0"})
    session.wait_gone()
    completed = session.event_data("BLOCK_JOB_COMPLETED")
    assert len(completed) == 1 and "error" not in completed[0]
    session.close()
    assert identical_shared(target, top)[0]     # the failed range was copied on the retry


def test_ignore_with_a_target_that_always_fails_ends_the_job(chain, session, monkeypatch):
    directory, _top = chain
    target = os.path.join(directory, "bad.qcow2")
    _faulty_target(monkeypatch, [("write", 0, None, {"errno": errno.EIO, "once": False})])
    assert session.qmp("drive-mirror", {"device": "virtio0", "target": target, "sync": "full",
                                        "on-target-error": "ignore"}) == {}
    session.wait_gone()
    errors = session.event_data("BLOCK_JOB_ERROR")
    assert errors and all(e["action"] == "ignore" for e in errors)
    assert session.event_data("BLOCK_JOB_READY") == []
    completed = session.event_data("BLOCK_JOB_COMPLETED")
    assert [c.get("error") for c in completed] == ["Input/output error"]


def test_replaces_is_refused_in_one_line(chain, session):
    directory, _top = chain
    target = os.path.join(directory, "rep.qcow2")
    reply = session.qmp("drive-mirror", {"device": "virtio0", "target": target, "sync": "full",
                                         "node-name": "n1", "replaces": "top"})
    assert reply == {"error": {"class": "GenericError",
                               "desc": "Parameter 'replaces' is not supported by blockmon"}}
    assert not os.path.exists(target)
    assert mirror_module.MirrorJob.supports_complete
