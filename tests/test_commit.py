"""Intermediate commit over QMP and the console (issue 13): events, refusals, chain, oracle.

Every test runs blockmon as users do (``python -m monitor -qmp ...``) on a private
copy of the 64 MiB benchmark chain A <- B <- C <- D (relative backing names) and
judges the files with qemu-img.
"""
import os

import pytest

from tests.commitkit import Blockmon, copy_chain, ended, written_by_merge
from tests.conftest import require_qemu
from tests.oracle import check_clean, fingerprints, identical, info, map_json

SIZE = 64 << 20


@pytest.fixture(scope="session")
def chain64(tmp_path_factory):
    from bench.make_chain import build_chain
    require_qemu()
    return build_chain("64M", str(tmp_path_factory.mktemp("chain64")))


@pytest.fixture
def chain(chain64, tmp_path):
    return copy_chain(chain64, str(tmp_path / "chain"))


@pytest.fixture
def bm(chain):
    served = Blockmon(["file=%s,if=none,id=virtio0" % os.path.join(chain, "D.qcow2")], chain)
    yield served
    served.close()


def files(chain, names="ABCD"):
    return [os.path.join(chain, n + ".qcow2") for n in names]


def test_intermediate_commit_states_verbs_and_events(bm, chain, chain64):
    bm.ok("block-commit", device="virtio0", **{"job-id": "c1"}, top="C.qcow2", base="A.qcow2",
          speed=64 * 1024)
    line = bm.hmp("info block-jobs")
    assert line.startswith("Type commit, device c1: Completed ")
    assert line.endswith(" of %d bytes, speed limit 65536 bytes/s\n" % SIZE)
    assert bm.hmp("block_job_complete c1") == \
        "Error: Job 'c1' in state 'running' cannot accept command verb 'complete'\n"
    assert bm.hmp("block_stream virtio0") == \
        "Error: Node 'virtio0' is busy: block device is in use by block job: commit\n"
    reply = bm.cmd("block-commit", device="virtio0")
    assert reply["error"]["desc"] == \
        "Node 'virtio0' is busy: block device is in use by block job: commit"
    bm.hmp("block_job_pause c1")
    bm.wait_event(lambda e: e["data"].get("status") == "paused")
    (job,) = bm.ok("query-block-jobs")
    assert (job["type"], job["status"], job["paused"], job["ready"]) == ("commit", "paused", True, False)
    assert bm.hmp("block_job_cancel c1") == "Error: The block job for device 'c1' is currently paused\n"
    bm.hmp("block_job_resume c1")
    bm.hmp("block_job_set_speed c1 0")
    bm.wait_event(ended("c1"))
    done = {"type": "commit", "device": "c1", "len": SIZE, "offset": SIZE, "speed": 0}
    assert bm.sequence("c1") == ["created", "running", "paused", "running", "waiting", "pending",
                                 ("BLOCK_JOB_COMPLETED", done), "concluded", "null"]
    assert "Backing file:     A.qcow2 (chain depth: 1)" in bm.hmp("info block")
    assert bm.hmp("info block-jobs") == "No active jobs\n"
    bm.close()
    d = os.path.join(chain, "D.qcow2")
    assert info(d)["backing-filename"] == "A.qcow2"     # relative stays relative (QEMU: absolute)
    for path in files(chain, "AD"):
        assert check_clean(path)[0]
    assert identical(d, os.path.join(chain64, "D.qcow2"))[0]
    assert identical(os.path.join(chain, "A.qcow2"), os.path.join(chain64, "C.qcow2"))[0]


def test_commit_by_node_names_and_backing_file(bm, chain, chain64):
    bm.ok("block-commit", device="virtio0", **{"top-node": "C", "base-node": "B"})
    bm.wait_event(ended("virtio0"))
    assert bm.sequence("virtio0")[-3:] == [
        ("BLOCK_JOB_COMPLETED", {"type": "commit", "device": "virtio0", "len": SIZE,
                                 "offset": SIZE, "speed": 0}), "concluded", "null"]
    assert "Backing file:     B.qcow2 (chain depth: 2)" in bm.hmp("info block")
    bm.ok("block-commit", device="virtio0", **{"job-id": "cb", "top-node": "B", "base-node": "A",
                                               "backing-file": "./A.qcow2"})
    bm.wait_event(ended("cb"))
    bm.close()
    d = os.path.join(chain, "D.qcow2")
    assert info(d)["backing-filename"] == "./A.qcow2"
    assert identical(d, os.path.join(chain64, "D.qcow2"))[0]
    assert check_clean(os.path.join(chain, "A.qcow2"))[0]


