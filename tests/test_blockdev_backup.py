"""blockdev-backup: a backup onto a node of the graph, QEMU 7.2's checks and texts
(backup_job_create), in QEMU's order, before anything is written."""
import os

import pytest

from conftest import run
from oracle import check_clean, identical
from test_backup import SIZE, disk, reference  # noqa: F401  (the fixture)

from commands.errors import qmp_error


def refused(core, arguments):
    with pytest.raises(Exception) as err:
        core.execute("blockdev-backup", arguments)
    return qmp_error(err.value)["desc"]


def test_blockdev_backup_refusals(disk, tmp_path):  # noqa: F811
    core, _tmp, _events = disk
    args = {"device": "virtio0", "sync": "full"}
    assert refused(core, dict(args, target="nosuch")) == (
        "Cannot find device='nosuch' nor node-name='nosuch'")
    assert refused(core, dict(args, device="nosuch", target="top")) == (
        "Cannot find device='nosuch' nor node-name='nosuch'")
    assert refused(core, dict(args, target="top")) == "Source and target cannot be the same"
    assert refused(core, dict(args, target="base")) == (
        "Node 'base' is busy: block device is in use")
    assert refused(core, dict(args, target="base", sync="incremental")) == (
        "must provide a valid bitmap name for 'incremental' sync mode")
    assert refused(core, dict(args, target="base", speed=-1)) == (
        "Parameter 'speed' expects a non-negative value")
    assert refused(core, dict(args, target="base", format="qcow2")) == (
        "Parameter 'format' is unexpected")
    assert core.execute("query-block-jobs") == []
    assert sorted(os.listdir(str(tmp_path))) == ["base.qcow2", "top.qcow2"]


def add_node(core, name, path, **extra):
    core.execute("blockdev-add", dict({"driver": "qcow2", "node-name": name,
                                       "file": {"driver": "file", "filename": path}}, **extra))


def test_blockdev_backup_onto_blockdev_add_nodes(disk, tmp_path):  # noqa: F811
    core, _tmp, events = disk
    full, small, raw = (str(tmp_path / n) for n in ("full.qcow2", "small.qcow2", "r.raw"))
    run("qemu-img", "create", "-q", "-f", "qcow2", full, str(SIZE))
    run("qemu-img", "create", "-q", "-f", "qcow2", small, str(SIZE // 2))
    run("qemu-img", "create", "-q", "-f", "raw", raw, str(SIZE))
    add_node(core, "tgt", full)
    add_node(core, "small", small)
    core.execute("blockdev-add", {"driver": "raw", "node-name": "rawnode",
                                  "file": {"driver": "file", "filename": raw}})
    args = {"device": "virtio0", "sync": "full"}
    assert refused(core, dict(args, target="small")) == (
        "Source and target image have different sizes")
    assert refused(core, dict(args, target="rawnode", compress=True)) == (
        "Compression is not supported for this drive")
    ref = reference(core, tmp_path, "ref.qcow2")
    core.execute("block-dirty-bitmap-add", {"node": "virtio0", "name": "bm0"})
    core.execute("blockdev-backup", dict(args, target="tgt", speed=1 << 20, **{"job-id": "b1"}))
    assert refused(core, dict(args, target="tgt", **{"job-id": "b2"})) == (
        "Node 'virtio0' is busy: block device is in use by block job: backup")
    core.execute("block-job-set-speed", {"device": "b1", "speed": 0})
    assert core.wait_jobs(timeout=120)
    assert [e["data"]["status"] for e in events if e["event"] == "JOB_STATUS_CHANGE"] == [
        "created", "running", "paused", "running", "waiting", "pending", "concluded", "null"]
    # incremental onto a node whose backing is the full backup: the chain is the disk
    core.execute("x-blockmon-qemu-io", {"device": "virtio0", "command": "write -P 0x77 5M 128k"})
    ref2 = reference(core, tmp_path, "ref2.qcow2")
    inc = str(tmp_path / "inc.qcow2")
    run("qemu-img", "create", "-q", "-f", "qcow2", "-b", full, "-F", "qcow2", inc)
    add_node(core, "inc", inc, backing="tgt")
    core.execute("blockdev-backup", dict(args, target="inc", sync="incremental", bitmap="bm0",
                                         **{"job-id": "b3"}))
    assert core.wait_jobs(timeout=120)
    assert core.execute("query-block")[0]["inserted"]["dirty-bitmaps"][0]["count"] == 0
    for node in ("inc", "tgt", "small", "rawnode"):
        core.execute("blockdev-del", {"node-name": node})
    assert identical(ref, full)[0] and check_clean(full)[0]
    assert identical(ref2, inc)[0] and check_clean(inc)[0]
    assert run("qemu-img", "map", "--output=json", inc).stdout.count('"depth": 0') == 1
