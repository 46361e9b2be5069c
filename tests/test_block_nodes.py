"""blockdev-add, blockdev-del, query-named-block-nodes, info block -n, and blockdev-mirror
onto an added node (issue 12, acceptance 4)."""
import os

import pytest

from tests.mirrorkit import identical_shared
from tests.mirrorkit import MiB, Session, small_chain
from tests.mirrorkit import qemu_img as create

MEMBERS = {"node-name", "drv", "file", "ro", "backing_file_depth", "encrypted", "detect_zeroes",
           "cache", "bps", "bps_rd", "bps_wr", "iops", "iops_rd", "iops_wr", "write_threshold",
           "image"}


@pytest.fixture
def setup(tmp_path, qemu_img):
    directory = str(tmp_path)
    top = small_chain(directory)
    create(directory, "create", "-f", "qcow2", "bdm.qcow2", "16M")
    create(directory, "create", "-f", "qcow2", "small.qcow2", "8M")
    s = Session(top)
    yield directory, top, s
    s.close()


def error(desc):
    return {"error": {"class": "GenericError", "desc": desc}}


def test_query_named_block_nodes_lists_the_chain_newest_first(setup):
    directory, top, s = setup
    nodes = s.qmp("query-named-block-nodes")
    assert [n["node-name"] for n in nodes] == ["base", "mid", "top"]
    entry = nodes[2]
    assert MEMBERS <= set(entry)
    assert (entry["drv"], entry["file"], entry["ro"], entry["backing_file_depth"]) == \
        ("qcow2", top, False, 2)
    assert entry["image"]["backing-image"]["filename"] == os.path.join(directory, "mid.qcow2")
    flat = s.qmp("query-named-block-nodes", {"flat": True})
    assert "backing-image" not in flat[2]["image"]
    assert s.run("info block -n") == (
        "base: {d}/base.qcow2 (qcow2, read-only)\n    Cache mode:       writeback\n\n"
        "mid: {d}/mid.qcow2 (qcow2, read-only)\n    Cache mode:       writeback\n"
        "    Backing file:     base.qcow2 (chain depth: 1)\n\n"
        "top: {d}/top.qcow2 (qcow2)\n    Cache mode:       writeback\n"
        "    Backing file:     mid.qcow2 (chain depth: 2)\n").format(d=directory)


def test_blockdev_add_and_del(setup):
    directory, _top, s = setup
    bdm = os.path.join(directory, "bdm.qcow2")
    assert s.qmp("blockdev-add", {"driver": "qcow2", "node-name": "tgt",
                                  "file": {"driver": "file", "filename": bdm}}) == {}
    assert s.qmp("blockdev-add", {"driver": "file", "node-name": "sf",
                                  "filename": os.path.join(directory, "small.qcow2")}) == {}
    assert s.qmp("blockdev-add", {"driver": "qcow2", "node-name": "small", "file": "sf"}) == {}
    nodes = {n["node-name"]: n for n in s.qmp("query-named-block-nodes")}
    assert (nodes["tgt"]["drv"], nodes["tgt"]["file"], nodes["tgt"]["ro"]) == ("qcow2", bdm, False)
    assert nodes["sf"]["drv"] == "file" and "image" not in nodes["sf"]
    assert list(nodes)[:3] == ["small", "sf", "tgt"]
    assert s.qmp("blockdev-add", {"driver": "qcow2", "node-name": "tgt",
                                  "file": {"driver": "file", "filename": bdm}}) == \
        error("Duplicate nodes with node-name='tgt'")
    assert s.qmp("blockdev-add", {"driver": "foo", "node-name": "x"}) == \
        error("Parameter 'driver' does not accept value 'foo'")
    assert s.qmp("blockdev-add", {"driver": "qcow2", "node-name": "x", "file": {
        "driver": "file", "filename": os.path.join(directory, "top.qcow2")}}) == \
        error("Could not open '%s/top.qcow2': it is image 'top' of an open chain" % directory)
    assert s.qmp("blockdev-del", {"node-name": "sf"}) == error("Node sf is in use")
    assert s.qmp("blockdev-del", {"node-name": "mid"}) == \
        error("Node mid is not owned by the monitor")
    assert s.qmp("blockdev-del", {"node-name": "nosuch"}) == \
        error("Failed to find node with node-name='nosuch'")
    assert s.qmp("blockdev-del", {"node-name": "small"}) == {}
    assert s.qmp("blockdev-del", {"node-name": "sf"}) == {}
    assert [n["node-name"] for n in s.qmp("query-named-block-nodes")][0] == "tgt"


def test_blockdev_mirror_onto_an_added_node(setup):
    directory, top, s = setup
    bdm = os.path.join(directory, "bdm.qcow2")
    s.qmp("blockdev-add", {"driver": "qcow2", "node-name": "tgt",
                           "file": {"driver": "file", "filename": bdm}})
    s.qmp("blockdev-add", {"driver": "qcow2", "node-name": "small", "file": {
        "driver": "file", "filename": os.path.join(directory, "small.qcow2")}})
    assert s.qmp("blockdev-mirror", {"device": "virtio0", "target": "nosuch", "sync": "full"}) == \
        error("Cannot find device='nosuch' nor node-name='nosuch'")
    assert s.qmp("blockdev-mirror", {"device": "virtio0", "target": "small", "sync": "full",
                                     "job-id": "bs"}) == {}
    s.wait_gone()
    assert s.trace() == ["created", "running", "aborting", "BLOCK_JOB_COMPLETED", "concluded",
                         "null"]
    assert s.qmp("blockdev-mirror", {"device": "virtio0", "target": "tgt", "sync": "full",
                                     "job-id": "bm"}) == {}
    job = s.wait_status("ready", "bm")
    assert job["len"] == 16 * MiB             # the whole disk: the node may hold anything
    assert s.qmp("blockdev-del", {"node-name": "tgt"}) == \
        error("Node 'tgt' is busy: block device is in use by block job: mirror")
    s.qmp("block-job-complete", {"device": "bm"})
    s.wait_gone()
    assert s.run("info block") == "virtio0 (tgt): %s (qcow2)\n    Cache mode:       writeback\n" % bdm
    assert s.qmp("blockdev-del", {"node-name": "tgt"}) == error("Node tgt is in use")
    names = [n["node-name"] for n in s.qmp("query-named-block-nodes")]
    assert names == ["small", "tgt"]           # the old chain is gone, as in QEMU
    s.close()
    assert identical_shared(bdm, top)[0]


def test_blockdev_mirror_size_mismatch_fails_the_job(setup):
    directory, _top, s = setup
    s.qmp("blockdev-add", {"driver": "qcow2", "node-name": "small", "file": {
        "driver": "file", "filename": os.path.join(directory, "small.qcow2")}})
    s.qmp("blockdev-mirror", {"device": "virtio0", "target": "small", "sync": "full"})
    s.wait_gone()
    assert s.event_data("BLOCK_JOB_COMPLETED") == [{
        "type": "mirror", "device": "virtio0", "len": 0, "offset": 0, "speed": 0,
        "error": "Source and target image have different sizes"}]