def test_commit_of_a_backing_node_rewrites_the_read_only_overlay(bm, chain, chain64):
    bm.ok("block-commit", device="virtio0", **{"top-node": "B", "base-node": "A"})
    bm.wait_event(ended("virtio0"))
    assert "Backing file:     C.qcow2 (chain depth: 2)" in bm.hmp("info block")
    nodes = [n["node-name"] for n in bm.ok("query-block")[0]["inserted"]["image"].get("backing-image", {}) and []]
    bm.close()
    assert nodes == []
    assert info(os.path.join(chain, "C.qcow2"))["backing-filename"] == "A.qcow2"
    assert identical(os.path.join(chain, "D.qcow2"), os.path.join(chain64, "D.qcow2"))[0]


def test_cancelled_commit_leaves_the_chain_and_the_guest_view(bm, chain, chain64):
    bm.ok("block-commit", device="virtio0", top="C.qcow2", speed=64 * 1024)
    bm.wait_event(lambda e: e["data"].get("status") == "running")
    bm.hmp("block_job_cancel virtio0")
    bm.wait_event(ended("virtio0"))
    seq = bm.sequence("virtio0")
    assert seq[:2] == ["created", "running"] and seq[2] == "aborting"
    assert seq[3][0] == "BLOCK_JOB_CANCELLED" and seq[4:] == ["concluded", "null"]
    assert "Backing file:     C.qcow2 (chain depth: 3)" in bm.hmp("info block")
    bm.close()
    assert info(os.path.join(chain, "D.qcow2"))["backing-filename"] == "C.qcow2"
    for path in files(chain):
        assert check_clean(path)[0]
    assert identical(os.path.join(chain, "D.qcow2"), os.path.join(chain64, "D.qcow2"))[0]


REFUSALS = [
    ({"device": "nosuch"}, "DeviceNotFound", "Device 'nosuch' not found"),
    ({"device": "C"}, "GenericError", "Need a root block node"),
    ({"device": "virtio0", "top": "nosuch.qcow2"}, "GenericError",
     "Top image file nosuch.qcow2 not found"),
    ({"device": "virtio0", "base": "nosuch.qcow2"}, "GenericError",
     "Can't find 'nosuch.qcow2' in the backing chain"),
    ({"device": "virtio0", "top": "B.qcow2", "base": "C.qcow2"}, "GenericError",
     "Can't find 'C.qcow2' in the backing chain"),
    ({"device": "virtio0", "top-node": "B", "base-node": "C"}, "GenericError",
     "'C' is not in this backing file chain"),
    ({"device": "virtio0", "top": "C.qcow2", "top-node": "C"}, "GenericError",
     "'top-node' and 'top' are mutually exclusive"),
    ({"device": "virtio0", "base": "A.qcow2", "base-node": "A"}, "GenericError",
     "'base-node' and 'base' are mutually exclusive"),
    ({"device": "virtio0", "top-node": "C", "base-node": "C"}, "GenericError",
     "cannot commit an image into itself"),
    ({"device": "virtio0", "top": "A.qcow2"}, "GenericError", "cannot commit an image into itself"),
    ({"device": "virtio0", "top-node": "nosuch"}, "GenericError",
     "Cannot find device='' nor node-name='nosuch'"),
    ({"device": "virtio0", "base-node": "nosuch"}, "GenericError",
     "Cannot find device='' nor node-name='nosuch'"),
    ({"device": "virtio0", "backing-file": "x"}, "GenericError",
     "'backing-file' specified, but 'top' is the active layer"),
    ({"device": "virtio0", "top": "C.qcow2", "speed": -1}, "GenericError",
     "Parameter 'speed' expects a non-negative value"),
    ({"device": "raw0"}, "GenericError", "cannot commit an image into itself"),
    ({"device": "virtio0", "top": "C.qcow2", "job-id": "bad id"}, "GenericError",
     "Invalid job ID 'bad id'"),
]


