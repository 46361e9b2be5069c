"""drive-mirror / block_job_complete / block_job_cancel on a live device (issue 12, acceptance 1).

Through the QMP-shaped core and the HMP console interpreter; qemu-img is the oracle
for the target's content and header.  Event sequences are QEMU 7.2's (reference
section 1.4).
"""
import os

import pytest

from tests.mirrorkit import identical_shared, check_shared, info_shared
from tests.mirrorkit import (CHAIN_ALLOCATED, TOP_ALLOCATED, MiB, Session, copy_file, qemu_io,
                             small_chain)
from tests.mirrorkit import qemu_img as create

START = ["created", "running", "ready", "BLOCK_JOB_READY"]
SUCCESS = ["waiting", "pending", "BLOCK_JOB_COMPLETED", "concluded", "null"]
CANCELLED = ["aborting", "BLOCK_JOB_CANCELLED", "concluded", "null"]


@pytest.fixture
def chain(tmp_path, qemu_img):
    top = small_chain(str(tmp_path))
    return str(tmp_path), top


@pytest.fixture
def session(chain):
    s = Session(chain[1])
    yield s
    s.close()


def mirror_data(job_id, length, offset=None, speed=0):
    return {"type": "mirror", "device": job_id, "len": length,
            "offset": length if offset is None else offset, "speed": speed}


def start_ready(session, target, sync="top", **extra):
    args = {"device": "virtio0", "target": target, "sync": sync}
    args.update(extra)
    assert session.qmp("drive-mirror", args) == {}
    return session.wait_status("ready", extra.get("job-id", "virtio0"))


def test_sync_top_complete_pivots_with_qemus_events(chain, session):
    directory, top = chain
    before = copy_file(top, os.path.join(directory, "before.qcow2"))
    target = os.path.join(directory, "mirror-top.qcow2")
    assert session.run("drive_mirror virtio0 %s" % target) == ""
    session.wait_status("ready")
    assert session.event_data("BLOCK_JOB_READY") == [mirror_data("virtio0", TOP_ALLOCATED)]
    assert session.run("info block-jobs") == (
        "Type mirror, device virtio0: Completed %d of %d bytes, speed limit 0 bytes/s\n"
        % (TOP_ALLOCATED, TOP_ALLOCATED))
    assert session.run("block_job_complete virtio0") == ""
    session.wait_gone()
    assert session.trace() == START + SUCCESS
    assert session.run("info block").startswith("virtio0 (mirror-top): %s (qcow2)\n" % target)
    assert info_shared(target)["backing-filename"] == "mid.qcow2"        # relative, as the chain
    assert identical_shared(target, top)[0]
    assert identical_shared(top, before)[0]                               # the old top is intact
    assert session.run("block_job_complete virtio0") == "Error: Block job 'virtio0' not found\n"


def test_sync_full_copies_the_chain_and_guest_writes_then_pivots(chain, session):
    directory, top = chain
    target = os.path.join(directory, "full.qcow2")
    job = start_ready(session, target, sync="full")
    assert (job["len"], job["offset"]) == (CHAIN_ALLOCATED, CHAIN_ALLOCATED)
    assert session.run('qemu-io virtio0 "write -P 0x5a 0 1M"') == \
        "wrote 1048576/1048576 bytes at offset 0\n"
    assert session.job()["len"] == CHAIN_ALLOCATED + MiB           # grows, still ready
    assert session.job()["status"] == "ready"
    session.qmp("block-job-complete", {"device": "virtio0"})
    session.wait_gone()
    assert "backing-filename" not in info_shared(target)
    assert session.event_data("BLOCK_JOB_COMPLETED") == [mirror_data("virtio0", CHAIN_ALLOCATED + MiB)]
    session.run('qemu-io virtio0 "write -P 0x77 2M 64k"')       # goes to the target only
    session.close()
    qemu_io(top, "write -P 0x77 2M 64k")
    assert identical_shared(target, top)[0]
    assert check_shared(target)[0]


