"""Every refusal of the command core, with QEMU's exact text, and every image file unchanged (issue 3, acceptance 6)."""
import os
import subprocess

import pytest

from commands.core import BlockCore
from commands.errors import CommandError, qmp_error
from images.errors import BlockError
from tests.oracle import fingerprints

MiB = 1 << 20


@pytest.fixture
def small_chain(tmp_path, qemu_img):
    """base.qcow2 <- mid.qcow2 <- top.qcow2, 8 MiB, data in every layer."""
    d = str(tmp_path)
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "base.qcow2", "8M"], cwd=d, check=True)
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2",
                    "mid.qcow2"], cwd=d, check=True)
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", "mid.qcow2", "-F", "qcow2",
                    "top.qcow2"], cwd=d, check=True)
    for name, pattern, offset in (("base", "0x11", 0), ("mid", "0x22", 2 * MiB), ("top", "0x33", 4 * MiB)):
        subprocess.run(["qemu-io", "-f", "qcow2", "-c", "write -P %s %d 1M" % (pattern, offset),
                        name + ".qcow2"], cwd=d, check=True, capture_output=True)
    return d


@pytest.fixture
def core(small_chain):
    core = BlockCore()
    core.add_drive("virtio0", os.path.join(small_chain, "top.qcow2"))
    yield core
    core.shutdown()


def files_in(directory):
    return sorted(os.path.join(directory, name) for name in os.listdir(directory))


def refusal(core, name, arguments):
    with pytest.raises((CommandError, BlockError)) as caught:
        core.execute(name, arguments)
    return qmp_error(caught.value)


def start_slow_stream(core):
    core.execute("block-stream", {"device": "virtio0", "speed": 1})


NO_JOB_CASES = [
    ("block-stream", {"device": "nosuch"}, "GenericError", "Cannot find device='nosuch' nor node-name='nosuch'"),
    ("block-stream", {"device": "virtio0", "base": "nosuch.qcow2"}, "GenericError",
     "Can't find 'nosuch.qcow2' in the backing chain"),
    ("block-stream", {"device": "virtio0", "base": "top.qcow2"}, "GenericError",
     "Can't find 'top.qcow2' in the backing chain"),
    ("block-stream", {"device": "virtio0", "speed": -1}, "GenericError",
     "Parameter 'speed' expects a non-negative value"),
    ("block-stream", {"device": "virtio0", "base": "a", "base-node": "b"}, "GenericError",
     "'base' and 'base-node' cannot be specified at the same time"),
    ("block-stream", {"device": "virtio0", "backing-file": "x"}, "GenericError",
     "backing file specified, but streaming the entire chain"),
    ("block-stream", {"device": "virtio0", "base-node": "top"}, "GenericError",
     "Node 'top' is not a backing image of 'virtio0'"),
    ("block-job-cancel", {"device": "virtio0"}, "DeviceNotActive", "Block job 'virtio0' not found"),
    ("block-job-pause", {"device": "virtio0"}, "DeviceNotActive", "Block job 'virtio0' not found"),
    ("block-job-resume", {"device": "virtio0"}, "DeviceNotActive", "Block job 'virtio0' not found"),
    ("block-job-complete", {"device": "virtio0"}, "DeviceNotActive", "Block job 'virtio0' not found"),
    ("block-job-set-speed", {"device": "virtio0", "speed": 0}, "DeviceNotActive", "Block job 'virtio0' not found"),
    ("blockdev-snapshot-sync", {"device": "virtio0"}, "GenericError", "Parameter 'snapshot-file' is missing"),
    ("blockdev-snapshot-sync", {"device": "nosuch", "snapshot-file": "/tmp/x.qcow2"}, "GenericError",
     "Cannot find device='nosuch' nor node-name=''"),
    ("nosuch-command", {}, "CommandNotFound", "The command nosuch-command has not been found"),
]


@pytest.mark.parametrize("name,arguments,error_class,desc", NO_JOB_CASES)
def test_refusals_without_a_job(core, small_chain, name, arguments, error_class, desc):
    before = fingerprints(files_in(small_chain))
    assert refusal(core, name, arguments) == {"class": error_class, "desc": desc}
    assert core.jobs() == []
    assert fingerprints(files_in(small_chain)) == before


SNAPSHOT_CASES = [
    ({"format": "vmdk9"}, "Unknown file format 'vmdk9'"),
    ({"format": "raw"}, "Backing file not supported for file format 'raw'"),
]