def test_every_refusal_text_and_nothing_changes(chain):
    raw = os.path.join(chain, "raw0.img")
    with open(raw, "wb") as f:
        f.truncate(1 << 20)
    before = fingerprints(files(chain) + [raw])
    bm = Blockmon(["file=%s,if=none,id=virtio0" % os.path.join(chain, "D.qcow2"),
                   "file=%s,if=none,id=raw0,format=raw" % raw], chain)
    try:
        for arguments, class_, desc in REFUSALS:
            reply = bm.cmd("block-commit", **arguments)
            assert reply.get("error") == {"class": class_, "desc": desc}, (arguments, reply)
        # QEMU creates and drops the job on a bad speed: 'created', 'null', nothing else
        assert bm.sequence("virtio0") == ["created", "null"]
        assert bm.hmp("info block-jobs") == "No active jobs\n"
    finally:
        bm.close()
    assert fingerprints(files(chain) + [raw]) == before


def test_read_only_base_that_cannot_be_reopened(chain):
    """A base marked corrupt opens read-only but is refused for writing: the commit is
    refused with the reopen's reason, 'created' then 'null', and nothing is written."""
    a = os.path.join(chain, "A.qcow2")
    with open(a, "r+b") as f:          # incompatible_features bit 1: corrupt
        f.seek(72)
        f.write((2).to_bytes(8, "big"))
    before = fingerprints(files(chain))
    bm = Blockmon(["file=%s,if=none,id=virtio0" % os.path.join(chain, "D.qcow2")], chain)
    try:
        reply = bm.cmd("block-commit", device="virtio0", top="C.qcow2")
        assert reply["error"]["desc"].startswith("Could not reopen file: "), reply
        assert "corrupt" in reply["error"]["desc"]
        assert bm.sequence("virtio0") == ["created", "null"]
    finally:
        bm.close()
    assert fingerprints(files(chain)) == before


def test_hmp_commit_empties_the_top_into_its_backing_file(chain, chain64):
    raw = os.path.join(chain, "raw0.img")
    with open(raw, "wb") as f:
        f.truncate(1 << 20)
    bm = Blockmon(["file=%s,if=none,id=virtio0" % os.path.join(chain, "D.qcow2"),
                   "file=%s,if=none,id=raw0,format=raw" % raw], chain)
    try:
        assert bm.hmp("commit") == 'commit: block device name expected\nTry "help commit" for more information\n'
        assert bm.hmp("commit nosuch") == "Device 'nosuch' not found\n"
        assert bm.hmp("commit raw0") == "'commit' error for 'raw0': Operation not supported\n"
        bm.ok("block-stream", device="virtio0", speed=64 * 1024)
        assert bm.hmp("commit virtio0") == "'commit' error for 'virtio0': Device or resource busy\n"
        bm.hmp("block_job_cancel virtio0")
        bm.wait_event(ended("virtio0"))
        assert bm.hmp("commit virtio0") == ""
        assert "Backing file:     C.qcow2 (chain depth: 3)" in bm.hmp("info block")
        assert bm.hmp("commit all") == ""
        assert bm.hmp("help commit") == "commit device|all -- commit changes to the disk images " \
            "(if -snapshot is used) or backing files\n"
    finally:
        bm.close()
    d, c = os.path.join(chain, "D.qcow2"), os.path.join(chain, "C.qcow2")
    assert not [e for e in map_json(d) if e["depth"] == 0 and e["present"]]
    assert identical(d, os.path.join(chain64, "D.qcow2"))[0]
    assert identical(c, os.path.join(chain64, "D.qcow2"))[0]
    for path in (c, d):
        assert check_clean(path)[0]