def test_sync_none_copies_only_new_writes(chain, session):
    directory, top = chain
    target = os.path.join(directory, "none.qcow2")
    job = start_ready(session, target, sync="none", **{"job-id": "mn"})
    assert (job["len"], job["offset"]) == (0, 0)
    session.run('qemu-io virtio0 "write -P 0x6b 2M 64k"')
    assert session.job("mn")["len"] == 65536
    session.qmp("block-job-complete", {"device": "mn"})
    session.wait_gone()
    assert session.trace() == START + SUCCESS
    assert info_shared(target)["backing-filename"] == "top.qcow2"
    assert session.run("info block").startswith("virtio0 (none): %s (qcow2)\n" % target)
    assert "top: %s (qcow2, read-only)" % top in session.run("info block -n")
    session.close()
    assert identical_shared(target, top)[0]


def test_soft_cancel_while_ready_completes_without_switch(chain, session):
    directory, top = chain
    target = os.path.join(directory, "soft.qcow2")
    start_ready(session, target, sync="full")
    session.run('qemu-io virtio0 "write -P 0x11 3M 128k"')
    assert session.run("block_job_cancel virtio0") == ""
    session.wait_gone()
    assert session.trace() == START + SUCCESS
    assert session.event_data("BLOCK_JOB_COMPLETED") == []
    assert session.run("info block").startswith("virtio0 (top): %s (qcow2)\n" % top)
    assert identical_shared(target, top)[0]          # a full copy at the cancel


def test_force_cancel_while_ready(chain, session):
    directory, _top = chain
    start_ready(session, os.path.join(directory, "f.qcow2"), sync="full", **{"job-id": "mf"})
    assert session.run("block_job_cancel -f mf") == ""
    session.wait_gone()
    assert session.trace() == START + CANCELLED


def test_cancel_before_ready_and_complete_refused(chain, session):
    directory, _top = chain
    args = {"device": "virtio0", "job-id": "mj", "target": os.path.join(directory, "slow.qcow2"),
            "sync": "full", "speed": 1024 * 1024}
    assert session.qmp("drive-mirror", args) == {}
    assert session.job("mj")["status"] == "running"
    refusal = "Job 'mj' in state 'running' cannot accept command verb 'complete'"
    assert session.run("block_job_complete mj") == "Error: %s\n" % refusal
    assert session.qmp("block-job-complete", {"device": "mj"}) == {
        "error": {"class": "GenericError", "desc": refusal}}
    assert session.run("block_job_cancel virtio0") == "Error: Block job 'virtio0' not found\n"
    assert session.run("block_job_cancel mj") == ""
    session.wait_gone()
    assert session.trace() == ["created", "running"] + CANCELLED
    assert check_shared(args["target"])[0]


def test_pause_while_ready_is_standby_and_complete_waits_for_resume(chain, session):
    directory, top = chain
    target = os.path.join(directory, "ms.qcow2")
    start_ready(session, target, **{"job-id": "ms"})
    session.run("block_job_pause ms")
    job = session.wait_status("standby", "ms")
    assert (job["paused"], job["ready"]) == (True, True)
    assert session.run("block_job_cancel ms") == \
        "Error: The block job for device 'ms' is currently paused\n"
    assert session.run("block_job_complete ms") == ""
    assert session.job("ms")["status"] == "standby"
    session.run("block_job_resume ms")
    session.wait_gone()
    assert session.trace() == START + ["standby", "ready"] + SUCCESS
    assert session.run("info block").startswith("virtio0 (ms): %s" % target)


def test_soft_cancel_without_auto_dismiss_stays_concluded(chain, session):
    directory, _top = chain
    start_ready(session, os.path.join(directory, "md.qcow2"), **{"job-id": "md",
                                                                  "auto-dismiss": False})
    session.qmp("block-job-cancel", {"device": "md"})
    job = session.wait_status("concluded", "md")
    assert (job["ready"], job["status"]) == (False, "concluded")
    assert session.run("info block-jobs").startswith("Type mirror, device md: Completed")
    session.qmp("job-dismiss", {"id": "md"})
    assert session.trace() == START + ["waiting", "pending", "BLOCK_JOB_COMPLETED", "concluded",
                                       "null"]


