"""blockdev-backup: a backup onto a node of the graph, QEMU 7.2's checks and texts
(backup_job_create), in QEMU's order, before anything is written."""
import os

import pytest

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