@pytest.mark.parametrize("extra,desc", SNAPSHOT_CASES)
def test_snapshot_refusals_create_nothing(core, small_chain, extra, desc):
    before = fingerprints(files_in(small_chain))
    target = os.path.join(small_chain, "new.img")
    arguments = dict({"device": "virtio0", "snapshot-file": target}, **extra)
    assert refusal(core, "blockdev-snapshot-sync", arguments)["desc"] == desc
    assert not os.path.exists(target)
    assert fingerprints(files_in(small_chain)) == before


def test_snapshot_onto_the_live_top_is_refused(core, small_chain):
    before = fingerprints(files_in(small_chain))
    target = os.path.join(small_chain, "top.qcow2")
    assert refusal(core, "blockdev-snapshot-sync", {"device": "virtio0", "snapshot-file": target})["desc"] == \
        "Error: Trying to create an image with the same filename as the backing file"
    assert fingerprints(files_in(small_chain)) == before


def test_snapshot_onto_a_lower_image_is_refused(core, small_chain):
    before = fingerprints(files_in(small_chain))
    target = os.path.join(small_chain, "base.qcow2")
    desc = refusal(core, "blockdev-snapshot-sync", {"device": "virtio0", "snapshot-file": target})["desc"]
    assert desc == "Could not create '%s': it is image 'base' of a device's backing chain" % target
    assert fingerprints(files_in(small_chain)) == before


def test_snapshot_into_missing_directory(core, small_chain):
    target = os.path.join(small_chain, "no", "such", "disk.img")
    desc = refusal(core, "blockdev-snapshot-sync", {"device": "virtio0", "snapshot-file": target})["desc"]
    assert desc == "Could not create '%s': No such file or directory" % target
    assert not os.path.exists(os.path.join(small_chain, "no"))


def test_snapshot_existing_mode_missing_file(core, small_chain):
    target = os.path.join(small_chain, "missing.qcow2")
    desc = refusal(core, "blockdev-snapshot-sync",
                   {"device": "virtio0", "snapshot-file": target, "mode": "existing"})["desc"]
    assert desc == "Could not open '%s': No such file or directory" % target


def test_busy_device_refuses_second_job_and_snapshot(core, small_chain):
    start_slow_stream(core)
    before = fingerprints([os.path.join(small_chain, n) for n in ("base.qcow2", "mid.qcow2")])
    busy = "Node 'virtio0' is busy: block device is in use by block job: stream"
    assert refusal(core, "block-stream", {"device": "virtio0"})["desc"] == busy
    assert refusal(core, "block-stream", {"device": "virtio0", "job-id": "other", "base": "base.qcow2"})["desc"] == busy
    target = os.path.join(small_chain, "snap.qcow2")
    assert refusal(core, "blockdev-snapshot-sync", {"device": "virtio0", "snapshot-file": target})["desc"] == busy
    assert not os.path.exists(target)
    assert refusal(core, "block-job-complete", {"device": "virtio0"})["desc"] == \
        "Job 'virtio0' in state 'running' cannot accept command verb 'complete'"
    assert refusal(core, "block-job-resume", {"device": "virtio0"})["desc"] == \
        "Can't resume a job that was not paused"
    core.execute("block-job-pause", {"device": "virtio0"})
    assert refusal(core, "block-job-pause", {"device": "virtio0"})["desc"] == "Job is already paused"
    assert refusal(core, "block-job-cancel", {"device": "virtio0"})["desc"] == \
        "The block job for device 'virtio0' is currently paused"
    assert refusal(core, "block-job-set-speed", {"device": "virtio0", "speed": -5})["desc"] == \
        "Parameter 'speed' expects a non-negative value"
    core.execute("block-job-cancel", {"device": "virtio0", "force": True})
    assert core.wait_jobs(timeout=60)
    assert fingerprints([os.path.join(small_chain, n) for n in ("base.qcow2", "mid.qcow2")]) == before
    info = core.execute("query-block")[0]["inserted"]
    assert info["backing_file"] == "mid.qcow2" and info["backing_file_depth"] == 2


def test_job_id_errors(core, small_chain):
    assert refusal(core, "block-stream", {"device": "virtio0", "job-id": "#bad"})["desc"] == "Invalid job ID '#bad'"
    start_slow_stream(core)
    other = os.path.join(small_chain, "other.qcow2")
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", other],
                   cwd=small_chain, check=True)
    core.add_drive("virtio1", other)
    assert refusal(core, "block-stream", {"device": "virtio1", "job-id": "virtio0"})["desc"] == \
        "Job ID 'virtio0' already in use"
    assert core.job_ids() == ["virtio0"]