def test_write_blocking_mode_writes_through(chain, session):
    directory, top = chain
    target = os.path.join(directory, "wb.qcow2")
    job = start_ready(session, target, sync="full", **{"copy-mode": "write-blocking"})
    session.run('qemu-io virtio0 "write -P 0x42 5M 256k"')
    now = session.job()
    assert (now["len"], now["offset"]) == (job["len"] + 256 * 1024, job["offset"] + 256 * 1024)
    session.qmp("block-job-cancel", {"device": "virtio0"})
    session.wait_gone()
    assert identical_shared(target, top)[0]


def test_raw_source_top_becomes_full_raw_copy(tmp_path, qemu_img):
    raw = str(tmp_path / "raw0.img")
    create(str(tmp_path), "create", "-f", "raw", raw, "4M")
    qemu_io(raw, "write -P 0x33 0 1M", fmt="raw")
    s = Session(raw)
    try:
        target = str(tmp_path / "raw-mirror.img")
        job = start_ready(s, target)
        assert job["len"] == 4 * MiB
        s.qmp("block-job-complete", {"device": "virtio0"})
        s.wait_gone()
        assert info_shared(target)["format"] == "raw"
        assert identical_shared(target, raw, "raw", "raw")[0]
    finally:
        s.close()


def test_existing_target_needs_n_and_n_keeps_its_header(chain, session):
    directory, top = chain
    exists = os.path.join(directory, "exists.qcow2")
    create(directory, "create", "-f", "qcow2", "exists.qcow2", "16M")
    qemu_io(exists, "write -P 0x99 0 1M")
    before = open(exists, "rb").read()
    assert session.run("drive_mirror -f virtio0 %s" % exists) == (
        "Error: Could not create '%s': the file exists (reuse it with -n or mode=existing)\n"
        % exists)
    assert open(exists, "rb").read() == before
    create(directory, "create", "-f", "qcow2", "-b", "mid.qcow2", "-F", "qcow2",
             "prepared.qcow2", "16M")
    prepared = os.path.join(directory, "prepared.qcow2")
    assert session.run("drive_mirror -n virtio0 %s qcow2" % prepared) == ""
    session.wait_status("ready")
    session.run("block_job_complete virtio0")
    session.wait_gone()
    assert info_shared(prepared)["backing-filename"] == "mid.qcow2"
    assert identical_shared(prepared, top)[0]


def test_busy_device_says_what_is_busy(chain, session):
    directory, _top = chain
    start_ready(session, os.path.join(directory, "m.qcow2"))
    busy = "Error: Node 'virtio0' is busy: block device is in use by block job: mirror\n"
    assert session.run("drive_mirror virtio0 %s" % os.path.join(directory, "m2.qcow2")) == busy
    assert session.run("block_stream virtio0") == busy
    assert session.run("snapshot_blkdev virtio0 %s" % os.path.join(directory, "s.qcow2")) == busy
    assert not os.path.exists(os.path.join(directory, "m2.qcow2"))
    assert not os.path.exists(os.path.join(directory, "s.qcow2"))
    assert session.trace() == START


HMP_ERRORS = [
    ("drive_mirror", 'drive_mirror: block device name expected\n'
                     'Try "help drive_mirror" for more information\n'),
    ("drive_mirror virtio0", 'drive_mirror: string expected\n'
                             'Try "help drive_mirror" for more information\n'),
    ("drive_mirror nosuch {d}/x.qcow2", "Error: Cannot find device='nosuch' nor node-name='nosuch'\n"),
    ("drive_mirror virtio0 {d}/x.foo foo", "Error: Unknown file format 'foo'\n"),
    ("drive_mirror virtio0 {d}/x.raw raw", "Error: Backing file not supported for file format 'raw'\n"),
    ("drive_mirror -n virtio0 {d}/missing.qcow2",
     "Error: Could not open '{d}/missing.qcow2': No such file or directory\n"),
    ("drive_mirror -f virtio0 {d}/mid.qcow2",
     "Error: Could not create '{d}/mid.qcow2': it is image 'mid' of an open chain\n"),
    ("drive_mirror virtio0 {d}/top.qcow2",
     "Error: Could not create '{d}/top.qcow2': it is image 'top' of an open chain\n"),
]