def test_merge_cost_is_what_qemu_img_map_says_each_merge_writes(bm, chain):
    d = os.path.join(chain, "D.qcow2")
    for base, depth in (("A", 3), ("B", 2), ("C", 1)):
        cost = bm.ok("x-blockmon-merge-cost", device="virtio0", base=base)
        stream = cost["stream"]["data"] + cost["stream"]["zero"]
        commit = cost["commit"]["data"] + cost["commit"]["zero"]
        assert (stream, commit) == written_by_merge(d, depth), base
        assert (cost["stream"]["target"], cost["commit"]["target"]) == ("D", base)
    text = bm.hmp("info merge-cost virtio0")
    stream, commit = written_by_merge(d, 3)
    assert text.splitlines()[0] == "Merging virtio0 down to A (A stays, the layers above it go):"
    assert "block_stream virtio0 0 A" in text and "writes %d bytes" % stream in text
    assert "block_commit virtio0 D A" in text and "writes %d bytes" % commit in text
    assert bm.hmp("info merge-cost nosuch") == "Error: Device 'nosuch' not found\n"


def test_block_commit_from_the_console(bm, chain, chain64):
    assert bm.hmp("block_commit virtio0 C.qcow2 B 0") == ""
    bm.wait_event(ended("virtio0"))
    assert "Backing file:     B.qcow2 (chain depth: 2)" in bm.hmp("info block")
    assert bm.hmp("block_commit virtio0 nosuch") == "Error: Top image file nosuch not found\n"
    bm.close()
    assert identical(os.path.join(chain, "D.qcow2"), os.path.join(chain64, "D.qcow2"))[0]


def test_toolbar_shows_a_commit_job_like_a_stream(chain):
    import re
    from commands.core import BlockCore
    from monitor.toolbar import JobsToolbar
    core = BlockCore()
    core.add_drive("virtio0", os.path.join(chain, "D.qcow2"))
    try:
        core.execute("block-commit", {"device": "virtio0", "top": "C.qcow2", "speed": 1 << 20})
        text = re.sub(r"\x1b\[[0-9;]*m", "", JobsToolbar(core, width=lambda: 140).text())
        assert re.search(r"virtio0 .*% .*/64\.0 MiB .* limit 1\.0 MiB/s\s+running", text), text
    finally:
        core.shutdown()


def test_console_completes_top_and_base_of_block_commit(chain):
    from commands.completion import CompletionContext, complete_line
    from commands.core import BlockCore
    core = BlockCore()
    core.add_drive("virtio0", os.path.join(chain, "D.qcow2"))
    try:
        context = CompletionContext(core)

        def words(line):
            return [candidate for candidate, _prefix, _shown in complete_line(line, context)]
        assert "C.qcow2" in words("block_commit virtio0 ")
        assert "A" in words("block_commit virtio0 C ")
        assert words("info mer") == ["merge-cost"]
    finally:
        core.shutdown()


def test_base_holds_a_writers_locks_only_while_the_commit_runs(bm, chain):
    """QEMU's lock bytes: while the commit writes into base, a read-only opener that
    does not share writing is refused; once the job ended base is a plain backing
    file again and the same opener gets in."""
    from tests.conftest import run as run_tool
    a = os.path.join(chain, "A.qcow2")

    def read_only_open():
        return run_tool("qemu-io", "-r", "-f", "qcow2", "-c", "read 0 512", a, check=False)
    assert read_only_open().returncode == 0
    bm.ok("block-commit", device="virtio0", top="C.qcow2", speed=64 * 1024)
    refused = read_only_open()
    assert refused.returncode != 0
    assert "lock" in refused.stderr and "Is another process using the image" in refused.stderr
    bm.hmp("block_job_cancel virtio0")
    bm.wait_event(ended("virtio0"))
    assert read_only_open().returncode == 0


def test_commit_bench_runs_and_prints_its_rows(tmp_path):
    """The smoke variant of bench/commit_bench.py: every blockmon row and the merge-cost
    line appear, with ratios computed from real timings."""
    import subprocess
    import sys
    from tests.conftest import ROOT
    require_qemu()
    out = subprocess.run([sys.executable, "-m", "bench.commit_bench", "--size", "64M", "--runs",
                          "1", "--no-qemu", "--work", str(tmp_path)], cwd=ROOT, check=True,
                         capture_output=True, text=True).stdout
    assert "intermediate commit C->A, blockmon durable / qemu-img commit" in out
    assert "active commit D->A, blockmon durable / qemu-img commit" in out
    assert "merge onto A (info merge-cost): stream writes" in out
    assert "QEMU" not in out.split("merge onto A")[0]      # --no-qemu: no QEMU rows