@pytest.mark.parametrize("line, expected", HMP_ERRORS, ids=[e[0] for e in HMP_ERRORS])
def test_hmp_errors_change_nothing(chain, session, line, expected):
    directory, _top = chain
    before = {name: open(os.path.join(directory, name), "rb").read() for name in os.listdir(directory)}
    assert session.run(line.format(d=directory)) == expected.format(d=directory)
    after = {name: open(os.path.join(directory, name), "rb").read() for name in os.listdir(directory)}
    assert after == before
    assert session.trace() == [] and session.job() is None


QMP_ERRORS = [
    ({"sync": None}, "Parameter 'sync' is missing"),
    ({"device": "nosuch"}, "Cannot find device='nosuch' nor node-name='nosuch'"),
    ({"device": "mid"}, "Need a root block node"),
    ({"sync": "foo"}, "Parameter 'sync' does not accept value 'foo'"),
    ({"sync": "incremental"}, "Sync mode 'incremental' not supported"),
    ({"sync": "bitmap"}, "Sync mode 'bitmap' not supported"),
    ({"mode": "foo"}, "Parameter 'mode' does not accept value 'foo'"),
    ({"format": "foo"}, "Unknown file format 'foo'"),
    ({"speed": -1}, "Parameter 'speed' expects a non-negative value"),
    ({"granularity": 1000}, "Parameter 'granularity' expects a power of 2"),
    ({"granularity": 256}, "Parameter 'granularity' expects a value in range [512B, 64MB]"),
    ({"granularity": 128 * MiB}, "Parameter 'granularity' expects a value in range [512B, 64MB]"),
    ({"buf-size": -1}, "Invalid parameter 'buf-size'"),
    ({"on-source-error": "foo"}, "Parameter 'on-source-error' does not accept value 'foo'"),
    ({"on-target-error": "foo"}, "Parameter 'on-target-error' does not accept value 'foo'"),
    ({"copy-mode": "foo"}, "Parameter 'copy-mode' does not accept value 'foo'"),
    ({"replaces": "x"}, "a node-name must be provided when replacing a named node of the graph"),
    ({"job-id": "bad id"}, "Invalid job ID 'bad id'"),
    ({"job-id": "#x"}, "Invalid job ID '#x'"),
]


@pytest.mark.parametrize("change, desc", QMP_ERRORS, ids=[e[1] for e in QMP_ERRORS])
def test_qmp_errors_create_nothing_and_emit_nothing(chain, session, change, desc):
    directory, _top = chain
    args = {"device": "virtio0", "target": os.path.join(directory, "e.qcow2"), "sync": "full"}
    args.update(change)
    args = {k: v for k, v in args.items() if v is not None}
    assert session.qmp("drive-mirror", args) == {"error": {"class": "GenericError", "desc": desc}}
    assert not os.path.exists(args["target"])
    assert session.trace() == []        # QEMU emits created/null for speed -1; we check first


def test_every_tuning_option_together(chain, session):
    directory, top = chain
    target = os.path.join(directory, "tuned.qcow2")
    job = start_ready(session, target, sync="top", **{
        "job-id": "mt", "format": "qcow2", "mode": "absolute-paths", "speed": 0,
        "granularity": 65536, "buf-size": 4194304, "on-source-error": "stop",
        "on-target-error": "enospc", "unmap": True})
    assert job["len"] == TOP_ALLOCATED
    assert session.qmp("drive-mirror", {"device": "virtio0", "job-id": "mt", "sync": "top",
                                        "target": os.path.join(directory, "t2.qcow2")}) == {
        "error": {"class": "GenericError",
                  "desc": "Node 'virtio0' is busy: block device is in use by block job: mirror"}}
    session.qmp("block-job-complete", {"device": "mt"})
    session.wait_gone()
    assert identical_shared(target, top)[0]
